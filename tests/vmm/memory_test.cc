// Guest memory layout and the VMM's own-write tracking that live migration relies on.
#include <gtest/gtest.h>

#include "vmm/memory.h"

namespace vmctl::vmm {
namespace {

TEST(GuestMemory, LargeGuestsSplitAroundTheMmioHole) {
  Result<GuestMemory> m = GuestMemory::create(4ull << 30);
  ASSERT_TRUE(m.ok()) << m.error().message();
  ASSERT_EQ(m->regions().size(), 2u);
  EXPECT_EQ(m->regions()[0].end(), kMmioHoleStart);
  EXPECT_EQ(m->regions()[1].guest_phys, kHighMemoryStart);
  EXPECT_EQ(m->regions()[1].size, (4ull << 30) - kMmioHoleStart);
  EXPECT_EQ(m->host_address(kMmioHoleStart, 1), nullptr) << "the hole is not RAM";
}

TEST(GuestMemory, VmmWritesAreTrackedForMigrationAndTakenOnce) {
  Result<GuestMemory> m = GuestMemory::create(64 << 20);
  ASSERT_TRUE(m.ok());
  std::vector<std::vector<uint64_t>> bits(1, std::vector<uint64_t>((64 << 20) / kPageSize / 64));
  m->take_vmm_dirty(bits);
  for (uint64_t w : bits[0]) EXPECT_EQ(w, 0u) << "nothing written yet";
  uint32_t value = 0x12345678;
  ASSERT_TRUE(m->write(5 * kPageSize + 4094, &value, sizeof value).ok());  // straddles 5 and 6
  ASSERT_TRUE(m->fill(130 * kPageSize, 0xff, 10).ok());
  m->take_vmm_dirty(bits);
  EXPECT_EQ(bits[0][0], (1ull << 5) | (1ull << 6));
  EXPECT_EQ(bits[0][2], 1ull << 2);  // page 130
  std::vector<std::vector<uint64_t>> again(1, std::vector<uint64_t>(bits[0].size()));
  m->take_vmm_dirty(again);
  for (uint64_t w : again[0]) EXPECT_EQ(w, 0u) << "taking clears";
  EXPECT_FALSE(m->write(64 << 20, &value, sizeof value).ok()) << "outside RAM";
}

}  // namespace
}  // namespace vmctl::vmm
