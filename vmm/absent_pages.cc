#include "vmm/absent_pages.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

namespace vmctl::vmm {
namespace {

constexpr uint64_t kPresent = 1ull << 63;
constexpr uint64_t kSwapped = 1ull << 62;  // also migration and other non-present entries

}  // namespace

AbsentPages::AbsentPages() : pagemap_(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)) {}

void AbsentPages::find(const MemoryRegion& region, uint64_t first, uint64_t count,
                       std::vector<uint64_t>& out) {
  out.assign((count + 63) / 64, 0);
  if (!region.zero_when_absent || !pagemap_.valid() || count == 0) return;
  entries_.resize(count);
  const uint64_t vpn = reinterpret_cast<uintptr_t>(region.host.data()) / kPageSize + first;
  const size_t bytes = count * sizeof(uint64_t);
  ssize_t n = ::pread(pagemap_.get(), entries_.data(), bytes, static_cast<off_t>(vpn * 8));
  if (n != static_cast<ssize_t>(bytes)) return;  // cannot tell: scan every page
  for (uint64_t i = 0; i < count; ++i) {
    if ((entries_[i] & (kPresent | kSwapped)) == 0) out[i / 64] |= uint64_t{1} << (i % 64);
  }
}

}  // namespace vmctl::vmm
