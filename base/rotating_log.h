// A log file that something we do not control fills (a guest's console): capped and rotated, and
// a reader that follows it across rotations.
//
// The file at PATH never grows past `max_bytes`. When it is full, PATH is renamed to PATH.1
// (replacing the generation before, so at most two generations, 2 × max_bytes, are on disk) and
// a new, empty PATH is started. Rotation happens at a line end once the file is within 1/16 of the
// cap, so a line normally lies whole in one file; only a line longer than that is cut.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/fd.h"

namespace vmctl {

inline constexpr uint64_t kMinRotatingLogBytes = 4096;

class RotatingLog {
 public:
  // Appends to PATH (created mode 0640 if missing, never through a symlink); a file already
  // over the cap is rotated at the first write. `max_bytes` is at least kMinRotatingLogBytes.
  static Result<std::unique_ptr<RotatingLog>> open(const std::string& path, uint64_t max_bytes);

  // Appends, rotating as needed; safe from several threads. The writer of a console cannot stop
  // the guest on an error (a full disk): what cannot be written is dropped.
  void write(const uint8_t* data, size_t len);
  uint64_t rotations() const;

 private:
  RotatingLog(std::string path, Fd fd, uint64_t size, uint64_t max_bytes);
  void rotate();  // with mu_ held

  const std::string path_;
  const uint64_t max_bytes_, rotate_at_line_end_;
  mutable std::mutex mu_;
  Fd fd_;
  uint64_t size_ = 0;
  uint64_t rotations_ = 0;
};

// Follows a RotatingLog from its start: each call returns the complete lines written since the
// last one. It keeps the file it reads open, so when the writer rotates it reads that file to its
// end before it moves on to the new PATH (a file that shrinks in place is read again from 0). Lines
// longer than kMaxLineBytes are returned in pieces, so a writer that never ends a line cannot make
// the follower hold an unbounded buffer. A generation that is rotated away entirely between two
// calls is not seen.
class RotatingLogFollower {
 public:
  static constexpr size_t kMaxLineBytes = 16 << 10;

  explicit RotatingLogFollower(std::string path) : path_(std::move(path)) {}
  std::vector<std::string> new_lines();

 private:
  void drain(std::vector<std::string>& lines);

  std::string path_;
  Fd fd_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  uint64_t offset_ = 0;
  std::string partial_;
};

}  // namespace vmctl
