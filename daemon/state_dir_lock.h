// One vmctld per state directory. Two daemons on one directory would both adopt the same VM
// processes, race on every vm.json and hand out the same names; the second one is refused.
#pragma once

#include <string>

#include "base/error.h"
#include "base/fd.h"

namespace vmctl::daemon {

class StateDirLock {
 public:
  StateDirLock() = default;

  // Takes an exclusive lock on STATE_DIR/vmctld.lock (flock(2), released when the process ends,
  // however it ends) and writes this process's pid into the file. Held by another process: a
  // user error naming that daemon's pid.
  static Result<StateDirLock> acquire(const std::string& state_dir);

 private:
  explicit StateDirLock(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

}  // namespace vmctl::daemon
