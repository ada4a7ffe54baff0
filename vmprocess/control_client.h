// The client side of a VM process's control socket (see control_server.h for the protocol):
// what vmctld and `vmctl ... --control` use to drive a VM process. Kept apart from the server so
// the daemon links only this.
#pragma once

#include <sys/un.h>

#include <chrono>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fd.h"

namespace vmctl::vmprocess {

// How long a call may wait for the VM process. A VM process that stops answering (stopped with
// SIGSTOP, wedged) must not hold its caller (and through it every RPC of the daemon) forever.
struct ControlTimeouts {
  std::chrono::milliseconds connect{2000};
  // For the answer (a single request) or for each progress line (a stream).
  std::chrono::milliseconds answer{10000};
};

// Sends one request to the control socket at `path` and returns the parsed answer (an error if the
// socket is unreachable, the answer does not come in time, or it says ok=false).
// `delivered`, when given, says whether the request reached the VM process: false means it
// certainly did not act on it (nothing listened, or the request could not be written).
Result<nlohmann::json> control_request(const std::string& path, const nlohmann::json& request,
                                       const ControlTimeouts& timeouts = {},
                                       bool* delivered = nullptr);

// The pid, as this process sees it, of the process that listens on the control socket at `path`
// (SO_PEERCRED): which process a socket belongs to, also across PID namespaces, where the VM
// process's own getpid() says 1.
Result<pid_t> control_socket_pid(const std::string& path, const ControlTimeouts& timeouts = {});

// A request whose answer is a stream of lines (the migrate operation's progress), on a connection
// that stays open in both directions: the caller reads lines and may send more of its own.
class ControlStream {
 public:
  static Result<ControlStream> open(const std::string& path, const nlohmann::json& request,
                                    const ControlTimeouts& timeouts = {});

  // The next line; an empty object when the VM process closed the connection. A line with
  // {"ok":false} is returned as an error with its message. Waits at most `timeout` (0: forever).
  Result<nlohmann::json> next(std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  // Sends a line of our own (a decision the VM process waits for).
  Status send(const nlohmann::json& line);

 private:
  ControlStream(Fd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  Fd fd_;
  std::string path_;
  std::string buffer_;
};

// The address of a unix socket at `path` (an error if the path is too long for one).
Result<sockaddr_un> unix_socket_address(const std::string& path);
// One JSON line on a connection of the protocol (either side); text that is not UTF-8 is
// replaced, never thrown over.
Status send_json_line(int fd, const nlohmann::json& line);

// Sends one request and passes every answer line to `on_line` until the VM closes the
// connection. An {"ok":false} line ends it with that error.
Status control_stream(const std::string& path, const nlohmann::json& request,
                      const std::function<void(const nlohmann::json&)>& on_line);

}  // namespace vmctl::vmprocess
