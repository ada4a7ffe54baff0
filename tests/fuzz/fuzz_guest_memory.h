// Guest RAM for fuzzers that write into it: kGuestPages pages between two inaccessible guard
// pages, so a write outside guest RAM faults at once instead of landing in some other mapping.
#pragma once

#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "vmm/memory.h"

namespace vmctl::fuzz {

inline constexpr uint64_t kGuestPages = 64;

inline vmm::GuestMemory& guarded_guest_memory() {
  static vmm::GuestMemory* memory = [] {
    // GuestMemory::create insists on a bootable size: its one region is then swapped for the
    // guarded one.
    auto created = vmm::GuestMemory::create(vmm::kMinimumMemory);
    if (!created.ok()) {
      std::fprintf(stderr, "guest memory: %s\n", created.error().message().c_str());
      std::abort();
    }
    auto* m = new vmm::GuestMemory(std::move(created).value());
    uint64_t bytes = kGuestPages * vmm::kPageSize;
    void* span =
        ::mmap(nullptr, bytes + 2 * vmm::kPageSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (span == MAP_FAILED) std::abort();
    auto* ram = static_cast<uint8_t*>(span) + vmm::kPageSize;
    if (::mprotect(ram, bytes, PROT_READ | PROT_WRITE) != 0) std::abort();
    m->regions().resize(1);
    m->regions()[0].host = Mapping(ram, bytes);
    m->regions()[0].size = bytes;
    return m;
  }();
  return *memory;
}

}  // namespace vmctl::fuzz
