// The chunks of a migration's data streams put back in order (migrate/protocol.md: the record
// stream is cut into numbered chunks spread over several streams) on their way to the receiving
// VM process. Everything about it is bounded: a hostile or broken source can make it fail, never
// make it hold more than its budget.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "base/error.h"

namespace vmctl::daemon {

class Reassembly {
 public:
  // Chunks are written, in order, with `write` (which blocks while the VM process is slow to
  // take them: that is the back-pressure on the sources). `max_pending_bytes` bounds what waits
  // for a chunk that is late; `max_chunk_bytes` bounds one chunk.
  Reassembly(std::function<Status(const std::string&)> write, uint64_t max_pending_bytes,
             uint64_t max_chunk_bytes)
      : write_(std::move(write)),
        max_pending_bytes_(max_pending_bytes),
        max_chunk_bytes_(max_chunk_bytes) {}

  // Takes chunk `sequence`, and writes it and every chunk after it that is already here. An error
  // (a chunk seen before, too large, too far ahead for the budget: kUser; a failed write: kFailure)
  // closes it.
  Status push(uint64_t sequence, std::string bytes);
  // The streams are done: an error if a chunk is still missing.
  Status finish();
  void close();
  uint64_t next() const;
  uint64_t pending_bytes() const;

 private:
  Status fail(std::string why);  // with mu_ held

  std::function<Status(const std::string&)> write_;
  const uint64_t max_pending_bytes_, max_chunk_bytes_;
  mutable std::mutex mu_;
  uint64_t next_ = 0;
  std::map<uint64_t, std::string> pending_;
  uint64_t pending_bytes_ = 0;
  std::string closed_;  // why, once closed
};

}  // namespace vmctl::daemon
