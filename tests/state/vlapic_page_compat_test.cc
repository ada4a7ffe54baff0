// One snapshot, either irqchip: a local APIC page as state/lapic.cc encodes it for KVM loads into
// the userspace model (vmm/vlapic) and saves back to the same decoded state, in both ID formats.
#include <gtest/gtest.h>

#include "state/lapic.h"
#include "vmm/vlapic/local_apic.h"

namespace vmctl::state {
namespace {

namespace vlapic = vmm::vlapic;

class FixedClock : public vlapic::GuestClock {
 public:
  vlapic::GuestTime now() const override { return {7'000'000'000, 21'000'000'000}; }
  uint64_t tsc_hz() const override { return 3'000'000'000; }
};

void expect_same(const LapicState& a, const LapicState& b) {
  EXPECT_EQ(a.apic_base, b.apic_base);
  EXPECT_EQ(a.mode, b.mode);
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.version, b.version);
  EXPECT_EQ(a.tpr, b.tpr);
  EXPECT_EQ(a.apr, b.apr);
  EXPECT_EQ(a.ppr, b.ppr);
  EXPECT_EQ(a.ldr, b.ldr);
  EXPECT_EQ(a.dfr, b.dfr);
  EXPECT_EQ(a.svr, b.svr);
  EXPECT_EQ(a.isr, b.isr);
  EXPECT_EQ(a.tmr, b.tmr);
  EXPECT_EQ(a.irr, b.irr);
  EXPECT_EQ(a.esr, b.esr);
  EXPECT_EQ(a.icr_low, b.icr_low);
  EXPECT_EQ(a.icr_high, b.icr_high);
  EXPECT_EQ(a.lvt_timer, b.lvt_timer);
  EXPECT_EQ(a.lvt_thermal, b.lvt_thermal);
  EXPECT_EQ(a.lvt_perf, b.lvt_perf);
  EXPECT_EQ(a.lvt_lint0, b.lvt_lint0);
  EXPECT_EQ(a.lvt_lint1, b.lvt_lint1);
  EXPECT_EQ(a.lvt_error, b.lvt_error);
  EXPECT_EQ(a.lvt_cmci, b.lvt_cmci);
  EXPECT_EQ(a.timer_initial_count, b.timer_initial_count);
  EXPECT_EQ(a.timer_current_count, b.timer_current_count);
  EXPECT_EQ(a.timer_divide, b.timer_divide);
  EXPECT_EQ(a.tsc_deadline, b.tsc_deadline);
}

// Through the model and back: encode_lapic -> load_page -> save_page -> decode_lapic.
LapicState through_model(const LapicState& s, uint32_t initial_id, bool x2apic_ids) {
  FixedClock clock;
  vlapic::LocalApic apic(
      vlapic::LocalApicConfig{.initial_id = initial_id, .bsp = bool(s.apic_base & kApicBaseBsp)},
      clock);
  auto format = x2apic_ids ? vlapic::ApicIdFormat::kX2apicApi : vlapic::ApicIdFormat::kLegacy;
  Status loaded = apic.load_page(encode_lapic(s, x2apic_ids), s.apic_base, s.tsc_deadline, format);
  EXPECT_TRUE(loaded.ok()) << (loaded.ok() ? "" : loaded.error().message());
  vlapic::LapicSnapshot saved = apic.save_page(format);
  return decode_lapic(saved.page, saved.apic_base, saved.tsc_deadline, x2apic_ids);
}

LapicState xapic_bsp_nested_with_periodic_timer() {
  LapicState s;
  s.apic_base = 0xfee00000 | kApicBaseEnable | kApicBaseBsp;
  s.mode = ApicMode::kXapic;
  s.id = 0;
  s.version = 0x50014;
  s.svr = 0x1ff;
  s.tpr = 0x20;
  s.isr.set(0x31);
  s.isr.set(0x51);
  s.isr.set(0x71);
  s.irr.set(0x41);
  s.tmr.set(0x71);
  s.ppr = derive_ppr(s.tpr, s.isr);
  s.ldr = 0x01000000;
  s.dfr = 0xffffffff;
  s.esr = 0x40;
  s.icr_low = 0x000c4031;
  s.icr_high = 0x03000000;
  s.lvt_timer = 0x20040;
  s.lvt_thermal = 0x10000;
  s.lvt_perf = 0x400;
  s.lvt_lint0 = 0x700;
  s.lvt_lint1 = 0x400;
  s.lvt_error = 0xfe;
  s.lvt_cmci = 0;
  s.timer_initial_count = 1000000;
  s.timer_current_count = 5000;
  s.timer_divide = 0xb;
  return s;
}

TEST(VlapicStateCompat, XapicPageFromEncodeLapicRoundTripsThroughTheModel) {
  LapicState s = xapic_bsp_nested_with_periodic_timer();
  ASSERT_TRUE(validate_lapic(s, 0).ok());
  expect_same(through_model(s, 0, false), s);
}

TEST(VlapicStateCompat, X2apicTscDeadlinePageRoundTripsWithFullIds) {
  LapicState s = xapic_bsp_nested_with_periodic_timer();
  s.apic_base = 0xfee00000 | kApicBaseEnable | kApicBaseExtd;
  s.mode = ApicMode::kX2apic;
  s.id = 0x1234;
  s.ldr = (0x123u << 16) | (1u << 4);  // derived from the ID in x2APIC mode
  s.icr_high = 0x1233;                 // a 32-bit x2APIC destination
  s.lvt_timer = (2u << 17) | 0xef;
  s.timer_initial_count = s.timer_current_count = 0;
  s.tsc_deadline = 21'000'000'000 + 3'000'000;  // 1 ms from the clock's now
  expect_same(through_model(s, 0x1234, true), s);
}

TEST(VlapicStateCompat, X2apicPageRoundTripsInKvmsLegacyIdFormat) {
  LapicState s = xapic_bsp_nested_with_periodic_timer();
  s.apic_base = 0xfee00000 | kApicBaseEnable | kApicBaseExtd;
  s.mode = ApicMode::kX2apic;
  s.id = 3;
  s.ldr = 1u << 3;
  expect_same(through_model(s, 3, false), s);
}

TEST(VlapicStateCompat, ModelPagesPassTheSnapshotValidator) {
  FixedClock clock;
  vlapic::LocalApic apic(vlapic::LocalApicConfig{.initial_id = 2}, clock);
  apic.write_mmio(vlapic::reg::kSvr, "\xff\x01\x00\x00", 4);
  apic.set_tpr(0x10);
  for (uint8_t v : {0x41, 0x81, 0xc1}) {
    apic.accept(v, false);
    apic.acknowledge(v);
  }
  vlapic::LapicSnapshot saved = apic.save_page(vlapic::ApicIdFormat::kLegacy);
  LapicState s = decode_lapic(saved.page, saved.apic_base, saved.tsc_deadline, false);
  Status valid = validate_lapic(s, 2);
  EXPECT_TRUE(valid.ok()) << (valid.ok() ? "" : valid.error().message());
  EXPECT_EQ(s.ppr, 0xc0);
  EXPECT_EQ(s.id, 2u);
}

}  // namespace
}  // namespace vmctl::state
