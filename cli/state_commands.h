// The state verbs: `vmctl snapshot`, `vmctl restore`, `vmctl inspect`, and `pause`/`resume` of a
// foreground VM through its control socket.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/sandbox_options.h"

#include "vmprocess/console.h"

namespace vmctl::cli {

struct StateOptions {
  std::vector<std::string> args;  // snapshot: [NAME] FILE
  std::string name;               // a VM of vmctld (pause, resume, restore --name)
  std::string file;
  std::vector<std::string> chain;  // restore: a full snapshot and its diffs
  bool diff = false;
  std::string control;
  bool stop = false;
  bool paused = false;
  bool json = false;
  bool stats = false;
  bool quiet = false;
  int compression = 0;
  std::string memory_file;  // snapshot: guest RAM to this raw file
  bool lazy = false;        // restore: map the memory file
  bool strict_tsc = false;
  std::string console_log;
  std::string console_log_max = vmprocess::kDefaultConsoleLogMax;
  std::string max_guest_memory;   // restore, receive
  int stream_fd = -1;             // receive: the migration stream's descriptor
  std::string migration_id;       // receive
  uint64_t memory_bytes = 0;      // receive: the offered machine
  unsigned data_connections = 1;  // receive: how many the source opens
  std::string data_socket;        // receive: listen on this unix socket ...
  std::string data_listen;        // ... or on this host's TCP address with TLS
  bool data_plaintext = false;    // ... or without it (a trusted network)
  std::string tls_ca, tls_cert, tls_key;
  unsigned vcpus = 0;
  std::string dirty_tracking = "auto";  // restore, receive: the new VM's (vmm/dirty_pages.h)
  uint32_t dirty_ring_entries = 0;
  std::string irqchip = "kernel";  // restore: vmm::IrqchipMode
  SandboxFlags sandbox;            // restore, receive
};

struct StateCommands {
  CLI::App* snapshot;
  CLI::App* restore;
  CLI::App* inspect;
  CLI::App* pause;
  CLI::App* resume;
  CLI::App* receive;
};

StateCommands add_state_commands(CLI::App& app, StateOptions& options);
int snapshot_command(StateOptions& options);
int restore_command(const StateOptions& options);
int inspect_command(const StateOptions& options);
int pause_resume_command(const StateOptions& options, bool pause);
int receive_command(const StateOptions& options);

}  // namespace vmctl::cli
