#include "cli/control.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <future>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "base/size.h"
#include "migrate/grpc_target.h"
#include "migrate/precopy.h"
#include "state/cpu_features.h"
#include "state/host_report.h"
#include "state/vm_state.h"

namespace vmctl::cli {
namespace {

Result<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Error::user(fmt::format("control socket path {} is too long (at most {} bytes)", path,
                                   sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

Status write_all(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno("writing to the control socket", errno);
    }
    done += static_cast<size_t>(n);
  }
  return ok_status();
}

Result<std::string> read_line(int fd) {
  std::string line;
  char c;
  while (true) {
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno("reading from the control socket", errno);
    }
    if (n == 0 || c == '\n') break;
    line += c;
    if (line.size() > (1 << 20)) return Error::user("control message longer than 1 MiB");
  }
  return line;
}

nlohmann::json progress_json(const migrate::Progress& p) {
  nlohmann::json j = {{"phase", p.phase},
                      {"round", p.round},
                      {"bytes_sent", p.bytes_sent},
                      {"pages_sent", p.pages_sent},
                      {"remaining_bytes", p.remaining_bytes},
                      {"bandwidth_mib_s", p.bandwidth_mib_s},
                      {"dirty_rate_mib_s", p.dirty_rate_mib_s},
                      {"expected_downtime_ms", p.expected_downtime_ms},
                      {"throttle_percent", p.throttle_percent},
                      {"elapsed_seconds", p.elapsed_seconds}};
  if (!p.error.empty()) j["error"] = p.error;
  if (p.phase == "done") {
    j["downtime"] = {{"pause_to_last_page_ms", p.downtime.pause_to_last_page_ms},
                     {"last_page_to_state_ms", p.downtime.last_page_to_state_ms},
                     {"state_to_resumed_ms", p.downtime.state_to_resumed_ms},
                     {"total_ms", p.downtime.total_ms}};
  }
  return j;
}

}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::start(vmm::Vm& vm, const std::string& path,
                                                            bool vm_paused) {
  sockaddr_un addr = TRY(unix_address(path));
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
  if (::listen(fd, 8) != 0) return Error::from_errno("listening on the control socket", errno);
  std::unique_ptr<ControlServer> server(new ControlServer(vm, path, std::move(listener)));
  server->wake_ = Fd(::eventfd(0, EFD_CLOEXEC));
  server->paused_by_us_ = vm_paused;
  server->thread_ = std::thread([s = server.get()] { s->serve(); });
  return server;
}

Status ControlServer::check_destination(migrate::GrpcMigrationTarget& target) {
  // This host's report (a probe VM is made for it) while the destination makes its own.
  std::future<Result<nlohmann::json>> local = std::async(std::launch::async, state::host_report);
  std::string text = TRY(target.destination_report());
  nlohmann::json destination = nlohmann::json::parse(text, nullptr, false);
  if (destination.is_discarded())
    return Error::failure("the destination's host report is not JSON");
  TRY(state::validate_host_report(destination, "the destination's host report"));
  nlohmann::json here = TRY(local.get());
  std::vector<vmm::CpuidEntry> cpuid = TRY(vm_.vcpu(0).fd().get_cpuid2());
  std::vector<std::string> guest = state::cpu_feature_names(cpuid);
  state::MoveVerdict verdict = state::check_move(here, destination, &guest);
  if (verdict.can_move) return ok_status();
  std::string why;
  for (const std::string& r : verdict.reasons) {
    if (r.rfind("blocks: ", 0) == 0) why += (why.empty() ? "" : "; ") + r.substr(8);
  }
  return Error::user("the destination refused the VM before any memory was sent: " + why);
}

void ControlServer::migrate(const nlohmann::json& request, Fd conn) {
  auto send = [&](const nlohmann::json& line) { (void)write_all(conn.get(), line.dump() + "\n"); };
  migrate::PrecopyOptions options;
  options.downtime_ms = request.value("downtime_ms", 30.0);
  options.max_rounds = request.value("max_rounds", 30u);
  options.max_seconds = request.value("max_seconds", 120.0);
  options.auto_converge = request.value("auto_converge", false);
  options.compression_level = request.value("compression", 0);
  migrate::TlsConfig tls;
  if (request.contains("tls")) {
    tls.ca = request["tls"].value("ca", "");
    tls.cert = request["tls"].value("cert", "");
    tls.key = request["tls"].value("key", "");
  }
  std::string destination = request.value("destination", "");
  // The destination VM tracks dirty pages as this one was asked to, unless the request says
  // otherwise (a property of the host, not of the guest: either side may use either mode).
  std::string dirty_tracking = request.value(
      "dirty_tracking", std::string(vmm::dirty_tracking_name(vm_.config().dirty_tracking)));
  uint32_t ring_entries = request.value("dirty_ring_entries", vm_.config().dirty_ring_entries);
  spdlog::info("migrating to {}", destination);
  Result<std::unique_ptr<migrate::GrpcMigrationTarget>> target =
      migrate::GrpcMigrationTarget::connect(
          destination, tls, request.value("destination_name", "vm"), request.value("streams", 1u),
          dirty_tracking, ring_entries);
  if (target.ok()) {
    // Before sending anything: can the guest run there at all?
    Status fits = check_destination(**target);
    if (!fits.ok()) target = std::move(fits).error();
  }
  Result<migrate::Progress> result =
      target.ok()
          ? migrate::migrate_vm(
                vm_, **target, options, [&](const migrate::Progress& p) { send(progress_json(p)); },
                cancel_migration_)
          : Result<migrate::Progress>(std::move(target).error());
  // Pages the migration cleared from KVM's log are gone from the diff tracker's view: the next
  // diff snapshot needs a new full one first.
  dirty_ = state::DirtyTracker();
  if (!result.ok()) {
    spdlog::warn("migration to {} failed: {}", destination, result.error().message());
    if (!target.ok()) {
      migrate::Progress failed;
      failed.phase = "failed";
      failed.error = result.error().message();
      send(progress_json(failed));
    }
    migrating_ = false;
    return;
  }
  spdlog::info("migrated to {}; this VM ends here", destination);
  migrating_ = false;
  conn.reset();  // the daemon sees the final line before the process ends
  vm_.stop();
}

ControlServer::~ControlServer() {
  uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof(one)) < 0) {
    // Nothing to do: the thread also ends when the listener closes.
  }
  if (thread_.joinable()) thread_.join();
  cancel_migration_ = true;
  if (migration_thread_.joinable()) migration_thread_.join();
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
    Result<std::string> line = read_line(client);
    nlohmann::json answer;
    if (!line.ok()) continue;
    nlohmann::json request = nlohmann::json::parse(*line, nullptr, /*allow_exceptions=*/false);
    if (request.is_discarded() || !request.is_object()) {
      answer = {{"ok", false}, {"error", "the request is not a JSON object"}};
    } else if (request.value("op", "") == "migrate") {
      // Long-running, with progress lines on its connection: its own thread, so status and
      // cancel_migration requests are still served meanwhile.
      if (migrating_) {
        answer = {{"ok", false}, {"error", "a migration of this VM is in progress already"}};
      } else {
        if (migration_thread_.joinable()) migration_thread_.join();
        migrating_ = true;
        cancel_migration_ = false;
        migration_thread_ = std::thread(
            [this, request, c = std::move(conn)]() mutable { migrate(request, std::move(c)); });
        continue;
      }
    } else {
      answer = handle(request);
    }
    (void)write_all(client, answer.dump() + "\n");
  }
}

nlohmann::json ControlServer::handle(const nlohmann::json& request) {
  std::string op = request.value("op", "");
  if (op == "status") {
    return {{"ok", true},
            {"paused", vm_.paused()},
            {"vcpus", vm_.num_cpus()},
            {"memory", vm_.memory().ram_size()},
            {"dirty_tracking", vmm::dirty_tracking_name(vm_.config().dirty_tracking)},
            {"dirty_tracking_in_use", vmm::dirty_tracking_name(vm_.dirty_pages().mode())},
            {"dirty_ring_entries", vm_.config().dirty_ring_entries},
            {"pid", ::getpid()}};
  }
  if (op == "stats") {
    Result<std::vector<vmm::VcpuStats>> stats = vm_.exit_stats();
    if (!stats.ok()) return {{"ok", false}, {"error", stats.error().message()}};
    nlohmann::json vcpus = nlohmann::json::array();
    for (const vmm::VcpuStats& v : *stats) {
      nlohmann::json counters = nlohmann::json::object();
      for (const auto& value : v.values) counters[value.name] = value.value;
      vcpus.push_back({{"vcpu", v.vcpu}, {"counters", counters}});
    }
    return {{"ok", true}, {"vcpus", vcpus}};
  }
  if (op == "console") {
    std::string data = request.value("data", "");
    vm_.console_input(reinterpret_cast<const uint8_t*>(data.data()), data.size());
    return {{"ok", true}};
  }
  if (op == "cancel_migration") {
    if (!migrating_) return {{"ok", false}, {"error", "no migration is in progress"}};
    cancel_migration_ = true;
    return {{"ok", true}};
  }
  if (op == "stop") {
    // The session sees the VM end and the process exits with the stopped status.
    vm_.stop();
    return {{"ok", true}};
  }
  if (op == "pause") {
    if (!paused_by_us_) vm_.pause();
    paused_by_us_ = true;
    return {{"ok", true}};
  }
  if (op == "resume") {
    if (paused_by_us_) vm_.resume();
    paused_by_us_ = false;
    return {{"ok", true}};
  }
  if (op == "snapshot") {
    if (migrating_)
      return {{"ok", false}, {"error", "the VM is being migrated: snapshot it later"}};
    std::string path = request.value("path", "");
    if (path.empty()) return {{"ok", false}, {"error", "snapshot needs a path"}};
    state::SnapshotOptions options;
    options.compression_level = request.value("compression", 1);
    options.leave_paused = request.value("stop", false);
    options.diff = request.value("diff", false);
    options.memory_file = request.value("memory_file", "");
    options.tracker = &dirty_;
    spdlog::info("snapshot to {} requested", path);
    Result<state::CaptureStats> stats = state::save_snapshot(vm_, path, options);
    if (!stats.ok()) return {{"ok", false}, {"error", stats.error().message()}};
    if (options.leave_paused) paused_by_us_ = true;
    return {{"ok", true},
            {"path", path},
            {"id", stats->snapshot_id},
            {"bytes", stats->bytes},
            {"records", stats->records},
            {"pages", stats->pages},
            {"zero_pages", stats->zero_pages},
            {"seconds", std::chrono::duration<double>(stats->duration).count()},
            {"paused", options.leave_paused}};
  }
  return {{"ok", false}, {"error", fmt::format("unknown control operation '{}'", op)}};
}

Status control_stream(const std::string& path, const nlohmann::json& request,
                      const std::function<void(const nlohmann::json&)>& on_line) {
  sockaddr_un addr = TRY(unix_address(path));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Error::from_errno("creating a socket", errno);
  Fd conn(fd);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Error::user(
        fmt::format("cannot reach the VM's control socket {}: {}", path, std::strerror(errno)));
  }
  TRY(write_all(fd, request.dump() + "\n"));
  while (true) {
    std::string line = TRY(read_line(fd));
    if (line.empty()) return ok_status();  // the VM closed the stream
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return Error::failure(fmt::format("the VM at {} sent a malformed line", path));
    }
    if (j.contains("ok") && !j.value("ok", false)) {
      return Error::user(j.value("error", "request failed"));
    }
    on_line(j);
  }
}

Result<nlohmann::json> control_request(const std::string& path, const nlohmann::json& request) {
  sockaddr_un addr = TRY(unix_address(path));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Error::from_errno("creating a socket", errno);
  Fd conn(fd);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Error::user(fmt::format(
        "cannot reach the VM's control socket {}: {} (is `vmctl run --control {}` running?)", path,
        std::strerror(errno), path));
  }
  TRY(write_all(fd, request.dump() + "\n"));
  std::string line = TRY(read_line(fd));
  nlohmann::json answer = nlohmann::json::parse(line, nullptr, false);
  if (answer.is_discarded() || !answer.is_object()) {
    return Error::failure(fmt::format("the VM at {} sent a malformed answer", path));
  }
  if (!answer.value("ok", false)) return Error::user(answer.value("error", "request failed"));
  return answer;
}

}  // namespace vmctl::cli
