// Which files on the daemon's host a caller may name: kernels, initrds, snapshots, memory files,
// restore files and local migration destinations must lie under directories the daemon's
// configuration allows. Paths are resolved with realpath(3) before the check, so a symlink that
// leads out of an allowed directory is refused, and the resolved path is what the daemon then
// uses (a symlink swapped after the check changes nothing).
#pragma once

#include <string>
#include <vector>

#include "base/error.h"

namespace vmctl::daemon {

class PathPolicy {
 public:
  // Every path on the host (a daemon without a [paths] section).
  PathPolicy() = default;
  // `roots` must exist; they are resolved once, here. `what` names the list in errors
  // ("paths.allowed").
  static Result<PathPolicy> under(const std::vector<std::string>& roots, const std::string& what);

  bool unrestricted() const { return unrestricted_; }
  const std::vector<std::string>& roots() const { return roots_; }

  // A file that must exist (kernel, initrd, snapshot to restore): its resolved path.
  Result<std::string> existing(const std::string& path, const std::string& what) const;
  // A file to be written (snapshot, memory file): its directory must exist and lie under a root;
  // the file itself may not exist yet. Returns the resolved directory plus the file name.
  Result<std::string> new_file(const std::string& path, const std::string& what) const;

 private:
  Result<std::string> allow(const std::string& resolved, const std::string& path,
                            const std::string& what) const;

  bool unrestricted_ = true;
  std::vector<std::string> roots_;  // resolved, without a trailing slash ("/" stays "/")
  std::string list_name_;
};

// Whether `path` is `root` or lies below it (both resolved).
bool path_is_under(const std::string& path, const std::string& root);

}  // namespace vmctl::daemon
