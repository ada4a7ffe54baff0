#include "base/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace vmctl {
namespace {

std::string base_name(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

uint64_t random_u64() {
  uint64_t value = 0;
  if (::getrandom(&value, sizeof value, 0) == static_cast<ssize_t>(sizeof value)) return value;
  std::random_device device;  // getrandom(2) is missing or interrupted: the library's source
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

std::string hex16(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// Whether the rest of a temporary file's name after its prefix follows "<pid>-<16 hex>".
bool is_temp_name(std::string_view rest) {
  size_t dash = rest.find('-');
  if (dash == 0 || dash == std::string_view::npos || dash > 9) return false;
  std::string_view pid = rest.substr(0, dash), random = rest.substr(dash + 1);
  if (random.size() != 16) return false;
  for (char c : pid) {
    if (c < '0' || c > '9') return false;
  }
  for (char c : random) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// Whether a writer still holds the temporary file at `path` (its flock). Something that is not a
// regular file we can open without following a link (a planted symlink) has no writer.
bool in_use(const std::string& path) {
  int raw = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (raw < 0) return errno != ELOOP && errno != ENOENT;
  Fd fd(raw);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  return ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
}

Status write_all(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno("writing " + path, errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return ok_status();
}

}  // namespace

std::string directory_of(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Status fsync_directory(const std::string& directory) {
  int raw = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (raw < 0) return Error::from_errno("opening directory " + directory + " to fsync it", errno);
  Fd dir(raw);
  if (::fsync(dir.get()) != 0) return Error::from_errno("fsync of directory " + directory, errno);
  return ok_status();
}

std::string temp_file_prefix(const std::string& target) {
  return target + ".tmp-";
}

Result<TempFile> create_temp_file(const std::string& target) {
  return create_temp_file(target, random_u64);
}

Result<TempFile> create_temp_file(const std::string& target,
                                  const std::function<uint64_t()>& random) {
  remove_stale_temp_files(target);
  std::string prefix = temp_file_prefix(target) + std::to_string(::getpid()) + "-";
  // A name that exists (planted, or a collision) is skipped, never opened: O_EXCL fails on any
  // existing name, a dangling symlink included, and O_NOFOLLOW says so once more.
  constexpr int kAttempts = 16;
  int err = EEXIST;
  for (int attempt = 0; attempt < kAttempts && err == EEXIST; ++attempt) {
    std::string path = prefix + hex16(random());
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) {
      // Held until the file is renamed into place or removed: how a later writer tells a file
      // in use from a leftover (a pid would not do: VM processes have their own PID namespaces).
      ::flock(fd, LOCK_EX | LOCK_NB);
      return TempFile{Fd(fd), std::move(path)};
    }
    err = errno;
  }
  if (err == EEXIST) {
    return Error::failure("cannot create a temporary file for " + target + ": " +
                          std::to_string(kAttempts) + " names in a row exist already");
  }
  Error e = Error::from_errno("cannot create a temporary file for " + target + " in " +
                                  directory_of(target) + " (is the directory writable?)",
                              err);
  return Error(ErrorKind::kUser, e.message());
}

int remove_stale_temp_files(const std::string& target) {
  std::string dir = directory_of(target);
  std::string prefix = base_name(temp_file_prefix(target));
  DIR* d = ::opendir(dir.c_str());
  if (!d) return 0;
  std::vector<std::string> stale;
  while (dirent* entry = ::readdir(d)) {
    std::string_view name = entry->d_name;
    if (name.substr(0, prefix.size()) != prefix) continue;
    if (is_temp_name(name.substr(prefix.size())) && !in_use(dir + "/" + std::string(name))) {
      stale.emplace_back(name);
    }
  }
  ::closedir(d);
  int removed = 0;
  for (const std::string& name : stale) {
    // unlink(2) removes a symlink itself, never what it points to.
    if (::unlink((dir + "/" + name).c_str()) == 0) ++removed;
  }
  return removed;
}

Status commit_temp_file(TempFile& temp, const std::string& target) {
  if (::fsync(temp.fd.get()) != 0) return Error::from_errno("fsync " + temp.path, errno);
  // Closed (its lock released) only once renamed: a writer cleaning up leftovers meanwhile must
  // see it in use.
  if (::rename(temp.path.c_str(), target.c_str()) != 0) {
    return Error::from_errno("renaming " + temp.path + " to " + target, errno);
  }
  temp.fd.reset();
  // The rename is durable only once the directory is.
  Status synced = fsync_directory(directory_of(target));
  if (!synced.ok()) {
    return std::move(synced).error().with_context(target +
                                                  " is in place but may not survive a crash");
  }
  return ok_status();
}

Status write_file_atomically(const std::string& path, std::string_view contents) {
  TempFile temp = TRY(create_temp_file(path));
  Status written = write_all(temp.fd.get(), contents, temp.path);
  if (written.ok()) written = commit_temp_file(temp, path);
  if (!written.ok()) ::unlink(temp.path.c_str());  // gone already if the rename happened
  return written;
}

}  // namespace vmctl
