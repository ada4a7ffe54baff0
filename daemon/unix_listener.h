// The daemon's unix socket, accepted by the daemon itself rather than by gRPC so that each
// connection's peer credentials (SO_PEERCRED: uid, gid, pid of the connecting process) are taken
// at accept time and remembered by fd; the connection is then handed to the gRPC server
// (AddInsecureChannelFromFd), which names its peer "fd:N". The Authorizer maps that uid to roles.
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <string>
#include <thread>

#include "base/error.h"
#include "base/fd.h"
#include "daemon/authorization.h"

namespace vmctl::daemon {

struct UnixSocketOptions {
  std::string path;
  mode_t mode = 0600;                    // who may connect at all; roles decide what they may do
  gid_t group = static_cast<gid_t>(-1);  // -1: the daemon's
};

class UnixListener {
 public:
  // Binds and listens (a stale socket file at `path` is replaced).
  static Result<std::unique_ptr<UnixListener>> open(const UnixSocketOptions& options,
                                                    PeerCredentials& peers);
  // Stops accepting and removes the socket file.
  ~UnixListener();

  // Accepts connections into `server` on a thread of its own until destroyed.
  void serve(grpc::Server* server);

 private:
  UnixListener(std::string path, Fd listen_fd, Fd wake_fd, PeerCredentials& peers)
      : path_(std::move(path)),
        listen_fd_(std::move(listen_fd)),
        wake_fd_(std::move(wake_fd)),
        peers_(peers) {}
  void accept_loop(grpc::Server* server);

  std::string path_;
  Fd listen_fd_;
  Fd wake_fd_;  // eventfd: written to stop the accept loop
  PeerCredentials& peers_;
  std::thread thread_;
};

}  // namespace vmctl::daemon
