// Where a VM's dirty pages come from: KVM's per-slot dirty bitmap or its per-vCPU dirty rings.
//
// The choice is made once per VM, before its vCPUs exist (the ring must be enabled first, and on
// x86 a VM with rings refuses KVM_GET_DIRTY_LOG and KVM_CLEAR_DIRTY_LOG). Either way KVM logs only
// while a slot has KVM_MEM_LOG_DIRTY_PAGES (Vm::set_dirty_logging), and DirtyPages::fetch() hands
// out the pages the guest dirtied since the previous fetch, re-protected before it returns so
// that a later write shows up in the next fetch. Consumers (diff snapshots, migration rounds) do
// not care which source is behind it.
//
// Bitmap: KVM_GET_DIRTY_LOG per slot; with manual protect on, KVM_CLEAR_DIRTY_LOG in chunks.
// Ring: every vCPU's ring is harvested (safe while the vCPUs run: acquire loads of the entries'
// flags, release stores to hand them back), then KVM_RESET_DIRTY_RINGS. A vCPU whose ring fills
// up exits with KVM_EXIT_DIRTY_RING_FULL; its thread harvests all rings into the pending bitmap
// here (on_ring_full) and goes on, so the ring never blocks a guest that nobody collects from.
//
// KVM must stop a vCPU before its ring overflows (it keeps entries in reserve past the soft limit).
// A KVM that does not (the PVM module emulates runs of guest kernel instructions without looking,
// and then overwrites entries nobody read) loses dirty pages. Two checks catch it: a harvest that
// finds a whole lap of entries, and KVM_RESET_DIRTY_RINGS resetting fewer entries than were handed
// back. Either makes the next fetch() report every page dirty (costly, never wrong). A ring so
// damaged that the vCPU keeps exiting full with nothing to collect ends the VM with an error.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "base/error.h"
#include "vmm/kvm/kvm.h"
#include "vmm/memory.h"

namespace vmctl::vmm {

enum class DirtyTracking {
  kAuto,    // the ring where the host's KVM offers it, else the bitmap
  kBitmap,  // KVM_GET_DIRTY_LOG (+ KVM_CLEAR_DIRTY_LOG)
  kRing,    // KVM_CAP_DIRTY_LOG_RING; refused on a host without it
};
const char* dirty_tracking_name(DirtyTracking mode);
// "auto", "bitmap" or "ring"; anything else is a user error naming the choices.
Result<DirtyTracking> parse_dirty_tracking(const std::string& text);

// Entries per vCPU ring when the configuration names none: 64 KiB per vCPU, 16 MiB of guest
// writes between two ring-full exits of a vCPU.
inline constexpr uint32_t kDefaultDirtyRingEntries = 4096;

// Whether this host's KVM is known to overrun dirty rings: the PVM flavour (module kvm_pvm)
// emulates runs of guest kernel instructions without stopping at a ring's soft limit and then
// overwrites entries nobody has read (Linux 6.18 with PVM: a WARN in kvm_dirty_ring_push and lost
// pages). `auto` takes the bitmap on such a host; `ring` still gets the ring, with a warning.
bool host_overruns_dirty_rings();

// One bitmap per memory region (in GuestMemory::regions() order), bit n = page n of the region.
using DirtyBitmaps = std::vector<std::vector<uint64_t>>;

class DirtyPages {
 public:
  // `mode` is kBitmap or kRing (resolved); with kRing, add every vCPU's ring before use.
  DirtyPages(kvm::VmFd& vm_fd, GuestMemory& memory, DirtyTracking mode);
  DirtyPages(const DirtyPages&) = delete;
  DirtyPages& operator=(const DirtyPages&) = delete;

  DirtyTracking mode() const { return mode_; }
  void add_ring(kvm::DirtyRing* ring);

  // Bitmap mode: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 on or off (where the host has it); with it,
  // fetch() clears only the chunks that have dirty pages. The ring has nothing to switch.
  Status set_manual_protect(bool on);
  bool manual_protect() const { return manual_; }

  // ORs the pages dirtied since the previous fetch into `bitmaps` (resized to the regions) and
  // re-arms dirty logging for them. Safe while the vCPUs run.
  Status fetch(DirtyBitmaps& bitmaps);

  // From a vCPU thread after KVM_EXIT_DIRTY_RING_FULL: empties every ring into the pending
  // bitmap and resets them, so the vCPU can run on.
  Status on_ring_full();

  struct Stats {
    uint64_t harvested = 0;        // ring entries read
    uint64_t resets = 0;           // KVM_RESET_DIRTY_RINGS calls
    uint64_t ring_full_exits = 0;  // KVM_EXIT_DIRTY_RING_FULL handled
    uint64_t stray = 0;            // entries naming no page of guest RAM (ignored)
    uint64_t overruns = 0;         // times KVM was found to have overwritten entries
  };
  Stats stats() const;

 private:
  Status fetch_bitmap(DirtyBitmaps& bitmaps);
  // Returns how many entries it collected.
  Result<uint64_t> harvest_locked();
  void overrun_locked(const char* how);

  kvm::VmFd& vm_fd_;
  GuestMemory& memory_;
  const DirtyTracking mode_;
  bool manual_ = false;

  mutable std::mutex mu_;  // ring mode: one harvester at a time; guards everything below
  std::vector<kvm::DirtyRing*> rings_;
  DirtyBitmaps pending_;           // harvested, not yet fetched
  bool all_dirty_ = false;         // an overrun lost entries: the next fetch reports every page
  unsigned empty_full_exits_ = 0;  // ring-full exits in a row that found nothing to collect
  Stats stats_;
};

}  // namespace vmctl::vmm
