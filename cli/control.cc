#include "cli/control.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "base/size.h"
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
    Result<std::string> line = read_line(client);
    nlohmann::json answer;
    if (!line.ok()) continue;
    nlohmann::json request = nlohmann::json::parse(*line, nullptr, /*allow_exceptions=*/false);
    if (request.is_discarded() || !request.is_object()) {
      answer = {{"ok", false}, {"error", "the request is not a JSON object"}};
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
            {"memory", vm_.memory().ram_size()}};
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
