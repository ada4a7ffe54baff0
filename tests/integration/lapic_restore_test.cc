// Restore refuses local APIC records that no real APIC could be in, with one line saying what is
// wrong: the golden snapshot with its LAPIC record edited by hand.
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include <capnp/message.h>

#include "state/stream.h"
#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;
namespace ps = proto::state;

// Writes the golden snapshot to `path` with `edit` applied to its LAPIC record.
void write_edited(const std::string& path, const std::function<void(ps::Lapic::Builder)>& edit) {
  auto source = state::FileSource::open(VMCTL_SOURCE_DIR "/tests/data/heartbeat-v1.0.snap");
  ASSERT_TRUE(source.ok());
  state::RecordReader reader(**source, "golden");
  auto sink = state::FileSink::create(path);
  ASSERT_TRUE(sink.ok());
  state::RecordWriter writer(**sink, state::WriterOptions{1});
  while (true) {
    auto record = reader.next();
    ASSERT_TRUE(record.ok());
    if (!*record) break;
    auto msg = (*record)->message();
    capnp::MallocMessageBuilder b;
    b.setRoot(msg->getRoot<capnp::AnyStruct>());
    if ((*record)->type == ps::RecordType::LAPIC) edit(b.getRoot<ps::Lapic>());
    ASSERT_TRUE(writer.write((*record)->type, b, (*record)->compressed).ok());
  }
  ASSERT_TRUE((*sink)->commit().ok());
}

std::string restore_error(const std::function<void(ps::Lapic::Builder)>& edit) {
  std::string path = ::testing::TempDir() + std::to_string(getpid()) + "-lapic.snap";
  write_edited(path, edit);
  VmctlProcess p({"restore", path});
  std::optional<int> code = p.wait_exit(60s);
  unlink(path.c_str());
  std::string err = p.err();
  EXPECT_EQ(code, 2) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line: " << err;
  return err;
}

TEST(LapicRestore, UneditedGoldenRecordRestores) {
  std::string path = ::testing::TempDir() + std::to_string(getpid()) + "-lapic-ok.snap";
  write_edited(path, [](ps::Lapic::Builder) {});
  VmctlProcess p({"restore", path});
  EXPECT_TRUE(p.wait_for_line("^HB [0-9]+", 30s)) << p.err();
  p.send("exit 0\n");
  EXPECT_EQ(p.wait_exit(30s), 0);
  unlink(path.c_str());
}

// In-service vectors as an APIC three handlers deep records them. Where KVM honours them (it may
// derive PPR from them only once the vCPU runs: host-info probes by running one), it takes
// them on restore, gives them back in the next snapshot, and they hold lower priority classes back
// for real (the golden guest's timer is vector 0x40, class 4). Where it does not (a paravirtual
// KVM that keeps no in-service vectors: its PPR ignores ISR), restore must refuse with one line
// instead of running a guest that would take interrupts its handlers still block. Either way the
// outcome is checked; which one this host gave is printed.
void set_in_service(ps::Lapic::Builder l, std::initializer_list<unsigned> vectors) {
  auto isr = l.getIsr();  // four 64-bit words, bit n = vector n
  for (unsigned v : vectors) isr.set(v / 64, isr[v / 64] | (uint64_t{1} << (v % 64)));
  unsigned highest = std::max(vectors);
  l.setPpr(l.getTpr() >= (highest & 0xf0u) ? l.getTpr() : (highest & 0xf0u));
}

// What `vmctl host-info` found by giving a vCPU an in-service vector: 1 kept, 0 ignored.
int host_keeps_in_service_vectors() {
  VmctlProcess info({"host-info", "--json"});
  EXPECT_EQ(info.wait_exit(30s), 0) << info.err();
  auto j = nlohmann::json::parse(info.out(), nullptr, false);
  return j.is_discarded() ? -1 : j["kvm"].value("lapic_keeps_in_service_vectors", -1);
}

// Waits for `restore --control sock` to offer its socket; false when it exited first, after
// checking that it refused with the one-line in-service message. Either outcome must agree with
// the host report's own probe.
bool restored_or_refused(VmctlProcess& vm, const std::string& sock) {
  int keeps = host_keeps_in_service_vectors();
  EXPECT_NE(keeps, -1) << "host-info could not tell whether KVM keeps in-service vectors";
  for (int i = 0; i < 300 && access(sock.c_str(), F_OK) != 0; ++i) {
    if (auto code = vm.wait_exit(100ms)) {
      std::string err = vm.err();
      EXPECT_EQ(*code, 2) << err;
      // The refusal is the last line (a TSC-rate warning about the golden file may come first).
      std::string last = err.substr(err.rfind('\n', err.size() - 2) + 1);
      EXPECT_NE(last.find("does not honour the snapshot's in-service vectors"), std::string::npos)
          << err;
      std::cerr << "NOTE: this host's KVM ignores restored in-service vectors; restore refused: "
                << last;
      EXPECT_EQ(keeps, 0) << "refused although host-info says KVM keeps in-service vectors";
      return false;
    }
  }
  EXPECT_EQ(access(sock.c_str(), F_OK), 0) << "restore neither came up nor refused: " << vm.err();
  EXPECT_EQ(keeps, 1) << "restored although host-info says KVM ignores in-service vectors";
  return true;
}

TEST(LapicRestore, InServiceVectorsSurviveRestoreAndMaskLowerClassesOrAreRefused) {
  std::string base = ::testing::TempDir() + std::to_string(getpid());
  std::string edited = base + "-isr.snap", again = base + "-isr-again.snap",
              sock = base + "-isr.sock";
  write_edited(edited, [](ps::Lapic::Builder l) { set_in_service(l, {0x51, 0x61, 0x71}); });
  VmctlProcess vm({"restore", "--paused", "--control", sock, edited});
  if (restored_or_refused(vm, sock)) {
    VmctlProcess snap({"snapshot", "--control", sock, again});
    ASSERT_EQ(snap.wait_exit(60s), 0) << snap.err();
    VmctlProcess inspect({"inspect", "--json", again});
    ASSERT_EQ(inspect.wait_exit(60s), 0) << inspect.err();
    auto lapic = nlohmann::json::parse(inspect.out())["lapics"][0];
    EXPECT_EQ(lapic["isr"], nlohmann::json({0x51, 0x61, 0x71})) << lapic;
    EXPECT_EQ(lapic["ppr_recorded"], "0x70") << "KVM's own PPR: " << lapic;
    VmctlProcess resume({"resume", "--control", sock});
    ASSERT_EQ(resume.wait_exit(60s), 0) << resume.err();
    std::this_thread::sleep_for(2s);  // the unedited snapshot beats within half a second
    EXPECT_EQ(vm.count_lines("^HB "), 0u) << "PPR 0x70 must hold the class-4 timer back";
    vm.signal(SIGKILL);
    vm.wait_exit(30s);
  }
  unlink(edited.c_str());
  unlink(again.c_str());
  unlink(sock.c_str());  // a killed process leaves its control socket behind
}

TEST(LapicRestore, InServiceVectorBelowTheTimerClassLetsItThroughOrIsRefused) {
  std::string base = ::testing::TempDir() + std::to_string(getpid());
  std::string path = base + "-isr-low.snap", sock = base + "-isr-low.sock";
  write_edited(path, [](ps::Lapic::Builder l) { set_in_service(l, {0x31}); });
  VmctlProcess vm({"restore", "--control", sock, path});
  if (restored_or_refused(vm, sock)) {
    EXPECT_TRUE(vm.wait_for_line("^HB [0-9]+", 30s)) << vm.out() << vm.err();
    vm.signal(SIGKILL);
    vm.wait_exit(30s);
  }
  unlink(path.c_str());
  unlink(sock.c_str());
}

TEST(LapicRestore, PprThatDoesNotFollowFromTprAndIsrIsRefused) {
  std::string err = restore_error([](ps::Lapic::Builder l) { l.setPpr(0x90); });
  EXPECT_NE(err.find("PPR"), std::string::npos) << err;
}

TEST(LapicRestore, InServiceVectorBelow16IsRefused) {
  std::string err = restore_error([](ps::Lapic::Builder l) { l.getIsr().set(0, 1u << 5); });
  EXPECT_NE(err.find("vector 5"), std::string::npos) << err;
}

TEST(LapicRestore, X2apicModeWithAnXapicBaseIsRefused) {
  std::string err = restore_error([](ps::Lapic::Builder l) { l.setMode(ps::ApicMode::X2APIC); });
  EXPECT_NE(err.find("mode"), std::string::npos) << err;
}

}  // namespace
}  // namespace vmctl::testing
