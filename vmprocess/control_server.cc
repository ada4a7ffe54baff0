#include "vmprocess/control_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "state/cpu_features.h"
#include "state/vm_state.h"
#include "vmprocess/control_client.h"
#include "vmprocess/seccomp_filter.h"

namespace vmctl::vmprocess {
namespace {

// A client that connects and then says nothing must not hold the server (it serves one
// connection at a time).
constexpr int kRequestTimeoutSeconds = 5;

void write_line(int fd, const nlohmann::json& j) {
  (void)send_json_line(fd, j);  // a client that went away has nothing to be told
}

// One line (the request); false on timeout, error or a line over 1 MiB.
bool read_request(int fd, std::string& line) {
  char c;
  while (true) {
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return !line.empty();
    if (c == '\n') return true;
    line += c;
    if (line.size() > (1 << 20)) return false;
  }
}

nlohmann::json refused(const std::string& why) {
  return {{"ok", false}, {"error", why}};
}

}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::start(
    vmm::Vm& vm, const std::string& path, bool vm_paused,
    std::optional<IncomingMigration> incoming) {
  sockaddr_un addr = TRY(unix_socket_address(path));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Error::from_errno("creating the control socket", errno);
  Fd listener(fd);
  ::unlink(path.c_str());  // a stale socket from a VM that is gone
  mode_t old = ::umask(0077);
  int r = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::umask(old);
  if (r != 0) {
    return Error::user(
        fmt::format("cannot create control socket {}: {}", path, std::strerror(errno)));
  }
  if (::listen(fd, 16) != 0) return Error::from_errno("listening on the control socket", errno);
  std::unique_ptr<ControlServer> server(new ControlServer(vm, path, std::move(listener)));
  server->wake_ = Fd(::eventfd(0, EFD_CLOEXEC));
  server->paused_by_us_ = vm_paused;
  server->incoming_ = std::move(incoming);
  server->thread_ = std::thread([s = server.get()] { s->serve(); });
  return server;
}

ControlServer::~ControlServer() {
  uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof(one)) < 0) {
    // Nothing to do: the thread also ends when the listener closes.
  }
  if (thread_.joinable()) thread_.join();
  ::unlink(path_.c_str());
}

void ControlServer::serve() {
  while (true) {
    pollfd fds[2] = {{listener_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    int client = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    Fd conn(client);
    timeval timeout{kRequestTimeoutSeconds, 0};
    ::setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    ::setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    std::string line;
    if (!read_request(client, line)) continue;
    Result<ControlRequest> request = parse_control_request(line);
    if (request.ok() && request->op == ControlOp::kMigrate) {
      // Long-running, with progress lines on its connection: the sender's own thread, so status
      // and cancel requests are still served meanwhile.
      std::string why = refusal(ControlOp::kMigrate);
      Status started = why.empty() ? sender_.start(request->migrate, std::move(conn))
                                   : Status(Error::conflict(why));
      if (!started.ok() && conn.valid()) write_line(client, refused(started.error().message()));
      continue;
    }
    write_line(client, request.ok() ? handle(*request) : refused(request.error().message()));
  }
}

nlohmann::json ControlServer::handle_line(const std::string& line) {
  Result<ControlRequest> request = parse_control_request(line);
  if (!request.ok()) return refused(request.error().message());
  return handle(*request);
}

std::string ControlServer::refusal(ControlOp op) {
  bool harmless = op == ControlOp::kStatus || op == ControlOp::kStats ||
                  op == ControlOp::kGuestCpuFeatures || op == ControlOp::kConsole;
  if (harmless) return "";
  std::lock_guard lock(mu_);
  if (incoming_ && op != ControlOp::kSwitchover && op != ControlOp::kDiscard) {
    return fmt::format(
        "this VM is the destination copy of migration {} and waits for its switchover: only "
        "vmctld's switchover or discard may change it",
        incoming_->id);
  }
  MigrationSender::Stage stage = sender_.stage();
  if (stage == MigrationSender::Stage::kSent && op != ControlOp::kMigrationDecision) {
    return fmt::format(
        "migration {} has sent this VM and waits for its switchover: only vmctld's decision may "
        "run or stop it now",
        sender_.migration_id());
  }
  if (stage == MigrationSender::Stage::kSending &&
      (op == ControlOp::kSnapshot || op == ControlOp::kMigrate || op == ControlOp::kStop)) {
    return "the VM is being migrated: cancel the migration first (vmctl cancel)";
  }
  return "";
}

nlohmann::json ControlServer::status() {
  nlohmann::json j = {{"ok", true},
                      {"paused", vm_.paused()},
                      {"vcpus", vm_.num_cpus()},
                      {"memory", vm_.memory().ram_size()},
                      {"dirty_tracking", vmm::dirty_tracking_name(vm_.config().dirty_tracking)},
                      {"dirty_tracking_in_use", vmm::dirty_tracking_name(vm_.dirty_pages().mode())},
                      {"dirty_ring_entries", vm_.config().dirty_ring_entries},
                      {"irqchip", vmm::irqchip_mode_name(vm_.config().irqchip)},
                      {"pid", ::getpid()}};
  std::lock_guard lock(mu_);
  j["user_paused"] = paused_by_us_;
  if (incoming_) {
    j["migration"] = {{"id", incoming_->id}, {"role", "destination"}, {"stage", "waiting"}};
  } else if (sender_.stage() != MigrationSender::Stage::kIdle) {
    j["migration"] = {
        {"id", sender_.migration_id()}, {"role", "source"}, {"stage", sender_.stage_name()}};
  }
  return j;
}

nlohmann::json ControlServer::snapshot(const SnapshotArgs& args) {
  state::SnapshotOptions options;
  options.compression_level = args.compression;
  options.leave_paused = args.stop;
  options.diff = args.diff;
  options.memory_file = args.memory_file;
  if (sender_.generation() != dirty_generation_) {
    // A migration since the last snapshot cleared KVM's dirty log: the next diff snapshot needs
    // a new full one first.
    dirty_ = state::DirtyTracker();
    dirty_generation_ = sender_.generation();
  }
  options.tracker = &dirty_;
  spdlog::info("snapshot to {} requested", args.path);
  Result<state::CaptureStats> stats = state::save_snapshot(vm_, args.path, options);
  if (!stats.ok()) return refused(stats.error().message());
  if (options.leave_paused) {
    std::lock_guard lock(mu_);
    paused_by_us_ = true;
  }
  return {{"ok", true},
          {"path", args.path},
          {"id", stats->snapshot_id},
          {"bytes", stats->bytes},
          {"records", stats->records},
          {"pages", stats->pages},
          {"zero_pages", stats->zero_pages},
          {"seconds", std::chrono::duration<double>(stats->duration).count()},
          {"paused", options.leave_paused}};
}

nlohmann::json ControlServer::switchover(const std::string& id) {
  std::lock_guard lock(mu_);
  if (!incoming_) {
    // Asked again after it happened (a daemon that restarted and does not know it was done).
    if (!id.empty() && id == switched_over_) return {{"ok", true}, {"resumed", !vm_.paused()}};
    return refused(fmt::format("no migration {} waits for a switchover here", id));
  }
  if (id != incoming_->id) {
    return refused(
        fmt::format("this VM waits for the switchover of migration {}, not {}", incoming_->id, id));
  }
  bool stay_paused = incoming_->stay_paused;
  switched_over_ = incoming_->id;
  incoming_.reset();
  if (!stay_paused && paused_by_us_) {
    paused_by_us_ = false;
    vm_.resume();
  }
  spdlog::info("migration {}: switched over; the VM {} here now", id,
               stay_paused ? "is paused" : "runs");
  return {{"ok", true}, {"resumed", !stay_paused}};
}

nlohmann::json ControlServer::discard(const std::string& id) {
  {
    std::lock_guard lock(mu_);
    if (!incoming_ || id != incoming_->id) {
      return refused(fmt::format("no migration {} waits for a switchover here", id));
    }
  }
  spdlog::info("migration {}: discarded; this copy of the VM ends without running", id);
  vm_.stop();
  return {{"ok", true}};
}

nlohmann::json ControlServer::handle(const ControlRequest& request) {
  if (std::string why = refusal(request.op); !why.empty()) return refused(why);
  switch (request.op) {
    case ControlOp::kStatus:
      return status();
    case ControlOp::kStats: {
      Result<std::vector<vmm::VcpuStats>> stats = vm_.exit_stats();
      if (!stats.ok()) return refused(stats.error().message());
      nlohmann::json vcpus = nlohmann::json::array();
      for (const vmm::VcpuStats& v : *stats) {
        nlohmann::json counters = nlohmann::json::object();
        for (const auto& value : v.values) counters[value.name] = value.value;
        vcpus.push_back({{"vcpu", v.vcpu}, {"counters", counters}});
      }
      return {{"ok", true}, {"vcpus", vcpus}};
    }
    case ControlOp::kGuestCpuFeatures:
      // Kept by the vCPU when it was set: no ioctl, which would wait while the guest halts.
      return {{"ok", true}, {"features", state::cpu_feature_names(vm_.vcpu(0).cpuid())}};
    case ControlOp::kConsole:
      vm_.console_input(reinterpret_cast<const uint8_t*>(request.console_data.data()),
                        request.console_data.size());
      return {{"ok", true}};
    case ControlOp::kStop:
      // The session sees the VM end and the process exits with the stopped status.
      vm_.stop();
      return {{"ok", true}};
    case ControlOp::kPause: {
      fault_forbidden_syscall();  // the sandbox test's stand-in for an exploited device model
      std::lock_guard lock(mu_);
      if (!paused_by_us_) vm_.pause();
      paused_by_us_ = true;
      return {{"ok", true}};
    }
    case ControlOp::kResume: {
      std::lock_guard lock(mu_);
      if (paused_by_us_) vm_.resume();
      paused_by_us_ = false;
      return {{"ok", true}};
    }
    case ControlOp::kSnapshot:
      return snapshot(request.snapshot);
    case ControlOp::kMigrate:
      return refused("migrate needs its own connection");
    case ControlOp::kCancelMigration: {
      Status cancelled = sender_.cancel();
      if (!cancelled.ok()) return refused(cancelled.error().message());
      return {{"ok", true}};
    }
    case ControlOp::kMigrationDecision: {
      Status decided = sender_.decide(request.migration_id, request.commit);
      if (!decided.ok()) return refused(decided.error().message());
      return {{"ok", true}};
    }
    case ControlOp::kSwitchover:
      return switchover(request.migration_id);
    case ControlOp::kDiscard:
      return discard(request.migration_id);
  }
  return refused("unknown control operation");
}

}  // namespace vmctl::vmprocess
