#include "vmprocess/console.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "base/rotating_log.h"
#include "base/size.h"

namespace vmctl::vmprocess {

TerminalMode::TerminalMode() {
  if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_) != 0) return;
  termios raw = saved_;
  raw.c_lflag &= ~(ICANON | ECHO | ECHONL | IEXTEN);
  raw.c_iflag &= ~(IXON | ICRNL);
  raw.c_cc[VMIN] = 1;
  raw.c_cc[VTIME] = 0;
  active_ = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
}

TerminalMode::~TerminalMode() {
  if (active_) tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
}

StdinPump::StdinPump(std::function<void(const uint8_t*, size_t)> sink)
    : sink_(std::move(sink)), wake_(eventfd(0, EFD_CLOEXEC)) {
  thread_ = std::thread([this] { run(); });
}

StdinPump::~StdinPump() {
  uint64_t one = 1;
  if (wake_.valid()) (void)!::write(wake_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
}

void StdinPump::run() {
  pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {wake_.get(), POLLIN, 0}};
  uint8_t buf[512];
  for (;;) {
    int r = ::poll(fds, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    if (fds[0].revents & (POLLIN | POLLHUP)) {
      ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        return;  // EOF: nothing more to forward
      }
      sink_(buf, static_cast<size_t>(n));
    } else if (fds[0].revents & (POLLERR | POLLNVAL)) {
      return;
    }
  }
}

Result<std::function<void(const uint8_t*, size_t)>> console_output(const std::string& log_path,
                                                                   const std::string& log_max) {
  if (log_path.empty()) return std::function<void(const uint8_t*, size_t)>(write_stdout);
  uint64_t max_bytes = TRY_CTX(parse_size(log_max), "--console-log-max");
  std::shared_ptr<RotatingLog> log = TRY_CTX(RotatingLog::open(log_path, max_bytes), "console log");
  return std::function<void(const uint8_t*, size_t)>(
      [log](const uint8_t* data, size_t len) { log->write(data, len); });
}

void write_stdout(const uint8_t* data, size_t len) {
  while (len > 0) {
    ssize_t n = ::write(STDOUT_FILENO, data, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // stdout closed: the guest's output has nowhere to go
    }
    data += n;
    len -= static_cast<size_t>(n);
  }
}

}  // namespace vmctl::vmprocess
