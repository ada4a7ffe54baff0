#include "daemon/state_dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace vmctl::daemon {

Result<StateDirLock> StateDirLock::acquire(const std::string& state_dir) {
  std::string path = state_dir + "/vmctld.lock";
  // O_CLOEXEC: the VM processes the daemon starts must not inherit (and so keep) the lock.
  int raw = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (raw < 0) {
    return Error::user(
        fmt::format("cannot open the state directory's lock {}: {}", path, std::strerror(errno)));
  }
  Fd fd(raw);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return Error::from_errno(fmt::format("locking {}", path), errno);
    char buf[32] = {};
    ssize_t n = ::pread(fd.get(), buf, sizeof buf - 1, 0);
    std::string holder(buf, n > 0 ? static_cast<size_t>(n) : 0);
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    bool is_pid = !holder.empty() && holder.find_first_not_of("0123456789") == std::string::npos;
    return Error::user(fmt::format(
        "another vmctld{} is using the state directory {} (it holds {}): stop it, or give this "
        "one another --state-dir",
        is_pid ? " (pid " + holder + ")" : "", state_dir, path));
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd.get(), 0) != 0 ||
      ::pwrite(fd.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    return Error::from_errno(fmt::format("writing this daemon's pid into {}", path), errno);
  }
  return StateDirLock(std::move(fd));
}

}  // namespace vmctl::daemon
