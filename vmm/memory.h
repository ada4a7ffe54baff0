// Guest physical memory: anonymous host mappings laid out the way x86 needs them.
//
// Layout: RAM starts at guest physical 0. When the guest has more RAM than fits below the 32-bit
// MMIO hole (LAPIC at 0xFEE00000, IOAPIC at 0xFEC00000, PCI/MMIO from 3 GiB), the rest is placed
// from 4 GiB up. Regions are registered with KVM by the VM (vmm/vm.cc); this file knows no ioctls.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/fd.h"

namespace vmctl::vmm {

inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint64_t kMmioHoleStart = 3ull << 30;    // 3 GiB
inline constexpr uint64_t kHighMemoryStart = 4ull << 30;  // 4 GiB
inline constexpr uint64_t kMinimumMemory = 16ull << 20;   // a guest below this cannot boot usefully

// Whether a guest page holds only zeros (snapshots and migration leave those out). Called once
// per page of guest RAM: eight words at a time, stopping at the first non-zero block.
inline bool page_is_zero(const uint8_t* page) {
  const auto* words = reinterpret_cast<const uint64_t*>(page);
  for (uint64_t i = 0; i < kPageSize / 8; i += 8) {
    uint64_t acc = words[i] | words[i + 1] | words[i + 2] | words[i + 3] | words[i + 4] |
                   words[i + 5] | words[i + 6] | words[i + 7];
    if (acc) return false;
  }
  return true;
}

struct MemoryRegion {
  uint64_t guest_phys = 0;
  uint64_t size = 0;
  Mapping host;  // owns the host pages backing this region
  // Pages the VMM itself wrote through GuestMemory::write/fill: KVM's dirty log only sees the
  // guest's writes, and live migration must resend these too. One bit per page.
  std::unique_ptr<std::atomic<uint64_t>[]> vmm_dirty;
  // Anonymous private memory, where a page nothing backs reads as zeros (vmm/absent_pages.h).
  // False for a file mapping; whatever later registers a region with userfaultfd (pages that
  // arrive on demand) must clear it too.
  bool zero_when_absent = false;
  uint32_t slot = 0;           // KVM memory slot id
  bool dirty_logging = false;  // KVM_MEM_LOG_DIRTY_PAGES currently set on the slot

  uint64_t end() const { return guest_phys + size; }
  bool contains(uint64_t gpa, uint64_t len) const {
    return gpa >= guest_phys && len <= size && gpa - guest_phys <= size - len;
  }
};

// Guest RAM backed by a file instead of anonymous memory: each region maps its slice of the file
// copy-on-write (MAP_PRIVATE), so pages are read only when the guest touches them and the file
// is never written. Region i starts at `offset` plus the sizes of the regions before it.
struct MemoryFileBacking {
  int fd = -1;  // borrowed: the mappings stay valid after it is closed
  uint64_t offset = 0;
};

class GuestMemory {
 public:
  // Allocates `ram_size` bytes (a multiple of 4 KiB, at least kMinimumMemory) split around the
  // hole; with `backing`, maps them from a file instead.
  static Result<GuestMemory> create(uint64_t ram_size, const MemoryFileBacking* backing = nullptr);

  GuestMemory(GuestMemory&&) = default;
  GuestMemory& operator=(GuestMemory&&) = default;

  uint64_t ram_size() const { return ram_size_; }
  // The end of RAM below 4 GiB (exclusive); loaders put initrds and tables below it.
  uint64_t low_ram_end() const { return regions_.front().end(); }
  std::vector<MemoryRegion>& regions() { return regions_; }
  const std::vector<MemoryRegion>& regions() const { return regions_; }

  // Host pointer for [gpa, gpa+len), or nullptr if the range is not wholly inside one region.
  uint8_t* host_address(uint64_t gpa, uint64_t len) const;
  // Marks [gpa, gpa+len) as written by the VMM (see MemoryRegion::vmm_dirty).
  void mark_vmm_dirty(uint64_t gpa, uint64_t len);

  // Bounds-checked copies; the error names the guest address range.
  Status write(uint64_t gpa, const void* src, size_t len);
  Status read(uint64_t gpa, void* dst, size_t len) const;
  Status fill(uint64_t gpa, uint8_t byte, size_t len);

  // ORs the pages the VMM wrote since the last call into `bitmaps` (one per region, one bit per
  // page, sized by the caller) and clears them.
  void take_vmm_dirty(std::vector<std::vector<uint64_t>>& bitmaps);

  template <typename T>
  Status write_obj(uint64_t gpa, const T& obj) {
    return write(gpa, &obj, sizeof(T));
  }
  template <typename T>
  Result<T> read_obj(uint64_t gpa) const {
    T obj;
    Status s = read(gpa, &obj, sizeof(T));
    if (!s.ok()) return std::move(s).error();
    return obj;
  }

 private:
  GuestMemory() = default;
  std::vector<MemoryRegion> regions_;
  uint64_t ram_size_ = 0;
};

}  // namespace vmctl::vmm
