// Pages a running VM dirtied since its last snapshot, for diff snapshots. The VM's dirty page
// source (KVM's bitmap or its dirty rings, vmm/dirty_pages.h) hands out each page once; the bits
// are folded into `pending` and only dropped once the snapshot that carries them is durable, so a
// failed diff snapshot loses nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "vmm/vm.h"

namespace vmctl::state {

// One bitmap per memory region (in vm.memory().regions() order), bit n = page n of the region.
using DirtyBitmaps = vmm::DirtyBitmaps;

class DirtyTracker {
 public:
  // With the VM paused, right after a snapshot became durable: turns dirty logging on (if it is
  // not yet), discards what KVM logged so far and starts a new epoch whose parent is `snapshot_id`.
  Status restart(vmm::Vm& vm, const std::string& snapshot_id);
  // With the VM paused: folds KVM's log into the pending bitmaps and returns them.
  Result<const DirtyBitmaps*> collect(vmm::Vm& vm);
  bool active() const { return !parent_id_.empty(); }
  const std::string& parent_id() const { return parent_id_; }

 private:
  Status fold(vmm::Vm& vm, bool keep);
  DirtyBitmaps pending_;
  std::string parent_id_;
};

// Run-length encoding used by DirtyLog records: alternating clean and dirty run lengths in pages,
// starting with clean.
std::vector<uint64_t> encode_runs(const std::vector<uint64_t>& bitmap, uint64_t pages);
// The inverse; errors if the runs do not add up to `pages`.
Result<std::vector<uint64_t>> decode_runs(const std::vector<uint64_t>& runs, uint64_t pages);

inline bool test_bit(const std::vector<uint64_t>& bitmap, uint64_t bit) {
  return (bitmap[bit / 64] >> (bit % 64)) & 1;
}

}  // namespace vmctl::state
