// The verbs that talk to vmctld over gRPC: create, start, stop, delete, pause, resume, list,
// info, console, snapshot, restore, migrate, cancel. `--host` picks the daemon (default
// $VMCTL_HOST or unix:/run/vmctld.sock); TCP hosts need the --tls-* files.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "migrate/channel.h"
#include "proto/vmctl.pb.h"

namespace vmctl::cli {

struct DaemonOptions {
  std::string host;
  migrate::TlsConfig tls;
  bool json = false;
  std::string name;
  // create
  std::string kernel, initrd, cmdline, memory = "256M";
  unsigned cpus = 1;
  bool start = false;
  // create, restore: the VM's; migrate: the VM's on the destination (empty: its own)
  std::string dirty_tracking;
  uint32_t dirty_ring_entries = 0;
  // create, restore: the VM's; migrate: the VM's on the destination (empty: its own / kernel)
  std::string irqchip;
  // console
  std::string send;
  bool follow = true;
  // snapshot / restore (the rest comes from StateOptions)
  std::string file, memory_file;
  std::vector<std::string> files;
  bool stop = false, diff = false, paused = false, lazy = false;
  int compression = 0;
  // migrate
  std::string destination, destination_name;
  unsigned downtime_ms = 30, max_rounds = 30, max_seconds = 120;
  unsigned streams = 0;  // 0: the source daemon picks (half its cores, 1 to 4)
  int migrate_compression = 0;
  bool auto_converge = false;
  bool recover = false;
  unsigned stall_timeout_seconds = 15;
  // host-info / host-check
  bool from_daemon = false;
  std::vector<std::string> reports;
  std::string guest_snapshot;
};

struct DaemonCommands {
  CLI::App* create;
  CLI::App* start;
  CLI::App* stop;
  CLI::App* remove;
  CLI::App* list;
  CLI::App* info;
  CLI::App* console;
  CLI::App* migrate;
  CLI::App* cancel;
  CLI::App* host_info;
  CLI::App* host_check;
};

// Adds --host and --tls-* to `app` and the daemon-only verbs.
DaemonCommands add_daemon_commands(CLI::App& app, DaemonOptions& options);
// Runs the parsed daemon verb; returns the exit code.
int run_daemon_command(const DaemonCommands& commands, DaemonOptions& options);

// The verbs shared with foreground VMs (snapshot, restore, pause, resume) when they address a VM
// of the daemon by name.
int daemon_snapshot(DaemonOptions& options);
int daemon_restore(DaemonOptions& options);
int daemon_pause_resume(DaemonOptions& options, bool pause);

}  // namespace vmctl::cli
