#include "vmm/cpuid.h"

#include <gtest/gtest.h>

namespace vmctl::vmm {
namespace {

std::vector<CpuidEntry> host_like_table() {
  return {
      {0x1, 0, 0, 0x000906ea, 0x00100800, (1u << 5) | (1u << 0), 0},
      {0x4, 0, 1, 0x1c004121, 0, 0, 0},
      {0x4, 1, 1, 0x1c004122, 0, 0, 0},
      {0x4, 4, 1, 0x00000000, 0, 0, 0},  // end of cache enumeration
      {0xb, 0, 1, 1, 2, 0x100, 7},
      {0xb, 1, 1, 4, 8, 0x201, 7},
      {0xb, 2, 1, 0, 0, 2, 7},
      {0x80000001, 0, 0, 0, 0, (1u << 2) | 1u, 0},
  };
}

TEST(FilterCpuid, SetsApicIdAndProcessorCountInLeaf1) {
  auto table = filter_cpuid(host_like_table(), 3, CpuTopology{4});
  const CpuidEntry* leaf1 = find_cpuid(table, 0x1);
  ASSERT_NE(leaf1, nullptr);
  EXPECT_EQ(leaf1->ebx >> 24, 3u);
  EXPECT_EQ((leaf1->ebx >> 16) & 0xff, 4u);
  EXPECT_TRUE(leaf1->edx & (1u << 28)) << "HTT must be set with more than one logical CPU";
  EXPECT_TRUE(leaf1->ecx & (1u << 31)) << "the hypervisor bit tells the guest it is virtual";
}

TEST(FilterCpuid, HidesNestedVirtualizationBecauseItsStateIsNotMigrated) {
  auto table = filter_cpuid(host_like_table(), 0, CpuTopology{1});
  EXPECT_FALSE(find_cpuid(table, 0x1)->ecx & (1u << 5)) << "VMX";
  EXPECT_TRUE(find_cpuid(table, 0x1)->ecx & 1u) << "other bits are kept";
  EXPECT_FALSE(find_cpuid(table, 0x80000001)->ecx & (1u << 2)) << "SVM";
  EXPECT_FALSE(find_cpuid(table, 0x1)->edx & (1u << 28)) << "no HTT with one CPU";
}

TEST(FilterCpuid, DescribesOneCorePerVcpuInTopologyLeaves) {
  auto table = filter_cpuid(host_like_table(), 2, CpuTopology{3});
  const CpuidEntry* smt = find_cpuid(table, 0xb, 0);
  const CpuidEntry* core = find_cpuid(table, 0xb, 1);
  const CpuidEntry* end = find_cpuid(table, 0xb, 2);
  ASSERT_TRUE(smt && core && end);
  EXPECT_EQ(smt->edx, 2u);
  EXPECT_EQ(smt->ebx, 1u);
  EXPECT_EQ((smt->ecx >> 8) & 0xff, 1u);
  EXPECT_EQ(core->eax, 2u) << "3 CPUs need 2 APIC ID bits";
  EXPECT_EQ(core->ebx, 3u);
  EXPECT_EQ((core->ecx >> 8) & 0xff, 2u);
  EXPECT_EQ((end->ecx >> 8) & 0xff, 0u);
}

TEST(FilterCpuid, ReportsCoresPerPackageInCacheLeaves) {
  auto table = filter_cpuid(host_like_table(), 0, CpuTopology{2});
  EXPECT_EQ(find_cpuid(table, 0x4, 0)->eax >> 26, 1u);
  EXPECT_EQ(find_cpuid(table, 0x4, 1)->eax >> 26, 1u);
  EXPECT_EQ(find_cpuid(table, 0x4, 4)->eax, 0u) << "the terminating subleaf stays empty";
}

}  // namespace
}  // namespace vmctl::vmm
