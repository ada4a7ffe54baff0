#include "vmm/memory.h"

#include <sys/mman.h>

#include <cstdio>

#include "base/size.h"

namespace vmctl::vmm {

namespace {
std::string range_text(uint64_t gpa, uint64_t len) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "[0x%llx, 0x%llx)", static_cast<unsigned long long>(gpa),
                static_cast<unsigned long long>(gpa + len));
  return buf;
}
}  // namespace

Result<GuestMemory> GuestMemory::create(uint64_t ram_size, const MemoryFileBacking* backing) {
  if (ram_size % kPageSize != 0) {
    return Error::user("memory size " + std::to_string(ram_size) + " is not a multiple of 4 KiB");
  }
  if (ram_size < kMinimumMemory) {
    return Error::user("memory size " + format_size(ram_size) + " is too small: give at least " +
                       format_size(kMinimumMemory) + " (e.g. --memory 64M)");
  }
  GuestMemory memory;
  memory.ram_size_ = ram_size;
  uint64_t low = ram_size < kMmioHoleStart ? ram_size : kMmioHoleStart;
  auto map = [&](uint64_t size, uint64_t file_offset, const std::string& what) -> Result<Mapping> {
    if (backing == nullptr) {
      Mapping m = TRY(Mapping::anonymous(size, what));
      // Transparent huge pages where the host allows them (as QEMU asks for its guest RAM): KVM
      // maps guest memory with 2 MiB pages, and reading RAM the guest never touched (the zero
      // page check of every snapshot and migration) takes one fault per 2 MiB instead of one
      // per 4 KiB. Advice only: a host with THP off keeps 4 KiB pages.
      (void)::madvise(m.data(), size, MADV_HUGEPAGE);
      return m;
    }
    // MAP_NORESERVE: copy-on-write pages are charged when written, not up front.
    return Mapping::map(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, backing->fd,
                        static_cast<off_t>(backing->offset + file_offset), what + " (from file)");
  };
  MemoryRegion low_region;
  low_region.guest_phys = 0;
  low_region.size = low;
  low_region.slot = 0;
  low_region.host = TRY_CTX(map(low, 0, "guest RAM below 4 GiB"),
                            "allocating " + format_size(ram_size) + " of guest memory");
  low_region.zero_when_absent = backing == nullptr;
  low_region.vmm_dirty = std::make_unique<std::atomic<uint64_t>[]>((low / kPageSize + 63) / 64);
  memory.regions_.push_back(std::move(low_region));
  if (ram_size > low) {
    MemoryRegion high;
    high.guest_phys = kHighMemoryStart;
    high.size = ram_size - low;
    high.slot = 1;
    high.host = TRY_CTX(map(high.size, low, "guest RAM above 4 GiB"),
                        "allocating " + format_size(ram_size) + " of guest memory");
    high.zero_when_absent = backing == nullptr;
    high.vmm_dirty = std::make_unique<std::atomic<uint64_t>[]>((high.size / kPageSize + 63) / 64);
    memory.regions_.push_back(std::move(high));
  }
  return memory;
}

uint8_t* GuestMemory::host_address(uint64_t gpa, uint64_t len) const {
  for (const MemoryRegion& r : regions_) {
    if (r.contains(gpa, len)) return r.host.data() + (gpa - r.guest_phys);
  }
  return nullptr;
}

Status GuestMemory::write(uint64_t gpa, const void* src, size_t len) {
  uint8_t* dst = host_address(gpa, len);
  if (dst == nullptr)
    return Error::failure("guest write " + range_text(gpa, len) + " is outside guest RAM");
  std::memcpy(dst, src, len);
  mark_vmm_dirty(gpa, len);
  return ok_status();
}

Status GuestMemory::read(uint64_t gpa, void* dst, size_t len) const {
  const uint8_t* src = host_address(gpa, len);
  if (src == nullptr)
    return Error::failure("guest read " + range_text(gpa, len) + " is outside guest RAM");
  std::memcpy(dst, src, len);
  return ok_status();
}

Status GuestMemory::fill(uint64_t gpa, uint8_t byte, size_t len) {
  uint8_t* dst = host_address(gpa, len);
  if (dst == nullptr)
    return Error::failure("guest fill " + range_text(gpa, len) + " is outside guest RAM");
  std::memset(dst, byte, len);
  mark_vmm_dirty(gpa, len);
  return ok_status();
}

void GuestMemory::mark_vmm_dirty(uint64_t gpa, uint64_t len) {
  if (len == 0) return;
  for (MemoryRegion& r : regions_) {
    if (!r.contains(gpa, len)) continue;
    uint64_t first = (gpa - r.guest_phys) / kPageSize;
    uint64_t last = (gpa - r.guest_phys + len - 1) / kPageSize;
    for (uint64_t p = first; p <= last; ++p) {
      r.vmm_dirty[p / 64].fetch_or(uint64_t{1} << (p % 64), std::memory_order_relaxed);
    }
    return;
  }
}

void GuestMemory::take_vmm_dirty(std::vector<std::vector<uint64_t>>& bitmaps) {
  for (size_t i = 0; i < regions_.size() && i < bitmaps.size(); ++i) {
    uint64_t words = (regions_[i].size / kPageSize + 63) / 64;
    for (uint64_t w = 0; w < words && w < bitmaps[i].size(); ++w) {
      bitmaps[i][w] |= regions_[i].vmm_dirty[w].exchange(0, std::memory_order_relaxed);
    }
  }
}

}  // namespace vmctl::vmm
