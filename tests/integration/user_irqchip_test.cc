// vmctl's own local APIC (`--irqchip user`, vmm/vlapic/): the apictest guest's checks run in full
// on any host, ISR and PPR included (no SKIP: the model keeps in-service vectors as the SDM says,
// whatever the host's KVM does), in xAPIC and x2APIC mode with every timer mode; SMP guests start
// their APs through INIT/SIPI and keep beating; and one snapshot restores into either LAPIC.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <iostream>
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

// One snapshot inside apictest's nest (0x51, 0x61, 0x71 in service, 0x91 held in IRR behind TPR
// 0x90), taken under one LAPIC implementation and restored in a new process under the other (or
// the same): the record is architectural, so either can finish the nest, in order, with the held
// vector delivered once.
struct CrossCase {
  const char* from;  // --irqchip of the run
  const char* to;    // --irqchip of the restore
  const char* mode;
  const char* timer;
};

void PrintTo(const CrossCase& c, std::ostream* os) {
  *os << c.from << " to " << c.to << ", " << c.mode << ", " << c.timer << " timer";
}

class CrossImplementation : public ::testing::TestWithParam<CrossCase> {};

TEST_P(CrossImplementation, ASnapshotInsideTheNestFinishesUnderEitherLapic) {
  const CrossCase& c = GetParam();
  const std::string base = ::testing::TempDir() + "/" + std::to_string(getpid()) + "-cross";
  const std::string sock = base + ".sock", file = base + ".snap";
  std::string hold;
  {
    VmctlProcess vm({"run", "--irqchip", c.from, "--kernel", guest_path("apictest.elf"), "--memory",
                     "64M", "--cmdline", std::string("mode=") + c.mode + " hold=1 timer=" + c.timer,
                     "--control", sock});
    auto line = vm.wait_for_line("^HOLD ", 120s);
    ASSERT_TRUE(line) << vm.out() << vm.err();
    hold = *line;
    std::this_thread::sleep_for(300ms);
    VmctlProcess snap({"snapshot", "--stop", "--control", sock, file});
    ASSERT_EQ(snap.wait_exit(60s), 0) << snap.err();
    vm.signal(SIGKILL);
    vm.wait_exit(30s);
    unlink(sock.c_str());
  }
  EXPECT_NE(hold.find("irr=[91]"), std::string::npos) << hold;
  EXPECT_NE(hold.find("tpr=0x90 ppr=0x90"), std::string::npos) << hold;
  // vmctl's LAPIC keeps the nest in ISR, whatever the host's KVM does.
  if (std::string(c.from) == "user") {
    EXPECT_NE(hold.find("isr=[51 61 71]"), std::string::npos) << hold;
  }
  VmctlProcess restored({"restore", "--irqchip", c.to, file});
  std::this_thread::sleep_for(500ms);
  restored.send("release\n");
  std::optional<int> rc = restored.wait_exit(120s);
  std::string out = restored.out();
  EXPECT_NE(out.find("RELEASE after"), std::string::npos) << out << restored.err();
  EXPECT_NE(out.find("raise=" + std::string(std::string(c.mode) == "x2apic" ? "msr" : "mmio") +
                     " lower=cr8 order: +51 +61 +71 +91 -91 -71 -61 -51"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find(std::string("TIMER ") + c.mode + " timer " + c.timer + " during hold:"),
            std::string::npos)
      << out;
  // Into the in-kernel LAPIC of a host whose KVM shows the guest no ISR (this CI's paravirtual
  // KVM: the nest retires in order, but ISR and PPR read empty), the guest's ISR readings fail;
  // every other check must pass.
  size_t host_isr_failures = 0, other_failures = 0;
  std::regex fail_line("FAIL [^\r\n]*");
  std::regex host_isr("FAIL (xapic|x2apic) (in handler|after EOI of) [0-9a-f]+: ISR \\[none\\] .*");
  for (auto it = std::sregex_iterator(out.begin(), out.end(), fail_line);
       it != std::sregex_iterator(); ++it) {
    bool host = std::string(c.to) == "kernel" && std::regex_match(it->str(), host_isr);
    ++(host ? host_isr_failures : other_failures);
  }
  EXPECT_EQ(other_failures, 0u) << out;
  if (host_isr_failures) {
    std::cerr << "NOTE: this host's in-kernel LAPIC shows the guest no in-service vectors ("
              << host_isr_failures << " ISR readings failed); the nest still retired in order\n";
  } else {
    EXPECT_EQ(rc, 0) << out << restored.err();
  }
  unlink(file.c_str());
}

INSTANTIATE_TEST_SUITE_P(Pairs, CrossImplementation,
                         ::testing::Values(CrossCase{"user", "user", "xapic", "periodic"},
                                           CrossCase{"user", "kernel", "x2apic", "deadline"},
                                           CrossCase{"kernel", "user", "xapic", "oneshot"},
                                           CrossCase{"kernel", "user", "x2apic", "deadline"}),
                         [](const auto& info) {
                           return std::string(info.param.from) + "_to_" + info.param.to + "_" +
                                  info.param.mode + "_" + info.param.timer;
                         });

}  // namespace
}  // namespace vmctl::testing
