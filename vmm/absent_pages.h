// Guest pages the host has never backed: neither present in this process's page tables nor
// swapped out, as /proc/self/pagemap tells. In anonymous private memory such a page reads as
// zeros, so the zero-page scans of round 0 and of snapshots skip it without touching it (a read
// would fault in the zero page, one fault per 4 KiB or 2 MiB).
#pragma once

#include <cstdint>
#include <vector>

#include "base/fd.h"
#include "vmm/memory.h"

namespace vmctl::vmm {

class AbsentPages {
 public:
  // Opens /proc/self/pagemap; where it cannot (no /proc), every page counts as possibly backed.
  AbsentPages();

  // For `count` pages of `region` from page `first`: bit i of `out` (64-bit words) is set when
  // page first + i is certainly zero because nothing backs it. All clear for a region whose
  // absent pages are not zero (a file mapping) or when pagemap cannot be read.
  void find(const MemoryRegion& region, uint64_t first, uint64_t count, std::vector<uint64_t>& out);

 private:
  Fd pagemap_;
  std::vector<uint64_t> entries_;
};

}  // namespace vmctl::vmm
