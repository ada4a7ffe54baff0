#include "cli/state_commands.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include <fmt/format.h>

#include "base/path.h"
#include "base/size.h"
#include "cli/run_command.h"
#include "state/inspect.h"
#include "state/vm_state.h"
#include "vmprocess/console.h"
#include "vmprocess/control_client.h"
#include "vmprocess/migration_receiver.h"
#include "vmprocess/session.h"

namespace vmctl::cli {
namespace {

int fail(const Error& error) {
  std::fprintf(stderr, "vmctl: %s\n", error.message().c_str());
  return error.exit_code();
}

}  // namespace

StateCommands add_state_commands(CLI::App& app, StateOptions& o) {
  StateCommands c;
  c.snapshot = app.add_subcommand("snapshot", "Write a running VM's complete state to a file");
  c.snapshot
      ->add_option("args", o.args,
                   "NAME FILE for a VM of vmctld; FILE alone with --control (replaced "
                   "atomically)")
      ->required()
      ->expected(1, 2);
  c.snapshot->add_option("--control", o.control,
                         "A foreground VM's control socket (vmctl run --control) instead of a "
                         "VM of vmctld");
  c.snapshot->add_flag("--stop", o.stop, "Leave the VM paused afterwards (vmctl resume continues)");
  c.snapshot->add_flag(
      "--diff", o.diff,
      "Write only the pages dirtied since this VM's previous snapshot (its parent)");
  c.snapshot
      ->add_option("--compression", o.compression,
                   "zstd level for memory (default 0: raw; zstd costs more time than it saves when "
                   "the file goes to the page cache)")
      ->capture_default_str()
      ->check(CLI::Range(0, 19));
  c.snapshot->add_option("--memory-file", o.memory_file,
                         "Write guest RAM raw to this file (zero pages as holes) instead of into "
                         "the snapshot, so `vmctl restore --lazy` can map it");
  c.snapshot->add_flag("--json", o.json, "Print the result as JSON");
  c.snapshot->footer(
      "The VM pauses while its state is written and resumes after (unless --stop). The file is\n"
      "written under a temporary name, fsynced and renamed: a failure never leaves half a\n"
      "snapshot in place or damages an older one. After a snapshot the VM tracks the pages it\n"
      "dirties, so the next one can be a --diff naming this one as its parent.\n\n"
      "Example:\n"
      "  vmctl snapshot web1 /srv/snap/web1.snap          # a VM of vmctld\n"
      "  vmctl run --control /run/vm1.sock &              # a foreground VM\n"
      "  vmctl snapshot --control /run/vm1.sock base.snap\n"
      "  vmctl snapshot --control /run/vm1.sock --diff d1.snap\n"
      "  vmctl restore base.snap d1.snap\n"
      "  vmctl snapshot --control /run/vm1.sock --memory-file vm1.mem vm1.snap\n"
      "  vmctl restore --lazy vm1.snap");

  c.restore = app.add_subcommand(
      "restore", "Start a VM from a snapshot: in this process, or on vmctld with --name");
  c.restore->add_option("--name", o.name,
                        "Restore as a new VM of vmctld with this name (instead of in this "
                        "process)");
  c.restore->add_flag("--json", o.json, "With --name: print the VM's info as JSON");
  c.restore->add_option("files", o.chain, "A full snapshot, then its diff snapshots in order")
      ->required()
      ->check(CLI::ExistingFile);
  c.restore->add_flag("--paused", o.paused,
                      "Restore but do not run the vCPUs until `vmctl resume --control`");
  c.restore->add_option("--control", o.control, "Listen on this unix socket (as vmctl run)");
  c.restore->add_flag("--stats", o.stats, "Print per-vCPU KVM exit statistics at the end");
  add_console_log_options(c.restore, o.console_log, o.console_log_max);
  add_guest_memory_limit(c.restore, o.max_guest_memory);
  c.restore->add_flag("--lazy", o.lazy,
                      "Map the snapshot's memory file (snapshot --memory-file) instead of reading "
                      "it: restore time does not grow with RAM, pages load as the guest touches "
                      "them. The memory file must stay in place while the VM runs.");
  c.restore->add_flag("--strict-tsc", o.strict_tsc,
                      "Refuse to restore when this host cannot run the guest's TSC at its saved "
                      "rate (default: warn and use the host's rate)");
  c.restore->add_flag("--quiet,-q", o.quiet, "Print nothing but the guest's console");
  add_dirty_tracking_options(c.restore, o.dirty_tracking, o.dirty_ring_entries);
  c.restore
      ->add_option("--irqchip", o.irqchip,
                   "The restored VM's interrupt controllers, as for run: kernel or user. A "
                   "snapshot restores into either, whichever it was taken with (a guest that "
                   "uses the IOAPIC or the PIT needs kernel)")
      ->check(CLI::IsMember({"kernel", "user"}))
      ->capture_default_str();
  add_sandbox_options(c.restore, o.sandbox);
  c.restore->footer(
      "The guest continues where the snapshot was taken, console on this terminal.\n\n"
      "Example:\n"
      "  vmctl restore vm1.snap --control /run/vm1.sock");

  c.inspect = app.add_subcommand("inspect", "Show what a snapshot file holds");
  c.inspect->add_option("file", o.file, "Snapshot file")->required()->check(CLI::ExistingFile);
  c.inspect->add_flag("--json", o.json, "Print everything as JSON");
  c.inspect->footer(
      "Prints the header, the records with their sizes, each vCPU's registers and its local APIC\n"
      "(ISR/IRR/TMR vectors, TPR, derived PPR, LVTs, mode).");

  c.pause = app.add_subcommand("pause", "Pause a VM's vCPUs");
  c.resume = app.add_subcommand("resume",
                                "Resume a VM paused by pause, snapshot --stop or restore "
                                "--paused");
  for (CLI::App* verb : {c.pause, c.resume}) {
    verb->add_option("name", o.name, "A VM of vmctld");
    verb->add_option("--control", o.control, "A foreground VM's control socket instead");
    verb->add_flag("--json", o.json, "Print the VM's info as JSON");
  }
  c.receive = app.add_subcommand(
      "receive", "Internal: restore a VM from a migration stream (vmctld runs this)");
  c.receive->group("");  // hidden from --help: operators use `vmctl migrate`
  c.receive->add_option("--stream-fd", o.stream_fd, "Descriptor carrying the record stream")
      ->required();
  c.receive->add_option("--control", o.control, "Listen on this unix socket")->required();
  c.receive->add_option("--migration-id", o.migration_id, "The migration this VM arrives by")
      ->required();
  c.receive->add_flag("--paused", o.paused, "Stay paused after the switchover");
  c.receive->add_option("--memory", o.memory_bytes, "The offered guest's RAM in bytes")->required();
  c.receive->add_option("--cpus", o.vcpus, "The offered guest's vCPUs")->required();
  c.receive->add_option("--data-connections", o.data_connections,
                        "Data connections the source opens (migrate/data_plane.md)");
  c.receive->add_option("--data-socket", o.data_socket,
                        "Take the data connections on this unix socket");
  c.receive->add_option("--data-listen", o.data_listen,
                        "Take the data connections on this address (TCP, mutual TLS)");
  c.receive->add_flag("--data-plaintext", o.data_plaintext,
                      "With --data-listen: no TLS; the daemons agreed that their network is "
                      "trusted (connections still prove the migration's secret)");
  c.receive->add_option("--tls-ca", o.tls_ca, "PEM CA of the data connections' certificates");
  c.receive->add_option("--tls-cert", o.tls_cert, "PEM certificate of this side");
  c.receive->add_option("--tls-key", o.tls_key, "PEM private key of this side");
  add_console_log_options(c.receive, o.console_log, o.console_log_max);
  add_guest_memory_limit(c.receive, o.max_guest_memory);
  add_dirty_tracking_options(c.receive, o.dirty_tracking, o.dirty_ring_entries);
  c.receive->add_option("--irqchip", o.irqchip, "The arriving VM's interrupt controllers (run)")
      ->check(CLI::IsMember({"kernel", "user"}))
      ->capture_default_str();
  add_sandbox_options(c.receive, o.sandbox);
  return c;
}

int receive_command(const StateOptions& o) {
  if (int rc = enter_sandbox(o.sandbox, {o.tls_ca, o.tls_cert, o.tls_key}); rc != 0) return rc;
  vmprocess::ReceiveOptions options;
  options.stream_fd = o.stream_fd;
  options.migration_id = o.migration_id;
  options.memory_bytes = o.memory_bytes;
  options.vcpus = o.vcpus;
  options.stay_paused = o.paused;
  options.data_connections = o.data_connections;
  options.data_socket = o.data_socket;
  options.data_listen = o.data_listen;
  options.data_plaintext = o.data_plaintext;
  options.tls = migrate::TlsConfig{o.tls_ca, o.tls_cert, o.tls_key};
  options.control = o.control;
  options.console_log = o.console_log;
  options.console_log_max = o.console_log_max;
  options.dirty_tracking = o.dirty_tracking;
  options.dirty_ring_entries = o.dirty_ring_entries;
  options.irqchip = o.irqchip;
  Result<uint64_t> limit = guest_memory_limit(o.max_guest_memory);
  if (!limit.ok()) return fail(limit.error());
  options.max_guest_memory = *limit;
  return vmprocess::receive_migration(options);
}

int snapshot_command(StateOptions& o) {
  if (o.args.size() != 1) {
    std::fprintf(stderr,
                 "vmctl: snapshot --control SOCKET takes one FILE (NAME FILE is for a VM of "
                 "vmctld)\n");
    return 2;
  }
  o.file = o.args[0];
  nlohmann::json request = {{"op", "snapshot"},
                            {"path", o.file},
                            {"stop", o.stop},
                            {"diff", o.diff},
                            {"compression", o.compression}};
  // The VM process writes the files: give it absolute paths.
  request["path"] = absolute_path(o.file);
  if (!o.memory_file.empty()) request["memory_file"] = absolute_path(o.memory_file);
  Result<nlohmann::json> answer = vmprocess::control_request(o.control, request);
  if (!answer.ok()) return fail(answer.error());
  const nlohmann::json& a = *answer;
  if (o.json) {
    std::printf("%s\n", a.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("%s %s: %s in %.2f s (%llu records, %llu pages, %llu zero pages elided)%s\n",
                o.diff ? "diff snapshot" : "snapshot", a["path"].get<std::string>().c_str(),
                format_size(a["bytes"].get<uint64_t>()).c_str(), a["seconds"].get<double>(),
                static_cast<unsigned long long>(a["records"].get<uint64_t>()),
                static_cast<unsigned long long>(a["pages"].get<uint64_t>()),
                static_cast<unsigned long long>(a["zero_pages"].get<uint64_t>()),
                o.stop ? "; the VM stays paused" : "");
  }
  return 0;
}

int restore_command(const StateOptions& o) {
  if (int rc = enter_sandbox(o.sandbox, o.chain); rc != 0) return rc;
  vmprocess::block_stop_signals();
  Result<std::function<void(const uint8_t*, size_t)>> console =
      vmprocess::console_output(o.console_log, o.console_log_max);
  if (!console.ok()) return fail(console.error());
  state::RestoreOptions options;
  options.console_output = *console;
  options.lazy = o.lazy;
  options.strict_tsc = o.strict_tsc;
  Result<vmm::DirtyTracking> tracking = vmm::parse_dirty_tracking(o.dirty_tracking);
  if (!tracking.ok()) return fail(tracking.error());
  options.dirty_tracking = *tracking;
  options.dirty_ring_entries = o.dirty_ring_entries;
  Result<vmm::IrqchipMode> irqchip = vmm::parse_irqchip_mode(o.irqchip);
  if (!irqchip.ok()) return fail(irqchip.error());
  options.irqchip = *irqchip;
  Result<uint64_t> limit = guest_memory_limit(o.max_guest_memory);
  if (!limit.ok()) return fail(limit.error());
  options.budget.max_guest_memory = *limit;
  state::StreamInfo info;
  auto start = std::chrono::steady_clock::now();
  Result<std::unique_ptr<vmm::Vm>> vm = state::restore_snapshot(o.chain, options, &info);
  if (!vm.ok()) return fail(vm.error());
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!o.quiet) {
    std::string files;
    for (const std::string& f : o.chain) files += (files.empty() ? "" : " + ") + f;
    std::fprintf(stderr, "vmctl: restored %s (%s, %u vCPU%s) in %.2f s%s; Ctrl-C stops it\n",
                 files.c_str(), format_size(info.memory_size).c_str(), info.vcpus,
                 info.vcpus == 1 ? "" : "s", seconds,
                 o.paused ? ", paused until `vmctl resume`" : "");
  }
  return vmprocess::run_session(**vm,
                                vmprocess::SessionOptions{o.stats, o.quiet, o.paused, o.control});
}

int inspect_command(const StateOptions& o) {
  Result<std::unique_ptr<state::FileSource>> source = state::FileSource::open(o.file);
  if (!source.ok()) return fail(source.error());
  state::RecordReader reader(**source, fmt::format("snapshot {}", o.file));
  Result<nlohmann::json> inspection = state::inspect_stream(reader);
  if (!inspection.ok()) return fail(inspection.error());
  if (o.json) {
    std::printf("%s\n", inspection->dump(2).c_str());
  } else {
    std::printf("%s", state::format_inspection(*inspection).c_str());
  }
  return 0;
}

int pause_resume_command(const StateOptions& o, bool pause) {
  Result<nlohmann::json> answer =
      vmprocess::control_request(o.control, {{"op", pause ? "pause" : "resume"}});
  if (!answer.ok()) return fail(answer.error());
  return 0;
}

}  // namespace vmctl::cli
