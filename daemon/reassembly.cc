#include "daemon/reassembly.h"

#include <fmt/format.h>

namespace vmctl::daemon {

Status Reassembly::fail(std::string why) {
  if (closed_.empty()) closed_ = why;
  pending_.clear();
  pending_bytes_ = 0;
  return Error::user(closed_);
}

Status Reassembly::push(uint64_t sequence, std::string bytes) {
  std::lock_guard lock(mu_);
  if (!closed_.empty()) return Error::user(closed_);
  if (bytes.size() > max_chunk_bytes_) {
    return fail(fmt::format("chunk {} holds {} bytes, more than the {} a chunk may", sequence,
                            bytes.size(), max_chunk_bytes_));
  }
  if (sequence < next_ || pending_.count(sequence)) {
    return fail(fmt::format("chunk {} arrived twice", sequence));
  }
  if (sequence != next_ && pending_bytes_ + bytes.size() > max_pending_bytes_) {
    return fail(fmt::format(
        "chunk {} is missing: {} bytes of later chunks wait for it, more than the {} allowed",
        next_, pending_bytes_ + bytes.size(), max_pending_bytes_));
  }
  pending_bytes_ += bytes.size();
  pending_.emplace(sequence, std::move(bytes));
  for (auto it = pending_.find(next_); it != pending_.end(); it = pending_.find(next_)) {
    Status written = write_(it->second);
    if (!written.ok()) {
      // Not the source's fault: the VM process stopped reading (it failed, and says why).
      (void)fail(written.error().message());
      return Error::failure(closed_);
    }
    pending_bytes_ -= it->second.size();
    pending_.erase(it);
    ++next_;
  }
  return ok_status();
}

Status Reassembly::finish() {
  std::lock_guard lock(mu_);
  if (!closed_.empty()) return Error::user(closed_);
  if (!pending_.empty()) {
    return fail(
        fmt::format("the data streams ended with chunk {} missing ({} later chunks "
                    "arrived)",
                    next_, pending_.size()));
  }
  return ok_status();
}

void Reassembly::close() {
  std::lock_guard lock(mu_);
  (void)fail("closed");
}

uint64_t Reassembly::next() const {
  std::lock_guard lock(mu_);
  return next_;
}

uint64_t Reassembly::pending_bytes() const {
  std::lock_guard lock(mu_);
  return pending_bytes_;
}

}  // namespace vmctl::daemon
