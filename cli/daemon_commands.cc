#include "cli/daemon_commands.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>

#include <nlohmann/json.hpp>

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>

#include "base/path.h"
#include "base/size.h"
#include "proto/names.h"
#include "proto/vmctl.grpc.pb.h"
#include "state/host_report.h"

namespace vmctl::cli {
namespace {

namespace v1 = ::vmctl::v1;

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

std::string to_json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, options);
  return out;
}

class Client {
 public:
  static Result<Client> connect(const DaemonOptions& o) {
    std::string host = o.host.empty() ? env_or("VMCTL_HOST", "unix:/run/vmctld.sock") : o.host;
    std::shared_ptr<grpc::Channel> channel = TRY(migrate::make_channel(host, o.tls));
    return Client(host, channel);
  }
  v1::Vmctl::Stub& stub() { return *stub_; }
  const std::string& host() const { return host_; }

  // One line for a failed call: what the daemon said, or that it cannot be reached.
  int fail(const grpc::Status& status) const {
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      std::fprintf(stderr,
                   "vmctl: cannot reach vmctld at %s: %s (is vmctld running? --host or "
                   "VMCTL_HOST select another)\n",
                   host_.c_str(), status.error_message().c_str());
      return 1;
    }
    std::fprintf(stderr, "vmctl: %s\n", status.error_message().c_str());
    switch (status.error_code()) {
      case grpc::StatusCode::INVALID_ARGUMENT:
      case grpc::StatusCode::NOT_FOUND:
      case grpc::StatusCode::FAILED_PRECONDITION:
      case grpc::StatusCode::CANCELLED:
      case grpc::StatusCode::PERMISSION_DENIED:
        return 2;
      default:
        return 1;
    }
  }

 private:
  Client(std::string host, std::shared_ptr<grpc::Channel> channel)
      : host_(std::move(host)), stub_(v1::Vmctl::NewStub(channel)) {}
  std::string host_;
  std::unique_ptr<v1::Vmctl::Stub> stub_;
};

int connect_failed(const Error& e) {
  std::fprintf(stderr, "vmctl: %s\n", e.message().c_str());
  return e.exit_code();
}

void print_info(const v1::VmInfo& i, bool json) {
  if (json) {
    std::printf("%s\n", to_json(i).c_str());
    return;
  }
  std::printf("%s: %s", i.name().c_str(), vm_state_name(i.state()).c_str());
  if (i.pid()) std::printf(" (process %d)", i.pid());
  if (!i.migrated_to().empty()) std::printf(" to %s", i.migrated_to().c_str());
  if (i.state() == v1::VM_STATE_STOPPED && i.exit_code() != 0) {
    std::printf(", exit code %d", i.exit_code());
  }
  std::printf("\n");
  if (!i.error().empty()) std::printf("  error    %s\n", i.error().c_str());
  const v1::VmConfig& c = i.config();
  std::printf("  machine  %u vCPU%s, %s\n", c.cpus(), c.cpus() == 1 ? "" : "s",
              format_size(c.memory_bytes()).c_str());
  std::printf("  kernel   %s\n", c.kernel().empty() ? "(built-in demo guest)" : c.kernel().c_str());
  if (!c.cmdline().empty()) std::printf("  cmdline  %s\n", c.cmdline().c_str());
  if (!c.dirty_tracking().empty()) {
    std::printf("  dirty    %s tracking%s\n", c.dirty_tracking().c_str(),
                c.dirty_ring_entries()
                    ? fmt::format(", {} ring entries per vCPU", c.dirty_ring_entries()).c_str()
                    : "");
  }
  if (!c.irqchip().empty()) std::printf("  irqchip  %s\n", c.irqchip().c_str());
  std::printf("  console  %s\n", i.console_log().c_str());
  for (const v1::VcpuStats& s : i.vcpu_stats()) {
    std::string line = fmt::format("  vcpu{:<4}", s.vcpu());
    for (const char* k : {"exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits"}) {
      auto it = s.counters().find(k);
      if (it != s.counters().end()) line += fmt::format(" {}={}", k, it->second);
    }
    std::printf("%s\n", line.c_str());
  }
}

int simple_call(const DaemonOptions& o,
                grpc::Status (v1::Vmctl::Stub::*call)(grpc::ClientContext*, const v1::VmRef&,
                                                      v1::VmInfo*)) {
  Result<Client> client = Client::connect(o);
  if (!client.ok()) return connect_failed(client.error());
  grpc::ClientContext context;
  v1::VmRef ref;
  ref.set_name(o.name);
  v1::VmInfo info;
  grpc::Status status = (client->stub().*call)(&context, ref, &info);
  if (!status.ok()) return client->fail(status);
  print_info(info, o.json);
  return 0;
}

// A one-line progress bar that redraws itself on a terminal.
void draw_progress(const v1::MigrationProgress& p, uint64_t total_hint) {
  double done = total_hint ? static_cast<double>(p.bytes_sent()) / total_hint : 0;
  if (done > 1) done = 1;
  int width = 24, filled = static_cast<int>(done * width);
  std::string bar = std::string(filled, '#') + std::string(width - filled, '.');
  std::fprintf(
      stderr,
      "\r%-13s round %-3u [%s] %8s sent, %8s dirty, %7.0f MiB/s, dirty %6.0f MiB/s, "
      "downtime ~%5.0f ms%s",
      p.phase().c_str(), p.round(), bar.c_str(), format_size(p.bytes_sent()).c_str(),
      format_size(p.remaining_bytes()).c_str(), p.bandwidth_mib_s(), p.dirty_rate_mib_s(),
      p.expected_downtime_ms(),
      p.throttle_percent() ? fmt::format(", throttle {}%", p.throttle_percent()).c_str() : "");
}

int recover_command(DaemonOptions& o) {
  Result<Client> client = Client::connect(o);
  if (!client.ok()) return connect_failed(client.error());
  grpc::ClientContext context;
  v1::VmRef ref;
  ref.set_name(o.name);
  v1::VmInfo info;
  grpc::Status status = client->stub().RecoverMigration(&context, ref, &info);
  if (!status.ok()) return client->fail(status);
  if (o.json) {
    print_info(info, true);
  } else {
    std::printf("%s: %s%s\n", o.name.c_str(), vm_state_name(info.state()).c_str(),
                info.state() == v1::VM_STATE_MIGRATED
                    ? (" (it runs on " + info.migrated_to() + ")").c_str()
                    : " (it runs here)");
  }
  return 0;
}

int migrate_command(DaemonOptions& o) {
  if (o.recover) return recover_command(o);
  if (o.destination.empty()) {
    std::fprintf(stderr, "vmctl: migrate needs --to DESTINATION (or --recover)\n");
    return 2;
  }
  Result<Client> client = Client::connect(o);
  if (!client.ok()) return connect_failed(client.error());
  uint64_t memory = 0;
  {
    grpc::ClientContext context;
    v1::VmRef ref;
    ref.set_name(o.name);
    v1::VmInfo info;
    if (client->stub().GetVm(&context, ref, &info).ok()) memory = info.config().memory_bytes();
  }
  grpc::ClientContext context;
  v1::MigrateRequest request;
  request.set_name(o.name);
  request.set_destination(o.destination);
  request.set_destination_name(o.destination_name);
  request.set_downtime_ms(o.downtime_ms);
  request.set_max_rounds(o.max_rounds);
  request.set_max_seconds(o.max_seconds);
  request.set_streams(o.streams);
  request.set_compression(o.migrate_compression);
  request.set_policy(o.auto_converge ? v1::CONVERGENCE_AUTO_CONVERGE : v1::CONVERGENCE_GIVE_UP);
  request.set_dirty_tracking(o.dirty_tracking);
  request.set_irqchip(o.irqchip);
  request.set_stall_timeout_seconds(o.stall_timeout_seconds);
  std::unique_ptr<grpc::ClientReader<v1::MigrationProgress>> reader =
      client->stub().Migrate(&context, request);
  bool tty = isatty(STDERR_FILENO) && !o.json;
  v1::MigrationProgress p, last;
  while (reader->Read(&p)) {
    last = p;
    if (o.json) {
      std::printf("%s\n", to_json(p).c_str());
      std::fflush(stdout);
    } else if (tty) {
      draw_progress(p, memory);
    }
  }
  grpc::Status status = reader->Finish();
  if (tty) std::fprintf(stderr, "\n");
  if (!status.ok()) return client->fail(status);
  if (!o.json) {
    const v1::DowntimeBreakdown& d = last.downtime();
    std::printf(
        "migrated %s to %s in %.2f s: %u rounds, %s sent (data over %s); downtime %.1f ms (pause "
        "to last page %.1f, device state %.1f, destination restore %.1f, switchover %.1f)\n",
        o.name.c_str(), o.destination.c_str(), last.elapsed_seconds(), last.round() + 1,
        format_size(last.bytes_sent()).c_str(),
        last.data_transport() == "tls"         ? "mutual TLS"
        : last.data_transport() == "plaintext" ? "plaintext, trusted network"
        : last.data_transport() == "unix"      ? "a unix socket"
                                               : "?",
        d.total_ms(), d.pause_to_last_page_ms(), d.last_page_to_state_ms(), d.state_to_ready_ms(),
        d.switchover_ms());
  }
  return 0;
}

int console_command(DaemonOptions& o) {
  Result<Client> client = Client::connect(o);
  if (!client.ok()) return connect_failed(client.error());
  if (!o.send.empty()) {
    grpc::ClientContext context;
    v1::ConsoleInput input;
    input.set_name(o.name);
    input.set_data(o.send);
    v1::VmInfo info;
    grpc::Status status = client->stub().SendConsole(&context, input, &info);
    if (!status.ok()) return client->fail(status);
    if (!o.follow) return 0;
  }
  grpc::ClientContext context;
  v1::WatchVmRequest request;
  request.set_name(o.name);
  request.set_console(true);
  std::unique_ptr<grpc::ClientReader<v1::VmEvent>> reader =
      client->stub().WatchVm(&context, request);
  v1::VmEvent event;
  while (reader->Read(&event)) {
    if (event.has_console_line()) {
      if (o.json) {
        std::printf("%s\n", to_json(event).c_str());
      } else {
        std::printf("%s\n", event.console_line().c_str());
      }
      std::fflush(stdout);
    } else if (event.has_state()) {
      if (o.json) std::printf("%s\n", to_json(event).c_str());
      v1::VmState s = event.state().state();
      if (s != v1::VM_STATE_RUNNING && s != v1::VM_STATE_PAUSED && s != v1::VM_STATE_MIGRATING &&
          s != v1::VM_STATE_CREATED) {
        if (!o.json) {
          std::fprintf(stderr, "vmctl: %s is %s\n", o.name.c_str(), vm_state_name(s).c_str());
        }
        context.TryCancel();
      }
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) {
    return client->fail(status);
  }
  return 0;
}

int host_info_command(DaemonOptions& o) {
  nlohmann::json report;
  if (o.from_daemon) {
    Result<Client> client = Client::connect(o);
    if (!client.ok()) return connect_failed(client.error());
    grpc::ClientContext context;
    v1::HostInfo info;
    grpc::Status status = client->stub().GetHostInfo(&context, v1::HostInfoRequest(), &info);
    if (!status.ok()) return client->fail(status);
    report = nlohmann::json::parse(info.report_json(), nullptr, false);
  } else {
    Result<nlohmann::json> local = state::host_report();
    if (!local.ok()) return connect_failed(local.error());
    report = *local;
  }
  if (o.json) {
    std::printf("%s\n",
                report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("%s", state::format_host_report(report).c_str());
  }
  return 0;
}

int host_check_command(DaemonOptions& o) {
  nlohmann::json hosts[2];
  for (int i = 0; i < 2; ++i) {
    std::ifstream in(o.reports[i]);
    hosts[i] = nlohmann::json::parse(in, nullptr, false);
    if (!in || hosts[i].is_discarded()) {
      std::fprintf(stderr, "vmctl: %s is not a report from `vmctl host-info --json`\n",
                   o.reports[i].c_str());
      return 2;
    }
    Status valid = state::validate_host_report(hosts[i], "report " + o.reports[i]);
    if (!valid.ok()) return connect_failed(valid.error());
  }
  std::optional<std::vector<std::string>> guest;
  if (!o.guest_snapshot.empty()) {
    Result<std::vector<std::string>> features = state::snapshot_cpu_features(o.guest_snapshot);
    if (!features.ok()) return connect_failed(features.error());
    guest = *features;
  }
  state::MoveVerdict verdict = state::check_move(hosts[0], hosts[1], guest ? &*guest : nullptr);
  if (o.json) {
    std::printf("%s\n", nlohmann::json{{"can_move", verdict.can_move}, {"reasons", verdict.reasons}}
                            .dump()
                            .c_str());
  } else {
    std::printf("%s -> %s: %s\n", hosts[0].value("hostname", "A").c_str(),
                hosts[1].value("hostname", "B").c_str(),
                verdict.can_move ? "the guest can move" : "the guest cannot move");
    for (const std::string& r : verdict.reasons) std::printf("  %s\n", r.c_str());
  }
  return verdict.can_move ? 0 : 1;
}

}  // namespace

DaemonCommands add_daemon_commands(CLI::App& app, DaemonOptions& o) {
  app.add_option("--host", o.host,
                 "The vmctld to talk to: unix:/path or HOST:PORT (mutual TLS); default "
                 "$VMCTL_HOST or unix:/run/vmctld.sock");
  app.add_option("--tls-ca", o.tls.ca, "PEM CA for a TCP host")->envname("VMCTL_TLS_CA");
  app.add_option("--tls-cert", o.tls.cert, "PEM client certificate for a TCP host")
      ->envname("VMCTL_TLS_CERT");
  app.add_option("--tls-key", o.tls.key, "PEM client key for a TCP host")->envname("VMCTL_TLS_KEY");

  DaemonCommands c;
  c.create = app.add_subcommand("create", "Define a VM on the daemon (and --start it)");
  c.create->add_option("name", o.name, "VM name")->required();
  c.create->add_option("--kernel,-k", o.kernel,
                       "Kernel on the daemon's host (default: built-in demo guest)");
  c.create->add_option("--initrd,-i", o.initrd, "Initial ramdisk (Linux)");
  c.create->add_option("--cmdline,-c", o.cmdline, "Kernel command line");
  c.create->add_option("--memory,-m", o.memory, "Guest RAM, e.g. 512M")->capture_default_str();
  c.create->add_option("--cpus", o.cpus, "Number of vCPUs")->capture_default_str();
  c.create->add_flag("--start", o.start, "Start it right away");
  c.create
      ->add_option("--dirty-tracking", o.dirty_tracking,
                   "Where dirty pages come from (diff snapshots, migration): ring (the KVM dirty "
                   "ring), bitmap (KVM_GET_DIRTY_LOG), auto (default: the ring where the host has "
                   "it)")
      ->check(CLI::IsMember({"auto", "bitmap", "ring"}));
  c.create
      ->add_option("--irqchip", o.irqchip,
                   "kernel (default: KVM's in-kernel irqchip) or user (vmctl's own local APIC; "
                   "see vmctl run --help)")
      ->check(CLI::IsMember({"kernel", "user"}));
  c.create->add_option("--dirty-ring-entries", o.dirty_ring_entries,
                       "Ring entries per vCPU, a power of two (default 4096)");
  c.create->footer(
      "Example:\n  vmctl create web1 --kernel /srv/guest.elf --memory 1G --cpus 2 --start");

  c.start = app.add_subcommand("start", "Boot a created or stopped VM");
  c.stop = app.add_subcommand("stop", "Stop a VM (its process ends; the definition stays)");
  c.remove = app.add_subcommand("delete", "Forget a stopped VM and its logs");
  c.info = app.add_subcommand("info", "A VM's state, machine, console log and exit statistics");
  c.cancel = app.add_subcommand("cancel", "Cancel a VM's migration (the VM keeps running here)");
  for (CLI::App* verb : {c.start, c.stop, c.remove, c.info, c.cancel}) {
    verb->add_option("name", o.name, "VM name")->required();
  }
  c.list = app.add_subcommand("list", "The daemon's VMs and their states");
  c.console = app.add_subcommand("console", "Follow a VM's serial console (and --send input)");
  c.console->add_option("name", o.name, "VM name")->required();
  c.console->add_option("--send", o.send,
                        "Send this text to the guest's COM1 first (\\n is not added)");
  c.console->add_flag("--follow,!--no-follow", o.follow,
                      "With --send: send only, do not follow the console");

  c.migrate = app.add_subcommand("migrate", "Live-migrate a running VM to another vmctld");
  c.migrate->add_option("name", o.name, "VM name")->required();
  c.migrate->add_option("--to", o.destination, "Destination vmctld: unix:/path or HOST:PORT");
  c.migrate->add_flag("--recover", o.recover,
                      "Settle a VM left in doubt by a migration whose switchover lost its "
                      "answer: ask the destination, then stop it here (it runs there) or resume "
                      "it (it does not). vmctld also does this by itself.");
  c.migrate
      ->add_option("--stall-timeout", o.stall_timeout_seconds,
                   "Seconds the destination may take no data before the migration gives up "
                   "(the VM runs on here)")
      ->capture_default_str();
  c.migrate->add_option("--as", o.destination_name, "The VM's name there (default: same)");
  c.migrate->add_option("--downtime-ms", o.downtime_ms, "Target downtime")->capture_default_str();
  c.migrate->add_option("--max-rounds", o.max_rounds, "Pre-copy rounds before the policy decides")
      ->capture_default_str();
  c.migrate->add_option("--max-seconds", o.max_seconds, "Time budget for the pre-copy rounds")
      ->capture_default_str();
  c.migrate
      ->add_option("--streams", o.streams,
                   "Data connections to the destination VM process, 1 to 16 (0: half the source's "
                   "cores, at most 4)")
      ->capture_default_str();
  c.migrate->add_option("--compression", o.migrate_compression, "zstd level for pages (0 = off)")
      ->capture_default_str();
  c.migrate
      ->add_option("--dirty-tracking", o.dirty_tracking,
                   "Dirty tracking of the VM on the destination: auto, bitmap or ring (default: "
                   "the VM's own setting)")
      ->check(CLI::IsMember({"auto", "bitmap", "ring"}));
  c.migrate
      ->add_option("--irqchip", o.irqchip,
                   "The VM's interrupt controllers on the destination: kernel or user (default: "
                   "the VM's own); the VM moves between the two")
      ->check(CLI::IsMember({"kernel", "user"}));
  c.migrate->add_flag("--auto-converge", o.auto_converge,
                      "Throttle the vCPUs when the guest dirties memory faster than it can be "
                      "sent (default: give up and keep the VM running here)");
  c.migrate->footer(
      "Pre-copy: all memory is sent while the guest runs, then the pages it dirtied, round after\n"
      "round, until the rest fits the downtime target; then the VM pauses, the last pages and\n"
      "the device state go over and the destination restores it, paused. Then comes the\n"
      "switchover: the destination resumes the VM and only then is it stopped here.\n"
      "Any failure or `vmctl cancel` before the switchover leaves the VM running here. If the\n"
      "answer to the switchover is lost (link cut, destination gone), the VM stays paused here as\n"
      "migration_in_doubt until the two daemons settle it (vmctld retries by itself; --recover\n"
      "asks now): it then runs exactly once, there or here. Exit codes: 0 migrated, 1 failed\n"
      "(the VM runs here), 2 bad input.\n\n"
      "Example:\n"
      "  vmctl migrate web1 --to 10.0.0.2:7443 --downtime-ms 50 --tls-ca ca.pem \\\n"
      "      --tls-cert client.pem --tls-key client.key\n"
      "  vmctl migrate --recover web1");

  c.host_info = app.add_subcommand(
      "host-info", "What this host's KVM offers: capabilities, virtualization features, CPU");
  c.host_info->add_flag("--daemon", o.from_daemon,
                        "Ask the vmctld selected by --host instead of this machine");
  c.host_info->footer(
      "Save it with --json on each host, then compare with `vmctl host-check A.json B.json`.");
  c.host_check = app.add_subcommand(
      "host-check", "Can a guest move from host A to host B? (reports from host-info --json)");
  c.host_check->add_option("reports", o.reports, "A.json B.json")->required()->expected(2);
  c.host_check->add_option("--guest", o.guest_snapshot,
                           "Judge this guest (a snapshot file) rather than any guest of A");
  c.host_check->footer("Exit code 0: it can move; 1: it cannot (the lines say why).");

  for (CLI::App* verb : {c.create, c.start, c.stop, c.remove, c.list, c.info, c.console, c.migrate,
                         c.cancel, c.host_info, c.host_check}) {
    verb->add_flag("--json", o.json, "Print JSON for scripts");
  }
  return c;
}

int run_daemon_command(const DaemonCommands& c, DaemonOptions& o) {
  if (c.create->parsed()) {
    Result<uint64_t> memory = parse_size(o.memory);
    if (!memory.ok()) {
      std::fprintf(stderr, "vmctl: --memory: %s\n", memory.error().message().c_str());
      return 2;
    }
    Result<Client> client = Client::connect(o);
    if (!client.ok()) return connect_failed(client.error());
    grpc::ClientContext context;
    v1::CreateVmRequest request;
    request.set_name(o.name);
    request.set_start(o.start);
    v1::VmConfig* config = request.mutable_config();
    config->set_kernel(absolute_path(o.kernel));
    config->set_initrd(absolute_path(o.initrd));
    config->set_cmdline(o.cmdline);
    config->set_memory_bytes(*memory);
    config->set_cpus(o.cpus);
    config->set_dirty_tracking(o.dirty_tracking);
    config->set_dirty_ring_entries(o.dirty_ring_entries);
    config->set_irqchip(o.irqchip);
    v1::VmInfo info;
    grpc::Status status = client->stub().CreateVm(&context, request, &info);
    if (!status.ok()) return client->fail(status);
    print_info(info, o.json);
    return 0;
  }
  if (c.start->parsed()) return simple_call(o, &v1::Vmctl::Stub::StartVm);
  if (c.stop->parsed()) return simple_call(o, &v1::Vmctl::Stub::StopVm);
  if (c.remove->parsed()) return simple_call(o, &v1::Vmctl::Stub::DeleteVm);
  if (c.info->parsed()) return simple_call(o, &v1::Vmctl::Stub::GetVm);
  if (c.cancel->parsed()) return simple_call(o, &v1::Vmctl::Stub::CancelMigration);
  if (c.list->parsed()) {
    Result<Client> client = Client::connect(o);
    if (!client.ok()) return connect_failed(client.error());
    grpc::ClientContext context;
    v1::ListVmsResponse response;
    grpc::Status status = client->stub().ListVms(&context, v1::ListVmsRequest(), &response);
    if (!status.ok()) return client->fail(status);
    if (o.json) {
      std::printf("%s\n", to_json(response).c_str());
      return 0;
    }
    std::printf("%-24s %-10s %5s %10s %8s\n", "NAME", "STATE", "CPUS", "MEMORY", "PID");
    for (const v1::VmInfo& i : response.vms()) {
      std::printf("%-24s %-10s %5u %10s %8s\n", i.name().c_str(), vm_state_name(i.state()).c_str(),
                  i.config().cpus(), format_size(i.config().memory_bytes()).c_str(),
                  i.pid() ? std::to_string(i.pid()).c_str() : "-");
    }
    return 0;
  }
  if (c.console->parsed()) return console_command(o);
  if (c.host_info->parsed()) return host_info_command(o);
  if (c.host_check->parsed()) return host_check_command(o);
  if (c.migrate->parsed()) return migrate_command(o);
  return 2;
}

int daemon_snapshot(DaemonOptions& o) {
  Result<Client> client = Client::connect(o);
  if (!client.ok()) return connect_failed(client.error());
  grpc::ClientContext context;
  v1::SnapshotRequest request;
  request.set_name(o.name);
  request.set_path(absolute_path(o.file));
  request.set_stop(o.stop);
  request.set_diff(o.diff);
  request.set_compression(o.compression);
  request.set_memory_file(absolute_path(o.memory_file));
  v1::SnapshotResponse response;
  grpc::Status status = client->stub().Snapshot(&context, request, &response);
  if (!status.ok()) return client->fail(status);
  if (o.json) {
    std::printf("%s\n", to_json(response).c_str());
  } else {
    std::printf("snapshot of %s: %s, %s in %.2f s (%llu pages, %llu zero pages elided)\n",
                o.name.c_str(), response.path().c_str(), format_size(response.bytes()).c_str(),
                response.seconds(), static_cast<unsigned long long>(response.pages()),
                static_cast<unsigned long long>(response.zero_pages()));
  }
  return 0;
}

int daemon_restore(DaemonOptions& o) {
  Result<Client> client = Client::connect(o);
  if (!client.ok()) return connect_failed(client.error());
  grpc::ClientContext context;
  v1::RestoreRequest request;
  request.set_name(o.name);
  for (const std::string& f : o.files) request.add_files(absolute_path(f));
  request.set_paused(o.paused);
  request.set_lazy(o.lazy);
  if (o.dirty_tracking != "auto") request.set_dirty_tracking(o.dirty_tracking);
  if (o.irqchip != "kernel") request.set_irqchip(o.irqchip);
  v1::VmInfo info;
  grpc::Status status = client->stub().Restore(&context, request, &info);
  if (!status.ok()) return client->fail(status);
  print_info(info, o.json);
  return 0;
}

int daemon_pause_resume(DaemonOptions& o, bool pause) {
  return simple_call(o, pause ? &v1::Vmctl::Stub::PauseVm : &v1::Vmctl::Stub::ResumeVm);
}

}  // namespace vmctl::cli
