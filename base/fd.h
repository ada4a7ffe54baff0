// Fd owns a file descriptor and Mapping owns an mmap'ed range; both are move-only and release their
// resource exactly once. Nothing else in the project calls close() or munmap() directly.
#pragma once

#include <cstddef>
#include <string>
#include <utility>

#include "base/error.h"

namespace vmctl {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);

  // open(2) with O_CLOEXEC added; the error names the path.
  static Result<Fd> open(const std::string& path, int flags, int mode = 0);

 private:
  int fd_ = -1;
};

class Mapping {
 public:
  Mapping() = default;
  Mapping(void* addr, size_t size) : addr_(addr), size_(size) {}
  Mapping(Mapping&& other) noexcept
      : addr_(std::exchange(other.addr_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  Mapping& operator=(Mapping&& other) noexcept {
    if (this != &other) {
      reset();
      addr_ = std::exchange(other.addr_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { reset(); }

  // mmap(2); `what` names the mapping in the error ("guest RAM region 0").
  static Result<Mapping> map(size_t size, int prot, int flags, int fd, off_t offset,
                             const std::string& what);
  // Anonymous private read/write memory.
  static Result<Mapping> anonymous(size_t size, const std::string& what);

  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  size_t size() const { return size_; }
  void reset();

 private:
  void* addr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace vmctl
