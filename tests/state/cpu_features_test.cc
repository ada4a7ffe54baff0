#include "state/cpu_features.h"

#include <gtest/gtest.h>

namespace vmctl::state {
namespace {

TEST(CpuFeatures, NamesWhatTheHostLacks) {
  std::vector<vmm::CpuidEntry> guest = {{1, 0, 0, 0, 0, (1u << 28) | (1u << 0), 1u << 25},
                                        {7, 0, 1, 0, 1u << 5, 0, 0}};
  std::vector<vmm::CpuidEntry> host = {{1, 0, 0, 0, 0, 1u << 0, 1u << 25}, {7, 0, 1, 0, 0, 0, 0}};
  std::vector<std::string> missing = missing_cpu_features(guest, host);
  EXPECT_EQ(missing, (std::vector<std::string>{"avx", "avx2"}));
  EXPECT_TRUE(missing_cpu_features(host, guest).empty());
}

TEST(CpuFeatures, OsStateAndHypervisorBitsAreNotFeatures) {
  std::vector<vmm::CpuidEntry> guest = {{1, 0, 0, 0, 0, (1u << 27) | (1u << 31), 0}};
  std::vector<vmm::CpuidEntry> host = {{1, 0, 0, 0, 0, 0, 0}};
  EXPECT_TRUE(missing_cpu_features(guest, host).empty());
}

}  // namespace
}  // namespace vmctl::state
