// `vmctl run`: boot a guest in the foreground.
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "cli/sandbox_options.h"
#include "vmm/vm.h"
#include "vmprocess/console.h"

namespace vmctl::cli {

struct RunOptions {
  std::string kernel;
  std::string initrd;
  std::string cmdline;
  std::string memory = "256M";
  unsigned cpus = 1;
  bool stats = false;
  bool quiet = false;
  std::string control;      // unix socket for snapshot/pause/resume requests
  std::string console_log;  // guest console to this file instead of stdout
  std::string console_log_max = vmprocess::kDefaultConsoleLogMax;
  std::string max_guest_memory;
  std::string dirty_tracking = "auto";
  uint32_t dirty_ring_entries = 0;
  std::string irqchip = "kernel";  // vmm::IrqchipMode
  SandboxFlags sandbox;
};

// --dirty-tracking and --dirty-ring-entries, shared by run, restore and receive.
void add_dirty_tracking_options(CLI::App* command, std::string& mode, uint32_t& ring_entries);
// --console-log and --console-log-max, shared by run, restore and receive.
void add_console_log_options(CLI::App* command, std::string& path, std::string& max_bytes);
// --max-guest-memory SIZE (run, restore, receive): the largest guest this process may build
// (vmctld passes its own limit).
void add_guest_memory_limit(CLI::App* command, std::string& max);
// The limit in bytes (0: none but the host's RAM), or a one-line error.
Result<uint64_t> guest_memory_limit(const std::string& max);

// Adds the `run` subcommand to `app`; `options` must outlive parsing.
CLI::App* add_run_command(CLI::App& app, RunOptions& options);
// Runs the VM to its end; returns the process exit code.
int run_vm(const RunOptions& options);

}  // namespace vmctl::cli
