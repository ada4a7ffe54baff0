#include "state/dirty_tracker.h"

#include <fmt/format.h>

namespace vmctl::state {

namespace {
constexpr uint64_t kPageSize = 4096;
}

Status DirtyTracker::fold(vmm::Vm& vm, bool keep) {
  auto& regions = vm.memory().regions();
  pending_.resize(regions.size());
  for (size_t i = 0; i < regions.size(); ++i) {
    pending_[i].resize((regions[i].size / kPageSize + 63) / 64, 0);
    if (!keep) std::fill(pending_[i].begin(), pending_[i].end(), 0);
  }
  DirtyBitmaps log;
  TRY(vm.dirty_pages().fetch(log));
  if (keep) {
    for (size_t i = 0; i < pending_.size(); ++i) {
      for (size_t w = 0; w < pending_[i].size(); ++w) pending_[i][w] |= log[i][w];
    }
  }
  return ok_status();
}

Status DirtyTracker::restart(vmm::Vm& vm, const std::string& snapshot_id) {
  TRY_CTX(vm.set_dirty_logging(true), "tracking dirty pages for the next diff snapshot");
  TRY(fold(vm, /*keep=*/false));
  parent_id_ = snapshot_id;
  return ok_status();
}

Result<const DirtyBitmaps*> DirtyTracker::collect(vmm::Vm& vm) {
  if (!active()) {
    return Error::user("no parent snapshot to diff against: take a full snapshot of this VM first");
  }
  TRY(fold(vm, /*keep=*/true));
  return &pending_;
}

std::vector<uint64_t> encode_runs(const std::vector<uint64_t>& bitmap, uint64_t pages) {
  std::vector<uint64_t> runs;
  bool dirty = false;
  uint64_t length = 0;
  for (uint64_t p = 0; p < pages; ++p) {
    bool bit = test_bit(bitmap, p);
    if (bit != dirty) {
      runs.push_back(length);
      dirty = bit;
      length = 0;
    }
    ++length;
  }
  runs.push_back(length);
  return runs;
}

Result<std::vector<uint64_t>> decode_runs(const std::vector<uint64_t>& runs, uint64_t pages) {
  std::vector<uint64_t> bitmap((pages + 63) / 64, 0);
  uint64_t at = 0;
  bool dirty = false;
  for (uint64_t length : runs) {
    if (length > pages - at) {
      return Error::user(
          fmt::format("dirty log runs cover more than the region's {} pages", pages));
    }
    if (dirty) {
      for (uint64_t p = at; p < at + length; ++p) bitmap[p / 64] |= 1ull << (p % 64);
    }
    at += length;
    dirty = !dirty;
  }
  if (at != pages) {
    return Error::user(fmt::format("dirty log runs cover {} of the region's {} pages", at, pages));
  }
  return bitmap;
}

}  // namespace vmctl::state
