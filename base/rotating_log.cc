#include "base/rotating_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace vmctl {
namespace {

constexpr int kLogFlags = O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC;
constexpr mode_t kLogMode = 0640;

}  // namespace

Result<std::unique_ptr<RotatingLog>> RotatingLog::open(const std::string& path,
                                                       uint64_t max_bytes) {
  if (max_bytes < kMinRotatingLogBytes) {
    return Error::user("log size limit " + std::to_string(max_bytes) + " for " + path +
                       " is too small: use at least " + std::to_string(kMinRotatingLogBytes) +
                       " bytes");
  }
  int raw = ::open(path.c_str(), kLogFlags, kLogMode);
  if (raw < 0) return Error::from_errno("cannot open log " + path, errno);
  Fd fd(raw);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Error::from_errno("fstat " + path, errno);
  if (!S_ISREG(st.st_mode)) return Error::user("log " + path + " is not a regular file");
  return std::unique_ptr<RotatingLog>(
      new RotatingLog(path, std::move(fd), static_cast<uint64_t>(st.st_size), max_bytes));
}

RotatingLog::RotatingLog(std::string path, Fd fd, uint64_t size, uint64_t max_bytes)
    : path_(std::move(path)),
      max_bytes_(max_bytes),
      rotate_at_line_end_(max_bytes - max_bytes / 16),
      fd_(std::move(fd)),
      size_(size) {}

uint64_t RotatingLog::rotations() const {
  std::lock_guard lock(mu_);
  return rotations_;
}

void RotatingLog::rotate() {
  ++rotations_;
  size_ = 0;
  if (::rename(path_.c_str(), (path_ + ".1").c_str()) == 0) {
    int raw = ::open(path_.c_str(), kLogFlags | O_TRUNC, kLogMode);
    if (raw >= 0) {
      fd_.reset(raw);
      return;
    }
  }
  // No new file (the directory is not writable any more): keep the cap by starting this one over.
  if (::ftruncate(fd_.get(), 0) != 0) {
    // Nothing more to try: writes go on at the file's end, past the cap, until one succeeds.
  }
}

void RotatingLog::write(const uint8_t* data, size_t len) {
  std::lock_guard lock(mu_);
  while (len > 0) {
    if (size_ >= max_bytes_) rotate();
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, max_bytes_ - size_));
    bool rotate_after = false;
    if (size_ + n >= rotate_at_line_end_) {
      // The first line end that takes the file to the rotation point ends this file.
      size_t from = size_ + 1 >= rotate_at_line_end_ ? 0 : rotate_at_line_end_ - size_ - 1;
      const void* newline = std::memchr(data + from, '\n', n - from);
      if (newline != nullptr) {
        n = static_cast<size_t>(static_cast<const uint8_t*>(newline) - data) + 1;
        rotate_after = true;
      }
    }
    for (size_t done = 0; done < n;) {
      ssize_t w = ::write(fd_.get(), data + done, n - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return;  // dropped: see the header
      done += static_cast<size_t>(w);
      size_ += static_cast<uint64_t>(w);
    }
    data += n;
    len -= n;
    if (rotate_after) rotate();
  }
}

void RotatingLogFollower::drain(std::vector<std::string>& lines) {
  struct stat st {};
  if (::fstat(fd_.get(), &st) == 0 && static_cast<uint64_t>(st.st_size) < offset_) {
    offset_ = 0;  // emptied in place: it starts over
    partial_.clear();
  }
  char buf[64 << 10];
  for (;;) {
    ssize_t n = ::pread(fd_.get(), buf, sizeof buf, static_cast<off_t>(offset_));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    offset_ += static_cast<uint64_t>(n);
    for (ssize_t i = 0; i < n; ++i) {
      if (buf[i] == '\n') {
        if (!partial_.empty() && partial_.back() == '\r') partial_.pop_back();
        lines.push_back(std::move(partial_));
        partial_.clear();
      } else {
        partial_ += buf[i];
        if (partial_.size() >= kMaxLineBytes) {
          lines.push_back(std::move(partial_));
          partial_.clear();
        }
      }
    }
  }
}

std::vector<std::string> RotatingLogFollower::new_lines() {
  std::vector<std::string> lines;
  if (fd_.valid()) drain(lines);
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0) return lines;  // not (yet, or no longer) there
  if (fd_.valid() && st.st_dev == dev_ && st.st_ino == ino_) return lines;
  // PATH is another file: the writer rotated (or a new one started). What it wrote to the old
  // file before the rename is complete now; read it, then follow the new file from its start.
  if (fd_.valid()) drain(lines);
  int raw = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) return lines;
  fd_.reset(raw);
  struct stat opened {};
  if (::fstat(fd_.get(), &opened) != 0) {
    fd_.reset();
    return lines;
  }
  dev_ = opened.st_dev;
  ino_ = opened.st_ino;
  offset_ = 0;
  drain(lines);
  return lines;
}

}  // namespace vmctl
