// Local APIC fidelity end to end with the apictest guest (tests/guests/apictest.c): its own checks
// in xAPIC and x2APIC mode, and a snapshot taken while it holds a vector pending behind the TPR
// (inside three nested handlers) restored in a new process, where the guest must finish the nest
// correctly, with its timer neither losing nor doubling ticks.
//
// Some hosts' KVM does not keep in-service vectors in ISR while a handler runs (see the guest's
// PROBE line). There the guest skips its ISR and PPR checks and says why; these tests then still
// check everything else (nesting order, the pending vector held by the TPR and delivered once, the
// TPR aliases, the timers, the snapshot's IRR/TPR/PPR) and print the limitation loudly.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/" + std::to_string(getpid()) + "-" + name;
}

// Fails the test on any FAIL line. `from_boot`: the output starts at boot, so it has the guest's
// PROBE line on ISR tracking (a restored guest's output starts where the snapshot was taken).
void check_guest_output(const std::string& out, bool from_boot) {
  std::smatch m;
  EXPECT_FALSE(std::regex_search(out, m, std::regex("FAIL [^\r\n]*"))) << m.str() << "\n" << out;
  EXPECT_TRUE(std::regex_search(out, m, std::regex("APICTEST done pass=[0-9]+ fail=0 skip=")))
      << out;
  if (from_boot && out.find("in-service tracking: yes") == std::string::npos) {
    EXPECT_NE(out.find("in-service tracking: no"), std::string::npos) << out;
    std::cerr << "NOTE: this host's KVM does not keep in-service vectors in ISR; the guest's ISR "
                 "and PPR checks were skipped (see its PROBE line)\n";
    ::testing::Test::RecordProperty("isr_tracking", "absent on this host");
  }
}

TEST(ApicGuest, EveryScenarioPassesInXapicAndX2apicMode) {
  VmctlProcess vm({"run", "--kernel", guest_path("apictest.elf"), "--memory", "64M"});
  EXPECT_EQ(vm.wait_exit(120s), 0) << vm.out() << vm.err();
  std::string out = vm.out();
  check_guest_output(out, /*from_boot=*/true);
  for (const char* mode : {"xapic", "x2apic"}) {
    EXPECT_NE(out.find(std::string("NEST ") + mode + " nested raise=cr8"), std::string::npos)
        << mode << " nested scenario did not run:\n"
        << out;
    for (const char* timer : {"periodic", "oneshot", "deadline"})
      EXPECT_NE(out.find(std::string("TIMER ") + mode + " timer " + timer + " period:"),
                std::string::npos)
          << mode << " " << timer << " timer did not run:\n"
          << out;
  }
}

struct HoldCase {
  const char* mode;
  const char* timer;
};

void PrintTo(const HoldCase& c, std::ostream* os) {
  *os << c.mode << " with a " << c.timer << " timer";
}

class ApicHold : public ::testing::TestWithParam<HoldCase> {};

// vmctl inspect --json of `file`: the one vCPU's LAPIC.
nlohmann::json inspect_lapic(const std::string& file) {
  VmctlProcess p({"inspect", "--json", file});
  EXPECT_EQ(p.wait_exit(60s), 0) << p.err();
  auto j = nlohmann::json::parse(p.out(), nullptr, false);
  if (j.is_discarded() || !j.contains("lapics") || j["lapics"].empty()) {
    ADD_FAILURE() << "no LAPIC in inspect output: " << p.out();
    return {};
  }
  return j["lapics"][0];
}

TEST_P(ApicHold, SnapshotInsideTheNestRestoresInANewProcess) {
  const HoldCase& c = GetParam();
  std::string sock = temp_path("apic.sock"), file = temp_path("apic.snap");
  std::string cmdline = std::string("mode=") + c.mode + " hold=1 timer=" + c.timer;
  std::string hold;
  {
    VmctlProcess vm({"run", "--kernel", guest_path("apictest.elf"), "--memory", "64M", "--cmdline",
                     cmdline, "--control", sock});
    auto line = vm.wait_for_line("^HOLD ", 120s);
    ASSERT_TRUE(line) << vm.out() << vm.err();
    hold = *line;
    // Everything before the hold ran in this process: its checks count in the final tally.
    std::string before = vm.out();
    std::smatch m;
    EXPECT_FALSE(std::regex_search(before, m, std::regex("FAIL [^\r\n]*"))) << m.str() << "\n"
                                                                            << before;
    std::this_thread::sleep_for(300ms);  // let the hold timer tick before the snapshot
    VmctlProcess snap({"snapshot", "--stop", "--control", sock, file});
    ASSERT_EQ(snap.wait_exit(60s), 0) << snap.err();
    vm.signal(SIGKILL);  // the snapshot is all that is left of it
    vm.wait_exit(30s);
    unlink(sock.c_str());  // a killed process leaves its control socket behind
  }
  bool tracked = hold.find("isr=[none]") == std::string::npos;
  EXPECT_NE(hold.find(std::string("mode=") + c.mode), std::string::npos) << hold;
  EXPECT_NE(hold.find("irr=[91]"), std::string::npos) << hold;
  EXPECT_NE(hold.find("tpr=0x90 ppr=0x90"), std::string::npos) << hold;
  if (tracked) {
    EXPECT_NE(hold.find("isr=[51 61 71]"), std::string::npos) << hold;
  }

  // The record holds what the guest saw: the pending vector, the TPR, the PPR derived from them.
  nlohmann::json lapic = inspect_lapic(file);
  EXPECT_EQ(lapic["mode"], std::string(c.mode) == "x2apic" ? "x2APIC" : "xAPIC") << lapic;
  EXPECT_NE(std::find(lapic["irr"].begin(), lapic["irr"].end(), 0x91), lapic["irr"].end()) << lapic;
  EXPECT_EQ(lapic["tpr"], "0x90") << lapic;
  EXPECT_EQ(lapic["ppr_derived"], "0x90") << lapic;
  EXPECT_EQ(lapic["ppr_recorded"], lapic["ppr_derived"]) << lapic;
  if (tracked) {
    nlohmann::json isr = nlohmann::json::array();  // less the timer's 0xe1, if caught mid-tick
    for (const auto& v : lapic["isr"])
      if (v != 0xe1) isr.push_back(v);
    EXPECT_EQ(isr, nlohmann::json({0x51, 0x61, 0x71})) << lapic;
  }
  if (std::string(c.timer) == "deadline") {
    // Armed, or just expired (KVM clears the deadline when it fires) with its tick pending or
    // in service (its handler re-arms it). A host that keeps no in-service vectors shows a tick
    // being handled as neither.
    auto has = [](const nlohmann::json& list, int v) {
      return std::find(list.begin(), list.end(), v) != list.end();
    };
    bool tick_pending = has(lapic["irr"], 0xe1) || has(lapic["isr"], 0xe1);
    if (tracked) {
      EXPECT_TRUE(lapic["timer"]["tsc_deadline"] != 0 || tick_pending) << lapic;
    }
    EXPECT_EQ(lapic["lvt"]["timer"], "0x400e1") << "TSC-deadline mode, vector 0xe1: " << lapic;
  }

  VmctlProcess restored({"restore", file});
  std::this_thread::sleep_for(500ms);  // the hold timer keeps ticking in the new process
  restored.send("release\n");
  EXPECT_EQ(restored.wait_exit(120s), 0) << restored.out() << restored.err();
  std::string out = restored.out();
  EXPECT_NE(out.find("RELEASE after"), std::string::npos) << out;
  EXPECT_NE(out.find(std::string("TIMER ") + c.mode + " timer " + c.timer + " during hold:"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("raise=" + std::string(std::string(c.mode) == "x2apic" ? "msr" : "mmio") +
                     " lower=cr8 order: +51 +61 +71 +91 -91 -71 -61 -51"),
            std::string::npos)
      << out;
  check_guest_output(out, /*from_boot=*/false);
  unlink(file.c_str());
}

INSTANTIATE_TEST_SUITE_P(Modes, ApicHold,
                         ::testing::Values(HoldCase{"xapic", "periodic"},
                                           HoldCase{"x2apic", "deadline"},
                                           HoldCase{"xapic", "oneshot"}),
                         [](const auto& info) {
                           return std::string(info.param.mode) + "_" + info.param.timer;
                         });

}  // namespace
}  // namespace vmctl::testing
