// tests/data/heartbeat-v1.0.snap is a snapshot written by vmctl 0.1.0 (state format 1.0) of the
// heartbeat guest with 32 MiB. Every later version must still read and restore it: a failure
// here means a change broke the compatibility rule in proto/state.capnp.
#include <gtest/gtest.h>

#include "state/lapic.h"
#include "state/stream.h"
#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;
namespace ps = proto::state;

const std::string kGolden = std::string(VMCTL_SOURCE_DIR) + "/tests/data/heartbeat-v1.0.snap";

TEST(GoldenSnapshot, Version1_0IsStillReadRecordByRecord) {
  auto source = state::FileSource::open(kGolden);
  ASSERT_TRUE(source.ok()) << source.error().message();
  state::RecordReader reader(**source, kGolden);
  std::vector<std::string> types;
  while (true) {
    auto r = reader.next();
    ASSERT_TRUE(r.ok()) << r.error().message();
    if (!r.value()) break;
    const state::Record& record = **r;
    types.push_back(state::record_type_name(record.type));
    auto msg = record.message();
    if (record.type == ps::RecordType::HEADER) {
      auto h = msg->getRoot<ps::Header>();
      EXPECT_EQ(h.getFormatMajor(), 1);
      EXPECT_EQ(h.getFormatMinor(), 0);
      EXPECT_EQ(h.getGuest().getMemorySize(), 32u << 20);
      EXPECT_EQ(h.getGuest().getVcpuCount(), 1u);
      EXPECT_EQ(std::string(h.getGuest().getCmdline().cStr()), "hb_ms=100");
    }
    if (record.type == ps::RecordType::LAPIC) {
      state::LapicState lapic = state::from_record(msg->getRoot<ps::Lapic>());
      Status valid = state::validate_lapic(lapic, 0);
      EXPECT_TRUE(valid.ok()) << valid.error().message();
      EXPECT_EQ(lapic.mode, state::ApicMode::kXapic);
      EXPECT_EQ(lapic.lvt_timer & 0xff, 0x40u) << "the heartbeat's timer vector";
    }
  }
  EXPECT_EQ(types, (std::vector<std::string>{"header", "memory-pages", "irqchip", "pit", "clock",
                                             "device", "device", "vcpu", "lapic", "trailer"}));
}

TEST(GoldenSnapshot, Version1_0RestoresAndTheHeartbeatContinues) {
  VmctlProcess vm({"restore", kGolden});
  auto first = vm.wait_for_line("^HB [0-9]+", 60s);
  ASSERT_TRUE(first) << vm.out() << vm.err();
  EXPECT_EQ(vm.count_lines("^HB 1 "), 0u) << "the heartbeat continues, it does not restart";
  EXPECT_EQ(vm.count_lines("^heartbeat: boot"), 0u) << "no second boot";
  EXPECT_EQ(vm.count_lines("warning|error"), 0u) << "stdout is the guest's console only";
  vm.send("exit 0\n");
  EXPECT_EQ(vm.wait_exit(30s), 0) << vm.err();
}

}  // namespace
}  // namespace vmctl::testing
