#include "vmprocess/control_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace vmctl::vmprocess {
namespace {

using Clock = std::chrono::steady_clock;
// A control line is small JSON; anything longer is not from a VM process of ours.
constexpr size_t kMaxLine = 1 << 20;

}  // namespace

Result<sockaddr_un> unix_socket_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Error::user(fmt::format("control socket path {} is too long (at most {} bytes)", path,
                                   sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

namespace {

// Waits until `fd` is readable (or writable); false on timeout. 0 ms waits forever.
Result<bool> wait_for(int fd, short events, std::chrono::milliseconds timeout) {
  Clock::time_point deadline = Clock::now() + timeout;
  while (true) {
    int ms = -1;
    if (timeout.count() > 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      ms = static_cast<int>(left.count());
    }
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno("waiting on the control socket", errno);
    }
    if (r == 0) return false;
    return true;
  }
}

Result<Fd> connect_to(const std::string& path, std::chrono::milliseconds timeout) {
  sockaddr_un addr = TRY(unix_socket_address(path));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Error::from_errno("creating a socket", errno);
  Fd conn(fd);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EAGAIN && errno != EINPROGRESS) {
      return Error::user(
          fmt::format("cannot reach the VM's control socket {}: {}", path, std::strerror(errno)));
    }
    // A full listen backlog: the VM process is alive but busy.
    if (!TRY(wait_for(fd, POLLOUT, timeout))) {
      return Error::failure(fmt::format("the VM's control socket {} did not accept within {} ms",
                                        path, timeout.count()));
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      return Error::user(
          fmt::format("cannot reach the VM's control socket {}: {}", path, std::strerror(err)));
    }
  }
  return conn;
}

Status write_all(int fd, const std::string& data, std::chrono::milliseconds timeout) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        if (!TRY(wait_for(fd, POLLOUT, timeout))) {
          return Error::failure("the VM process does not read its control socket");
        }
        continue;
      }
      return Error::from_errno("writing to the control socket", errno);
    }
    done += static_cast<size_t>(n);
  }
  return ok_status();
}

// Reads one line into `line` from `fd`, keeping what follows it in `buffer`. Returns false at the
// end of the stream with nothing pending.
Result<bool> read_line(int fd, std::string& buffer, std::string& line,
                       std::chrono::milliseconds timeout, const std::string& path) {
  Clock::time_point deadline = Clock::now() + timeout;
  while (true) {
    size_t nl = buffer.find('\n');
    if (nl != std::string::npos) {
      line = buffer.substr(0, nl);
      buffer.erase(0, nl + 1);
      return true;
    }
    if (buffer.size() > kMaxLine) return Error::user("control message longer than 1 MiB");
    std::chrono::milliseconds left{0};
    if (timeout.count() > 0) {
      left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) left = std::chrono::milliseconds(1);
    }
    if (!TRY(wait_for(fd, POLLIN, left))) {
      return Error::failure(
          fmt::format("the VM process at {} did not answer within {} ms", path, timeout.count()));
    }
    char chunk[4096];
    ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Error::from_errno("reading from the control socket", errno);
    }
    if (n == 0) {
      if (buffer.empty()) return false;
      line = std::move(buffer);
      buffer.clear();
      return true;
    }
    buffer.append(chunk, static_cast<size_t>(n));
  }
}

Result<nlohmann::json> parse_line(const std::string& line, const std::string& path) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Error::failure(fmt::format("the VM at {} sent a malformed line", path));
  }
  if (j.contains("ok") && !j.value("ok", false)) {
    const auto& e = j["error"];
    return Error::user(e.is_string() ? e.get<std::string>() : "request failed");
  }
  return j;
}

std::string dump_line(const nlohmann::json& j) {
  // Never throws: text that is not UTF-8 is replaced rather than ending the caller.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace

Result<nlohmann::json> control_request(const std::string& path, const nlohmann::json& request,
                                       const ControlTimeouts& timeouts, bool* delivered) {
  if (delivered) *delivered = false;
  Result<Fd> conn = connect_to(path, timeouts.connect);
  if (!conn.ok()) {
    return Error(conn.error().kind(), fmt::format("{} (is `vmctl run --control {}` running?)",
                                                  conn.error().message(), path));
  }
  int fd = conn->get();
  TRY(write_all(fd, dump_line(request), timeouts.answer));
  if (delivered) *delivered = true;
  std::string buffer, line;
  bool got = TRY(read_line(fd, buffer, line, timeouts.answer, path));
  if (!got) return Error::failure(fmt::format("the VM at {} closed the connection", path));
  nlohmann::json answer = TRY(parse_line(line, path));
  if (!answer.value("ok", false)) return Error::user("request failed");
  return answer;
}

Result<pid_t> control_socket_pid(const std::string& path, const ControlTimeouts& timeouts) {
  Fd conn = TRY(connect_to(path, timeouts.connect));
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return Error::from_errno(fmt::format("SO_PEERCRED on {}", path), errno);
  }
  return cred.pid;
}

Result<ControlStream> ControlStream::open(const std::string& path, const nlohmann::json& request,
                                          const ControlTimeouts& timeouts) {
  Fd conn = TRY(connect_to(path, timeouts.connect));
  TRY(write_all(conn.get(), dump_line(request), timeouts.answer));
  return ControlStream(std::move(conn), path);
}

Result<nlohmann::json> ControlStream::next(std::chrono::milliseconds timeout) {
  std::string line;
  bool got = TRY(read_line(fd_.get(), buffer_, line, timeout, path_));
  if (!got) return nlohmann::json::object();
  return parse_line(line, path_);
}

Status ControlStream::send(const nlohmann::json& line) {
  return write_all(fd_.get(), dump_line(line), std::chrono::milliseconds(10000));
}

Status send_json_line(int fd, const nlohmann::json& line) {
  return write_all(fd, dump_line(line), std::chrono::milliseconds(10000));
}

Status control_stream(const std::string& path, const nlohmann::json& request,
                      const std::function<void(const nlohmann::json&)>& on_line) {
  ControlStream stream = TRY(ControlStream::open(path, request));
  while (true) {
    nlohmann::json line = TRY(stream.next());
    if (line.empty()) return ok_status();  // the VM closed the stream
    on_line(line);
  }
}

}  // namespace vmctl::vmprocess
