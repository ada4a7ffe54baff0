// vmctl: the command-line front end. `run` boots a VM in this process; later verbs talk to vmctld.
#include <cstdio>

#include <CLI/CLI.hpp>

#include "cli/run_command.h"
#include "cli/state_commands.h"

int main(int argc, char** argv) {
  CLI::App app{
      "vmctl - a KVM virtual machine monitor built for snapshot, restore and live migration"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("vmctl ") + VMCTL_VERSION);
  app.footer("Run 'vmctl COMMAND --help' for a command's options and examples.");

  vmctl::cli::RunOptions run_options;
  CLI::App* run = vmctl::cli::add_run_command(app, run_options);
  vmctl::cli::StateOptions state_options;
  vmctl::cli::StateCommands state = vmctl::cli::add_state_commands(app, state_options);

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
  if (run->parsed()) return vmctl::cli::run_vm(run_options);
  if (state.snapshot->parsed()) return vmctl::cli::snapshot_command(state_options);
  if (state.restore->parsed()) return vmctl::cli::restore_command(state_options);
  if (state.inspect->parsed()) return vmctl::cli::inspect_command(state_options);
  if (state.pause->parsed()) return vmctl::cli::pause_resume_command(state_options, true);
  if (state.resume->parsed()) return vmctl::cli::pause_resume_command(state_options, false);
  return 2;
}
