// `vmctl run` end to end: real KVM, the project's test guests, the real binary.
#include <signal.h>

#include <gtest/gtest.h>

#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

TEST(Run, HeartbeatGuestPrintsSteadyHeartbeatsAndExitsWithItsStatus) {
  VmctlProcess vm(
      {"run", "--kernel", guest_path("heartbeat.elf"), "--cmdline", "hb_ms=50 exit_after=5"});
  ASSERT_TRUE(vm.wait_for_line("^heartbeat: boot cpus=1", 60s)) << vm.out() << vm.err();
  for (int i = 1; i <= 5; ++i) {
    ASSERT_TRUE(vm.wait_for_line("^HB " + std::to_string(i) + "\\b", 30s)) << vm.out() << vm.err();
  }
  EXPECT_EQ(vm.wait_exit(30s), 0) << vm.err();
  EXPECT_EQ(vm.count_lines("^HB 6\\b"), 0u) << "exit_after=5 must stop after the fifth heartbeat";
}

TEST(Run, DebugExitStatusBecomesTheExitCode) {
  VmctlProcess vm({"run", "--kernel", guest_path("heartbeat.elf"), "--cmdline", "hb_ms=50"});
  ASSERT_TRUE(vm.wait_for_line("^HB 1\\b", 60s)) << vm.out() << vm.err();
  vm.send("exit 7\n");
  EXPECT_EQ(vm.wait_exit(30s), 7) << vm.out() << vm.err();
  EXPECT_NE(vm.err().find("guest exited with status 7"), std::string::npos) << vm.err();
}

TEST(Run, SerialInputReachesTheGuest) {
  VmctlProcess vm({"run", "--kernel", guest_path("heartbeat.elf"), "--cmdline", "hb_ms=50"});
  ASSERT_TRUE(vm.wait_for_line("^HB 1\\b", 60s)) << vm.out() << vm.err();
  vm.send("hello from the host\n");
  EXPECT_TRUE(vm.wait_for_line("^RX hello from the host$", 30s)) << vm.out();
  vm.send("exit 0\n");
  EXPECT_EQ(vm.wait_exit(30s), 0);
}

TEST(Run, TwoVcpusStartThroughInitSipi) {
  VmctlProcess vm({"run", "--kernel", guest_path("heartbeat.elf"), "--cpus", "2", "--cmdline",
                   "hb_ms=50 smp=1 exit_after=2"});
  ASSERT_TRUE(vm.wait_for_line("^heartbeat: boot cpus=2", 60s)) << vm.out() << vm.err();
  EXPECT_TRUE(vm.wait_for_line("^CPU 1 online", 60s)) << vm.out() << vm.err();
  EXPECT_TRUE(vm.wait_for_line("^SMP: 2 CPUs online", 60s)) << vm.out() << vm.err();
  EXPECT_EQ(vm.wait_exit(60s), 0) << vm.out() << vm.err();
}

TEST(Run, DirtierRewritesMemoryFromRing3WithoutMismatches) {
  VmctlProcess vm({"run", "--kernel", guest_path("dirtier.elf"), "--memory", "256M", "--cmdline",
                   "mib=32 rate=0 hb_ms=100 exit_after=10"});
  ASSERT_TRUE(vm.wait_for_line("^dirtier: region=", 60s)) << vm.out() << vm.err();
  ASSERT_EQ(vm.wait_exit(120s), 0) << vm.out() << vm.err();
  EXPECT_EQ(vm.count_lines("MISMATCH"), 0u) << vm.out();
  EXPECT_TRUE(vm.wait_for_line("^HB 10 .*mismatches=0", 1s)) << vm.out();
  // The guest must actually have dirtied memory: some heartbeat reports a non-zero total.
  EXPECT_TRUE(vm.wait_for_line("total=[1-9]", 1s)) << vm.out();
}

TEST(Run, MultibootGuestBootsWithItsCommandLine) {
  VmctlProcess vm({"run", "--kernel", guest_path("heartbeat-multiboot.elf"), "--cmdline",
                   "hb_ms=50 exit_after=2"});
  ASSERT_TRUE(vm.wait_for_line("^heartbeat: boot cpus=1 protocol=multiboot .*exit_after=2", 60s))
      << vm.out() << vm.err();
  EXPECT_EQ(vm.wait_exit(60s), 0) << vm.out() << vm.err();
  EXPECT_EQ(vm.count_lines("^HB 2\\b"), 1u) << vm.out();
}

TEST(Run, PvhGuestSeesItsMemoryMap) {
  VmctlProcess vm({"run", "--kernel", guest_path("heartbeat.elf"), "--memory", "96M", "--cmdline",
                   "hb_ms=50 exit_after=1"});
  EXPECT_TRUE(vm.wait_for_line("^heartbeat: boot cpus=1 protocol=pvh ram=96MiB", 60s))
      << vm.out() << vm.err();
  EXPECT_EQ(vm.wait_exit(60s), 0) << vm.out() << vm.err();
}

TEST(Run, KvmInternalErrorIsReportedWithVcpuAndRip) {
  VmctlProcess vm({"run", "--kernel", guest_path("heartbeat.elf"), "--cmdline", "hb_ms=50"});
  ASSERT_TRUE(vm.wait_for_line("^HB 1\\b", 60s)) << vm.out() << vm.err();
  vm.send("crash\n");
  EXPECT_EQ(vm.wait_exit(60s), 1) << vm.out() << vm.err();
  std::string err = vm.err();
  EXPECT_NE(err.find("vCPU 0"), std::string::npos) << err;
  EXPECT_NE(err.find("RIP 0xe0000000"), std::string::npos) << err;
}

TEST(Run, DemoGuestBootsWithNoArgumentsAndCtrlCStopsIt) {
  VmctlProcess vm({"run"});
  ASSERT_TRUE(vm.wait_for_line("^HB 1\\b", 60s)) << vm.out() << vm.err();
  vm.signal(SIGINT);
  EXPECT_EQ(vm.wait_exit(30s), 0) << vm.err();
  EXPECT_NE(vm.err().find("stopped"), std::string::npos) << vm.err();
}

TEST(Run, StatsFlagPrintsPerVcpuExitCounters) {
  VmctlProcess vm({"run", "--stats", "--kernel", guest_path("heartbeat.elf"), "--cmdline",
                   "hb_ms=50 exit_after=2"});
  ASSERT_EQ(vm.wait_exit(60s), 0) << vm.out() << vm.err();
  EXPECT_NE(vm.err().find("exit statistic"), std::string::npos) << vm.err();
  EXPECT_NE(vm.err().find("io_exits"), std::string::npos) << vm.err();
}

// Bad input: one clear line on stderr and exit code 2.
struct BadInput {
  const char* name;
  std::vector<std::string> args;
  const char* message;
  friend void PrintTo(const BadInput& bad, std::ostream* os) { *os << bad.name; }
};

class RunRejects : public ::testing::TestWithParam<BadInput> {};

TEST_P(RunRejects, WithOneClearLineAndExitCode2) {
  const BadInput& bad = GetParam();
  VmctlProcess vm(bad.args);
  EXPECT_EQ(vm.wait_exit(30s), 2) << vm.err();
  std::string err = vm.err();
  EXPECT_NE(err.find(bad.message), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "exactly one line: " << err;
}

std::string garbage_file() {
  std::string path = ::testing::TempDir() + "/garbage-kernel";
  FILE* f = fopen(path.c_str(), "w");
  for (int i = 0; i < 4096; ++i) fputc(i * 7 % 251, f);
  fclose(f);
  return path;
}

INSTANTIATE_TEST_SUITE_P(
    Run, RunRejects,
    ::testing::Values(
        BadInput{
            "MissingKernel", {"run", "--kernel", "/nonexistent/vmlinuz"}, "/nonexistent/vmlinuz"},
        BadInput{"GarbageKernel", {"run", "--kernel", garbage_file()}, "not a bootable kernel"},
        BadInput{"TooLittleMemory", {"run", "--memory", "1M"}, "too small"},
        BadInput{"BadSize", {"run", "--memory", "12Q"}, "bad size '12Q'"},
        BadInput{"ZeroCpus", {"run", "--cpus", "0"}, "--cpus 0 is out of range"}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace vmctl::testing
