#include "daemon/unix_listener.h"

#include <grpcpp/server_posix.h>
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

namespace vmctl::daemon {

Result<std::unique_ptr<UnixListener>> UnixListener::open(const UnixSocketOptions& options,
                                                         PeerCredentials& peers) {
  sockaddr_un addr{};
  if (options.path.size() >= sizeof addr.sun_path) {
    return Error::user(fmt::format("socket path {} is longer than {} bytes", options.path,
                                   sizeof addr.sun_path - 1));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, options.path.c_str(), options.path.size());
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return Error::from_errno("socket(AF_UNIX)", errno);
  ::unlink(options.path.c_str());  // a stale socket from a daemon that is gone (the state lock
                                   // already proved no other daemon owns this state)
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Error::from_errno(fmt::format("bind {}: is the directory writable?", options.path),
                             errno);
  }
  if (::chmod(options.path.c_str(), options.mode) != 0) {
    return Error::from_errno("chmod " + options.path, errno);
  }
  if (options.group != static_cast<gid_t>(-1) &&
      ::chown(options.path.c_str(), static_cast<uid_t>(-1), options.group) != 0) {
    return Error::from_errno(fmt::format("chown {} to group {}", options.path, options.group),
                             errno);
  }
  if (::listen(fd.get(), 128) != 0) return Error::from_errno("listen " + options.path, errno);
  Fd wake(::eventfd(0, EFD_CLOEXEC));
  if (!wake.valid()) return Error::from_errno("eventfd", errno);
  return std::unique_ptr<UnixListener>(
      new UnixListener(options.path, std::move(fd), std::move(wake), peers));
}

UnixListener::~UnixListener() {
  uint64_t one = 1;
  if (::write(wake_fd_.get(), &one, sizeof one) < 0) {
    spdlog::warn("waking the unix socket's accept loop: {}", std::strerror(errno));
  }
  if (thread_.joinable()) thread_.join();
  ::unlink(path_.c_str());
}

void UnixListener::serve(grpc::Server* server) {
  thread_ = std::thread([this, server] { accept_loop(server); });
}

void UnixListener::accept_loop(grpc::Server* server) {
  for (;;) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("unix socket {}: poll: {}", path_, std::strerror(errno));
      return;
    }
    if (fds[1].revents) return;
    Fd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn.valid()) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        spdlog::warn("unix socket {}: accept: {}", path_, std::strerror(errno));
        ::usleep(10000);  // EMFILE and the like: do not spin
      }
      continue;
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      spdlog::warn("unix socket {}: SO_PEERCRED: {}: connection refused", path_,
                   std::strerror(errno));
      continue;
    }
    // Recorded before gRPC sees the connection, so no call on it can come first.
    peers_.add(conn.get(), PeerCredentials::Peer{cred.uid, cred.gid, cred.pid});
    grpc::AddInsecureChannelFromFd(server, conn.release());  // gRPC owns the fd from here
  }
}

}  // namespace vmctl::daemon
