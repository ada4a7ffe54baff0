// vmctl's own local APIC (`--irqchip user`, vmm/vlapic/): the apictest guest's checks run in full
// on any host, ISR and PPR included (no SKIP: the model keeps in-service vectors as the SDM says,
// whatever the host's KVM does), in xAPIC and x2APIC mode with every timer mode; SMP guests start
// their APs through INIT/SIPI and keep beating; and what the VM's state cannot carry yet is
// refused with a clear error instead of a wrong snapshot.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <regex>
#include <thread>

#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

TEST(UserIrqchip, ApictestPassesEveryCheckWithoutSkipsInBothModes) {
  VmctlProcess vm(
      {"run", "--irqchip", "user", "--kernel", guest_path("apictest.elf"), "--memory", "64M"});
  EXPECT_EQ(vm.wait_exit(180s), 0) << vm.out() << vm.err();
  std::string out = vm.out();
  std::smatch m;
  EXPECT_FALSE(std::regex_search(out, m, std::regex("FAIL [^\r\n]*"))) << m.str() << "\n" << out;
  EXPECT_TRUE(std::regex_search(out, m, std::regex("APICTEST done pass=[1-9][0-9]* fail=0 skip=0")))
      << out;
  EXPECT_NE(out.find("in-service tracking: yes"), std::string::npos) << out;
  for (const char* mode : {"xapic", "x2apic"}) {
    EXPECT_NE(out.find(std::string("NEST ") + mode + " nested raise=cr8"), std::string::npos)
        << mode << ":\n"
        << out;
    for (const char* timer : {"periodic", "oneshot", "deadline"}) {
      EXPECT_NE(out.find(std::string("TIMER ") + mode + " timer " + timer + " period:"),
                std::string::npos)
          << mode << " " << timer << ":\n"
          << out;
    }
  }
}

TEST(UserIrqchip, SmpGuestStartsItsApsAndBeats) {
  VmctlProcess vm({"run", "--irqchip", "user", "--cpus", "3", "--memory", "64M", "--cmdline",
                   "hb_ms=20 exit_after=15"});
  EXPECT_EQ(vm.wait_exit(120s), 0) << vm.out() << vm.err();
  std::string out = vm.out();
  EXPECT_NE(out.find("SMP: 3 CPUs online"), std::string::npos) << out;
  EXPECT_GE(vm.count_lines("^HB [0-9]+"), 15u) << out;
}

TEST(UserIrqchip, ASnapshotIsRefusedWithWhatToDo) {
  std::string sock = ::testing::TempDir() + "/" + std::to_string(getpid()) + "-user-irqchip.sock";
  std::string file = ::testing::TempDir() + "/" + std::to_string(getpid()) + "-user-irqchip.snap";
  VmctlProcess vm(
      {"run", "--irqchip", "user", "--memory", "64M", "--cmdline", "hb_ms=20", "--control", sock});
  ASSERT_TRUE(vm.wait_for_line("^HB 3", 60s)) << vm.out() << vm.err();
  VmctlProcess snap({"snapshot", "--control", sock, file});
  EXPECT_NE(snap.wait_exit(60s), 0);
  EXPECT_NE(snap.err().find("--irqchip kernel"), std::string::npos) << snap.err();
  EXPECT_NE(access(file.c_str(), F_OK), 0) << "no file may be left behind";
  // The VM goes on beating after the refusal.
  size_t beats = vm.count_lines("^HB [0-9]+");
  std::this_thread::sleep_for(300ms);
  EXPECT_GT(vm.count_lines("^HB [0-9]+"), beats) << vm.out();
  vm.signal(SIGTERM);
  vm.wait_exit(30s);
  unlink(sock.c_str());
}

}  // namespace
}  // namespace vmctl::testing
