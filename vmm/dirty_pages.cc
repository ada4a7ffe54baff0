#include "vmm/dirty_pages.h"

#include <unistd.h>

#include <algorithm>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace vmctl::vmm {

namespace {

// KVM_CLEAR_DIRTY_LOG takes the MMU lock per call: clear in chunks so a large guest's vCPUs are
// not held up by one long clear.
constexpr uint64_t kClearChunkPages = 32768;

uint64_t region_words(const MemoryRegion& region) {
  return (region.size / kPageSize + 63) / 64;
}

void size_bitmaps(DirtyBitmaps& bitmaps, const std::vector<MemoryRegion>& regions) {
  bitmaps.resize(regions.size());
  for (size_t i = 0; i < regions.size(); ++i) {
    if (bitmaps[i].size() < region_words(regions[i])) bitmaps[i].resize(region_words(regions[i]));
  }
}

}  // namespace

bool host_overruns_dirty_rings() {
  return ::access("/sys/module/kvm_pvm", F_OK) == 0;
}

const char* dirty_tracking_name(DirtyTracking mode) {
  switch (mode) {
    case DirtyTracking::kAuto:
      return "auto";
    case DirtyTracking::kBitmap:
      return "bitmap";
    case DirtyTracking::kRing:
      return "ring";
  }
  return "unknown";
}

Result<DirtyTracking> parse_dirty_tracking(const std::string& text) {
  for (DirtyTracking mode : {DirtyTracking::kAuto, DirtyTracking::kBitmap, DirtyTracking::kRing}) {
    if (text == dirty_tracking_name(mode)) return mode;
  }
  return Error::user(fmt::format("dirty tracking '{}' is not one of auto, bitmap, ring", text));
}

DirtyPages::DirtyPages(kvm::VmFd& vm_fd, GuestMemory& memory, DirtyTracking mode)
    : vm_fd_(vm_fd), memory_(memory), mode_(mode) {
  size_bitmaps(pending_, memory_.regions());
}

void DirtyPages::add_ring(kvm::DirtyRing* ring) {
  std::lock_guard lock(mu_);
  rings_.push_back(ring);
}

Status DirtyPages::set_manual_protect(bool on) {
  if (mode_ != DirtyTracking::kBitmap || on == manual_) return ok_status();
  if (!on) {
    manual_ = false;
    return vm_fd_.enable_cap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, 0);
  }
  // Without it (an old host) KVM_GET_DIRTY_LOG clears as it reads, which is correct too.
  if (vm_fd_.check_extension(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) > 0) {
    manual_ = vm_fd_.enable_cap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, 1).ok();
  }
  return ok_status();
}

Status DirtyPages::fetch(DirtyBitmaps& bitmaps) {
  size_bitmaps(bitmaps, memory_.regions());
  if (mode_ == DirtyTracking::kBitmap) return fetch_bitmap(bitmaps);
  std::lock_guard lock(mu_);
  TRY(harvest_locked());
  const std::vector<MemoryRegion>& regions = memory_.regions();
  for (size_t i = 0; i < pending_.size(); ++i) {
    uint64_t pages = regions[i].size / kPageSize;
    for (size_t w = 0; w < pending_[i].size(); ++w) {
      uint64_t all = pages - w * 64 >= 64 ? ~uint64_t{0} : (uint64_t{1} << (pages - w * 64)) - 1;
      bitmaps[i][w] |= all_dirty_ ? all : pending_[i][w];
      pending_[i][w] = 0;
    }
  }
  all_dirty_ = false;
  return ok_status();
}

Status DirtyPages::fetch_bitmap(DirtyBitmaps& bitmaps) {
  auto& regions = memory_.regions();
  std::vector<uint64_t> log;
  for (size_t i = 0; i < regions.size(); ++i) {
    // KVM has no bitmap for a slot without dirty logging.
    if (!regions[i].dirty_logging) continue;
    uint64_t pages = regions[i].size / kPageSize;
    log.assign(region_words(regions[i]), 0);
    TRY(vm_fd_.get_dirty_log(regions[i].slot, log.data()));
    if (manual_) {
      for (uint64_t first = 0; first < pages; first += kClearChunkPages) {
        uint64_t count = std::min(kClearChunkPages, pages - first);
        uint64_t* words = log.data() + first / 64;
        bool any = false;
        for (uint64_t w = 0; w < (count + 63) / 64; ++w) any |= words[w] != 0;
        if (!any) continue;
        TRY(vm_fd_.clear_dirty_log(regions[i].slot, first, static_cast<uint32_t>(count), words));
      }
    }
    for (size_t w = 0; w < log.size(); ++w) bitmaps[i][w] |= log[w];
  }
  return ok_status();
}

Status DirtyPages::on_ring_full() {
  std::lock_guard lock(mu_);
  ++stats_.ring_full_exits;
  uint64_t harvested = TRY(harvest_locked());
  // Another thread may have emptied the rings just before: one empty exit says nothing, a long
  // run of them says the vCPU cannot run again.
  empty_full_exits_ = harvested > 0 ? 0 : empty_full_exits_ + 1;
  if (empty_full_exits_ > 10000) {
    return Error::failure(
        "its dirty ring stays full with no entries to collect: this host's KVM overran the ring "
        "(it wrote more entries than the ring holds); run this VM with --dirty-tracking bitmap");
  }
  if (empty_full_exits_ > 0) std::this_thread::yield();
  return ok_status();
}

void DirtyPages::overrun_locked(const char* how) {
  if (stats_.overruns++ == 0) {
    spdlog::warn(
        "this host's KVM overran a vCPU's dirty ring ({}): dirty pages were lost, so every page "
        "counts as dirty once (--dirty-tracking bitmap avoids this)",
        how);
  }
  all_dirty_ = true;
}

Result<uint64_t> DirtyPages::harvest_locked() {
  const std::vector<MemoryRegion>& regions = memory_.regions();
  uint64_t harvested = 0;
  for (kvm::DirtyRing* ring : rings_) {
    uint32_t n = ring->harvest([&](uint32_t slot, uint64_t offset) {
      // The slot field is (address space << 16) | slot id; the VM has address space 0 only.
      for (size_t i = 0; i < regions.size(); ++i) {
        if (regions[i].slot != slot) continue;
        if (offset < regions[i].size / kPageSize) {
          pending_[i][offset / 64] |= uint64_t{1} << (offset % 64);
          return;
        }
        break;
      }
      if (stats_.stray++ == 0) {
        spdlog::warn("dirty ring entry for slot {:#x} page {} names no guest RAM; ignored", slot,
                     offset);
      }
    });
    // A correct KVM stops the vCPU with entries to spare: a whole lap of them means it wrote on.
    if (n == ring->entries()) overrun_locked("a whole lap of entries");
    harvested += n;
  }
  stats_.harvested += harvested;
  if (harvested == 0) return harvested;
  // Every harvested entry is marked reset: KVM re-protects those pages and frees the entries
  // before anyone reads the pages' contents. It resets from its own position while entries are
  // marked, so it frees exactly what was handed back unless it overwrote some of them. (A signal
  // can cut a reset short: go on while it makes progress.)
  uint64_t unreset = harvested;
  while (unreset > 0) {
    uint32_t reset = TRY(vm_fd_.reset_dirty_rings());
    ++stats_.resets;
    if (reset == 0) break;
    unreset -= std::min<uint64_t>(reset, unreset);
  }
  if (unreset > 0) overrun_locked("fewer entries reset than handed back");
  return harvested;
}

DirtyPages::Stats DirtyPages::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace vmctl::vmm
