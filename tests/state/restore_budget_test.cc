// The limits a restore holds a stream's header to, against given host facts.
#include "state/restore_budget.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>

namespace vmctl::state {
namespace {

constexpr uint64_t kGiB = 1ull << 30;
const HostMemory kHost{8 * kGiB, 2 * kGiB};

std::string message(const Status& s) {
  return s.ok() ? "" : s.error().message();
}

TEST(RestoreBudget, GuestUpToTheHostsRamFits) {
  EXPECT_TRUE(check_guest_budget("s", 8 * kGiB, 4, RestoreBudget{}, kHost, 288).ok())
      << "guest RAM is allocated as it is touched: MemAvailable is not the bound";
}

TEST(RestoreBudget, GuestLargerThanTheHostIsRefused) {
  EXPECT_EQ(message(check_guest_budget("stream s", 9 * kGiB, 1, RestoreBudget{}, kHost, 0)),
            "stream s: the guest has 9 GiB of RAM, more than this host has in all (8 GiB): "
            "restore it on a larger host");
}

TEST(RestoreBudget, ConfiguredMemoryLimitIsHonouredButNeverRaisesTheHosts) {
  RestoreBudget budget;
  budget.max_guest_memory = 1 * kGiB;
  EXPECT_EQ(message(check_guest_budget("s", 2 * kGiB, 1, budget, kHost, 0)),
            "s: the guest has 2 GiB of RAM, more than this host allows a guest (1 GiB): restore "
            "it on a larger host");
  budget.max_guest_memory = 64 * kGiB;
  EXPECT_NE(message(check_guest_budget("s", 9 * kGiB, 1, budget, kHost, 0))
                .find("more than this host has in all (8 GiB)"),
            std::string::npos);
}

TEST(RestoreBudget, VcpusAreBoundedByVmctlKvmAndTheBudget) {
  EXPECT_EQ(message(check_guest_budget("s", kGiB, 255, RestoreBudget{}, kHost, 0)),
            "s: the guest has 255 vCPUs, more than 254 (vmctl's limit)");
  EXPECT_EQ(message(check_guest_budget("s", kGiB, 9, RestoreBudget{}, kHost, 8)),
            "s: the guest has 9 vCPUs, more than 8 (what this host's KVM allows)");
  RestoreBudget budget;
  budget.max_vcpus = 2;
  EXPECT_EQ(message(check_guest_budget("s", kGiB, 3, budget, kHost, 8)),
            "s: the guest has 3 vCPUs, more than 2 (what this host allows a guest)");
  EXPECT_EQ(message(check_guest_budget("s", kGiB, 0, budget, kHost, 8)),
            "s: the header gives the guest no vCPUs: corrupt");
}

TEST(RestoreBudget, MemoryMustBeWholePages) {
  EXPECT_EQ(message(check_guest_budget("s", 0, 1, RestoreBudget{}, kHost, 0)),
            "s: the header gives the guest 0 bytes of RAM, not a whole number of pages: corrupt");
  EXPECT_FALSE(check_guest_budget("s", kGiB + 1, 1, RestoreBudget{}, kHost, 0).ok());
}

TEST(HostMemory, ReadsMemTotalAndMemAvailable) {
  std::string path = ::testing::TempDir() + "/meminfo-" + std::to_string(getpid());
  {
    std::ofstream out(path);
    out << "MemTotal:       24683652 kB\nMemFree:         1000 kB\nMemAvailable:   22402500 kB\n";
  }
  Result<HostMemory> m = read_host_memory(path);
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_EQ(m->total, 24683652ull << 10);
  EXPECT_EQ(m->available, 22402500ull << 10);
  {
    std::ofstream out(path);
    out << "garbage\n";
  }
  EXPECT_FALSE(read_host_memory(path).ok());
  unlink(path.c_str());
  Result<HostMemory> real = read_host_memory();
  ASSERT_TRUE(real.ok());
  EXPECT_GT(real->total, 0u);
}

}  // namespace
}  // namespace vmctl::state
