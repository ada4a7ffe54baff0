// `vmctl run`: boot a guest in the foreground.
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

namespace vmctl::cli {

struct RunOptions {
  std::string kernel;
  std::string initrd;
  std::string cmdline;
  std::string memory = "256M";
  unsigned cpus = 1;
  bool stats = false;
  bool quiet = false;
};

// Adds the `run` subcommand to `app`; `options` must outlive parsing.
CLI::App* add_run_command(CLI::App& app, RunOptions& options);
// Runs the VM to its end; returns the process exit code.
int run_vm(const RunOptions& options);

}  // namespace vmctl::cli
