#include "daemon/path_policy.h"

#include <limits.h>
#include <stdlib.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace vmctl::daemon {
namespace {

Result<std::string> resolve(const std::string& path) {
  char buffer[PATH_MAX];
  if (!::realpath(path.c_str(), buffer)) return Error::from_errno("realpath " + path, errno);
  return std::string(buffer);
}

}  // namespace

bool path_is_under(const std::string& path, const std::string& root) {
  if (root == "/") return !path.empty() && path[0] == '/';
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

Result<PathPolicy> PathPolicy::under(const std::vector<std::string>& roots,
                                     const std::string& what) {
  PathPolicy policy;
  policy.unrestricted_ = false;
  policy.list_name_ = what;
  for (const std::string& root : roots) {
    if (root.empty() || root[0] != '/') {
      return Error::user(fmt::format("{}: '{}' is not an absolute path", what, root));
    }
    Result<std::string> resolved = resolve(root);
    if (!resolved.ok()) {
      return Error::user(fmt::format("{}: directory {} does not exist or cannot be resolved: {}",
                                     what, root, resolved.error().message()));
    }
    policy.roots_.push_back(std::move(*resolved));
  }
  return policy;
}

Result<std::string> PathPolicy::allow(const std::string& resolved, const std::string& path,
                                      const std::string& what) const {
  if (unrestricted_) return resolved;
  for (const std::string& root : roots_) {
    if (path_is_under(resolved, root)) return resolved;
  }
  std::string shown = resolved == path ? path : fmt::format("{} (resolves to {})", path, resolved);
  return Error::user(fmt::format(
      "{} {} is outside the directories this daemon allows ({}: {}); put it under one of them or "
      "extend {} in vmctld's --config",
      what, shown, list_name_, fmt::join(roots_, ", "), list_name_));
}

Result<std::string> PathPolicy::existing(const std::string& path, const std::string& what) const {
  if (path.empty() || path[0] != '/') {
    return Error::user(
        fmt::format("{} '{}' must be an absolute path on the daemon's host", what, path));
  }
  Result<std::string> resolved = resolve(path);
  if (!resolved.ok()) {
    return Error::user(fmt::format("{} {} is not usable on the daemon's host: {}", what, path,
                                   std::strerror(resolved.error().sys_errno())));
  }
  return allow(*resolved, path, what);
}

Result<std::string> PathPolicy::new_file(const std::string& path, const std::string& what) const {
  if (path.empty() || path[0] != '/') {
    return Error::user(
        fmt::format("{} '{}' must be an absolute path on the daemon's host", what, path));
  }
  size_t slash = path.rfind('/');
  std::string name = path.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") {
    return Error::user(fmt::format("{} '{}' names a directory, not a file", what, path));
  }
  std::string dir = slash == 0 ? "/" : path.substr(0, slash);
  Result<std::string> resolved = resolve(dir);
  if (!resolved.ok()) {
    return Error::user(fmt::format("{} {}: its directory {} is not usable on the daemon's host: {}",
                                   what, path, dir, std::strerror(resolved.error().sys_errno())));
  }
  std::string file = (*resolved == "/" ? "" : *resolved) + "/" + name;
  return allow(file, path, what);
}

}  // namespace vmctl::daemon
