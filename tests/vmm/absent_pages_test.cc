// AbsentPages on real anonymous memory: pages never touched are reported absent (zero without a
// read), pages written are not, and a region whose absent pages are not zero reports none.
#include "vmm/absent_pages.h"

#include <gtest/gtest.h>

#include <cstring>

namespace vmctl::vmm {
namespace {

bool bit(const std::vector<uint64_t>& bits, uint64_t i) {
  return (bits[i / 64] >> (i % 64)) & 1;
}

MemoryRegion anonymous_region(uint64_t pages) {
  Result<Mapping> m = Mapping::anonymous(pages * kPageSize, "test region");
  EXPECT_TRUE(m.ok());
  MemoryRegion region;
  region.size = pages * kPageSize;
  region.host = std::move(*m);
  region.zero_when_absent = true;
  return region;
}

TEST(AbsentPages, UntouchedPagesAreAbsentAndWrittenOnesAreNot) {
  MemoryRegion region = anonymous_region(128);
  uint8_t* base = region.host.data();
  base[3 * kPageSize] = 1;         // written
  base[70 * kPageSize + 100] = 0;  // written with a zero: backed now, so it must be read
  volatile uint8_t read = base[90 * kPageSize];  // read only: maps the shared zero page
  (void)read;
  AbsentPages absent;
  std::vector<uint64_t> bits;
  absent.find(region, 0, 128, bits);
  ASSERT_EQ(bits.size(), 2u);
  EXPECT_FALSE(bit(bits, 3));
  EXPECT_FALSE(bit(bits, 70));
  EXPECT_TRUE(bit(bits, 0));
  EXPECT_TRUE(bit(bits, 127));
  // A window that starts inside the region counts from its own first page.
  absent.find(region, 64, 16, bits);
  ASSERT_EQ(bits.size(), 1u);
  EXPECT_FALSE(bit(bits, 70 - 64));
  EXPECT_TRUE(bit(bits, 0));
  // Every page reported absent really reads as zeros.
  absent.find(region, 0, 128, bits);
  for (uint64_t p = 0; p < 128; ++p) {
    if (bit(bits, p)) {
      EXPECT_TRUE(page_is_zero(base + p * kPageSize)) << "page " << p;
    }
  }
}

TEST(AbsentPages, ARegionWhoseAbsentPagesAreNotZeroReportsNone) {
  MemoryRegion region = anonymous_region(64);
  region.zero_when_absent = false;  // as for a file mapping
  AbsentPages absent;
  std::vector<uint64_t> bits;
  absent.find(region, 0, 64, bits);
  ASSERT_EQ(bits.size(), 1u);
  EXPECT_EQ(bits[0], 0u);
}

}  // namespace
}  // namespace vmctl::vmm
