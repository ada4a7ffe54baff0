// vmctl: the command-line front end. `run` boots a VM in this process; later verbs talk to vmctld.
#include <cstdio>
#include <functional>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "base/alloc.h"
#include "cli/daemon_commands.h"
#include "cli/run_command.h"
#include "cli/state_commands.h"

int main(int argc, char** argv) {
  vmctl::keep_streaming_buffers();
  // Logs go to stderr: stdout is the guest's console and must carry nothing else.
  spdlog::set_default_logger(spdlog::stderr_color_mt("vmctl"));
  spdlog::set_pattern("vmctl: %l: %v");
  CLI::App app{
      "vmctl - a KVM virtual machine monitor built for snapshot, restore and live migration"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("vmctl ") + VMCTL_VERSION);
  app.footer("Run 'vmctl COMMAND --help' for a command's options and examples.");

  vmctl::cli::RunOptions run_options;
  CLI::App* run = vmctl::cli::add_run_command(app, run_options);
  vmctl::cli::StateOptions state_options;
  vmctl::cli::StateCommands state = vmctl::cli::add_state_commands(app, state_options);
  vmctl::cli::DaemonOptions daemon_options;
  vmctl::cli::DaemonCommands daemon = vmctl::cli::add_daemon_commands(app, daemon_options);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;  // bad usage is the operator's to fix
  }
  using vmctl::cli::StateOptions;
  // snapshot, restore, pause and resume address a VM of vmctld by name, or a foreground VM.
  auto to_daemon = [&](const StateOptions& s) {
    vmctl::cli::DaemonOptions& d = daemon_options;
    d.name = s.name;
    d.json = s.json;
    d.stop = s.stop;
    d.diff = s.diff;
    d.compression = s.compression;
    d.memory_file = s.memory_file;
    d.files = s.chain;
    d.paused = s.paused;
    d.lazy = s.lazy;
    d.dirty_tracking = s.dirty_tracking;
    d.irqchip = s.irqchip;
    return std::ref(d);
  };
  if (run->parsed()) return vmctl::cli::run_vm(run_options);
  if (state.snapshot->parsed()) {
    if (!state_options.control.empty()) return vmctl::cli::snapshot_command(state_options);
    if (state_options.args.size() != 2) {
      std::fprintf(stderr, "vmctl: snapshot takes NAME FILE (or --control SOCKET FILE)\n");
      return 2;
    }
    vmctl::cli::DaemonOptions& d = to_daemon(state_options);
    d.name = state_options.args[0];
    d.file = state_options.args[1];
    return vmctl::cli::daemon_snapshot(d);
  }
  if (state.restore->parsed()) {
    if (state_options.name.empty()) return vmctl::cli::restore_command(state_options);
    return vmctl::cli::daemon_restore(to_daemon(state_options));
  }
  if (state.inspect->parsed()) return vmctl::cli::inspect_command(state_options);
  for (bool pause : {true, false}) {
    if (!(pause ? state.pause : state.resume)->parsed()) continue;
    if (!state_options.control.empty()) {
      return vmctl::cli::pause_resume_command(state_options, pause);
    }
    if (state_options.name.empty()) {
      std::fprintf(stderr, "vmctl: %s takes a VM name (or --control SOCKET)\n",
                   pause ? "pause" : "resume");
      return 2;
    }
    return vmctl::cli::daemon_pause_resume(to_daemon(state_options), pause);
  }
  bool daemon_verb = false;
  for (CLI::App* verb :
       {daemon.create, daemon.start, daemon.stop, daemon.remove, daemon.list, daemon.info,
        daemon.console, daemon.migrate, daemon.cancel, daemon.host_info, daemon.host_check}) {
    daemon_verb |= verb->parsed();
  }
  if (daemon_verb) return vmctl::cli::run_daemon_command(daemon, daemon_options);
  if (state.receive->parsed()) return vmctl::cli::receive_command(state_options);
  return 2;
}
