// What one stream must and may contain, checked as its records arrive and at its trailer.
//
// Every stream, whatever its kind, ends with the whole machine: the irqchip, PIT and clock records
// and a vcpu and a lapic record for each vCPU the header names (a diff snapshot too: CPU state is
// not diffed). Beyond that:
//   full snapshot  memory pages, or one memory file record right after the header; no dirty log
//   diff snapshot  one dirty log, before any memory pages (it zeroes the pages it names, so pages
//                  written before it would be lost); no memory file
//   migration      memory pages and one dirty log per round after the first; no memory file, and
//                  its records are numbered (stream.h)
// A stream from a peer (a migration receiver, whatever kind its header claims) may not name a
// memory file either: that would be a path on this host, chosen by the peer. A record the stream
// holds once (irqchip, PIT, clock, each vCPU's vcpu and lapic) may not come twice, and the
// trailer's record and page counts must match what was read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "proto/state.capnp.h"
#include "state/restore_budget.h"
#include "state/stream.h"

namespace vmctl::state {

enum class StreamOrigin {
  kFile,  // a snapshot file this host was asked to restore
  kPeer,  // a migration stream from another host
};

class StreamContents {
 public:
  StreamContents(std::string stream, proto::state::StreamKind kind, StreamOrigin origin,
                 unsigned vcpus, const RestoreBudget& budget);

  // Before the record after the header is used at all. `numbered`: whether the stream numbers its
  // records (known from the header on).
  Status check_numbering(bool numbered) const;
  // Before any record is used: whether it may come here (kind, order, a second copy).
  Status admit(RecordType type);
  // A vcpu or lapic record for vCPU `index` (before it is kept).
  Status admit_vcpu(RecordType type, unsigned index);
  // A non-memory record about to be held until the trailer: counted against the budget.
  Status retain(const Record& record);
  void add_memory_pages(uint64_t pages) { memory_pages_ += pages; }
  void used_memory_file() { memory_file_ = true; }
  // At the trailer: its counts against what was read, and every record the stream must carry.
  Status check_trailer(proto::state::Trailer::Reader trailer, uint64_t records_before) const;

 private:
  std::string stream_;
  proto::state::StreamKind kind_;
  StreamOrigin origin_;
  unsigned vcpus_;
  RestoreBudget budget_;
  bool irqchip_ = false, pit_ = false, clock_ = false;
  unsigned dirty_logs_ = 0;
  bool memory_pages_seen_ = false;
  bool memory_file_ = false;
  uint64_t memory_pages_ = 0;
  std::vector<bool> vcpu_, lapic_;
  uint64_t retained_records_ = 0, retained_bytes_ = 0;
};

}  // namespace vmctl::state
