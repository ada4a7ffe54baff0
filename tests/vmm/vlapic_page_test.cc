// Save and restore of the userspace local APIC through KVM's register page: architectural state
// only, PPR derived, the timer's count computed at the save.
#include <gtest/gtest.h>

#include <cstring>

#include "tests/vmm/vlapic_test_support.h"
#include "vmm/vlapic/local_apic.h"

namespace vmctl::vmm::vlapic {
namespace {

using testing::FakeClock;
using testing::mmio_read;
using testing::mmio_write;

constexpr uint64_t kX2apicBase = kApicBaseDefault | kApicBaseEnable | kApicBaseExtd;

uint32_t page_reg(const kvm_lapic_state& page, uint32_t offset) {
  uint32_t v;
  std::memcpy(&v, page.regs + offset, 4);
  return v;
}
void set_page_reg(kvm_lapic_state& page, uint32_t offset, uint32_t v) {
  std::memcpy(page.regs + offset, &v, 4);
}

bool same(const LapicSnapshot& a, const LapicSnapshot& b) {
  return std::memcmp(a.page.regs, b.page.regs, sizeof a.page.regs) == 0 &&
         a.apic_base == b.apic_base && a.tsc_deadline == b.tsc_deadline;
}

// An xAPIC with three nested handlers, a pending vector held behind them, level and edge TMR bits,
// a latched ESR, programmed LVTs and a running periodic timer.
void make_busy(LocalApic& apic) {
  testing::software_enable(apic);
  mmio_write(apic, reg::kLdr, 0x04u << 24);
  mmio_write(apic, reg::kDfr, 0x0fffffff);
  mmio_write(apic, reg::kTpr, 0x21);
  for (uint8_t v : {0x51, 0x61, 0x71}) {
    apic.accept(v, v == 0x61);
    apic.acknowledge(v);
  }
  apic.accept(0x45, true);
  apic.accept(3, false);
  mmio_write(apic, reg::kEsr, 0);
  mmio_write(apic, reg::kLvtError, 0x10fe);
  mmio_write(apic, reg::kLvtLint1, 0x400);
  mmio_write(apic, reg::kLvtThermal, 0x10022);
  mmio_write(apic, reg::kIcrHigh, 0x02000000);
  mmio_write(apic, reg::kIcrLow, 0x4000 | 0xee);
  mmio_write(apic, reg::kLvtTimer, (1u << 17) | 0xec);
  mmio_write(apic, reg::kTimerDivide, 0x1);  // divide by 4
  mmio_write(apic, reg::kTimerInitial, 1000);
}

TEST(VlapicPage, SaveLoadSaveIsEqualWithNestedHandlersAndARunningTimer) {
  FakeClock clock;
  LocalApic original(LocalApicConfig{.initial_id = 1}, clock);
  make_busy(original);
  // Into the first 4000 ns period, on a count boundary (the page holds whole counts): 692 remain.
  clock.advance(1232);
  LapicSnapshot saved = original.save_page(ApicIdFormat::kLegacy);
  EXPECT_EQ(page_reg(saved.page, reg::kPpr), 0x70u);
  EXPECT_EQ(page_reg(saved.page, reg::kTimerCurrent), 692u);
  EXPECT_EQ(page_reg(saved.page, reg::kId), 1u << 24);
  EXPECT_EQ(page_reg(saved.page, reg::kIsr + 0x30), (1u << 1) | (1u << 17));
  EXPECT_EQ(page_reg(saved.page, reg::kEsr), kEsrReceiveIllegalVector);

  LocalApic restored(LocalApicConfig{.initial_id = 1}, clock);
  ASSERT_TRUE(
      restored.load_page(saved.page, saved.apic_base, saved.tsc_deadline, ApicIdFormat::kLegacy)
          .ok());
  EXPECT_TRUE(same(restored.save_page(ApicIdFormat::kLegacy), saved));

  // The restored APIC behaves as the original would have.
  EXPECT_EQ(restored.ppr(), 0x70);
  EXPECT_EQ(restored.eoi(), std::nullopt);
  EXPECT_EQ(restored.eoi(), 0x61) << "0x61 was level-triggered";
  EXPECT_EQ(restored.ppr(), 0x50);
  EXPECT_EQ(restored.eoi(), std::nullopt);
  EXPECT_EQ(restored.ppr(), 0x21);
  EXPECT_EQ(restored.pending_interrupt(), 0x45);
  clock.advance(4000 - 1232 - 1);
  restored.on_time();
  EXPECT_FALSE(restored.irr().test(0xec));
  clock.advance(1);
  restored.on_time();
  EXPECT_TRUE(restored.irr().test(0xec)) << "the timer expires when the original's would";
  EXPECT_EQ(mmio_read(restored, reg::kTimerCurrent), 1000u);
}

TEST(VlapicPage, X2apicRoundTripInBothIdFormats) {
  FakeClock clock;
  LocalApic original(LocalApicConfig{.initial_id = 0x42, .bsp = true}, clock);
  ASSERT_TRUE(original.set_apic_base(kX2apicBase));
  ASSERT_TRUE(original.write_msr(0x80f, 0x1ff));
  ASSERT_TRUE(original.write_msr(0x832, (2u << 17) | 0xe0));  // TSC-deadline
  uint64_t deadline = clock.now().tsc + 5000;
  ASSERT_TRUE(original.write_msr(kMsrTscDeadline, deadline));
  ASSERT_TRUE(original.write_msr(kMsrX2apicIcr, (uint64_t{0x7} << 32) | 0x4444));
  original.accept(0x99, false);

  for (ApicIdFormat format : {ApicIdFormat::kLegacy, ApicIdFormat::kX2apicApi}) {
    LapicSnapshot saved = original.save_page(format);
    EXPECT_EQ(saved.tsc_deadline, deadline);
    EXPECT_EQ(saved.apic_base, kX2apicBase | kApicBaseBsp);
    EXPECT_EQ(page_reg(saved.page, reg::kId),
              format == ApicIdFormat::kLegacy ? 0x42u << 24 : 0x42u);
    EXPECT_EQ(page_reg(saved.page, reg::kLdr), (0x4u << 16) | (1u << 2));
    EXPECT_EQ(page_reg(saved.page, reg::kIcrHigh), 7u);

    LocalApic restored(LocalApicConfig{.initial_id = 0x42, .bsp = true}, clock);
    ASSERT_TRUE(restored.load_page(saved.page, saved.apic_base, saved.tsc_deadline, format).ok());
    EXPECT_TRUE(same(restored.save_page(format), saved));
    EXPECT_EQ(restored.read_msr(kMsrTscDeadline), deadline);
    EXPECT_EQ(restored.read_msr(kMsrX2apicIcr), (uint64_t{0x7} << 32) | 0x4444);
  }
}

TEST(VlapicPage, SavedPageShowsAnExpiredTimerAsItsVectorInIrr) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 0}, clock);
  testing::software_enable(apic);
  mmio_write(apic, reg::kLvtTimer, 0x31);
  mmio_write(apic, reg::kTimerDivide, 0xb);
  mmio_write(apic, reg::kTimerInitial, 100);
  clock.advance(150);  // no on_time(): the run loop's host timer has not fired yet
  LapicSnapshot saved = apic.save_page(ApicIdFormat::kLegacy);
  EXPECT_EQ(page_reg(saved.page, reg::kTimerCurrent), 0u);
  EXPECT_EQ(page_reg(saved.page, reg::kIrr + 0x10), 1u << (0x31 - 32));
}

TEST(VlapicPage, PprAprAndVersionAreNotTakenFromThePage) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 0}, clock);
  LapicSnapshot saved = apic.save_page(ApicIdFormat::kLegacy);
  set_page_reg(saved.page, reg::kTpr, 0x20);
  set_page_reg(saved.page, reg::kIsr + 0x20, 1u << 1);  // 0x41 in service
  set_page_reg(saved.page, reg::kPpr, 0xff);
  set_page_reg(saved.page, reg::kApr, 0x77);
  set_page_reg(saved.page, reg::kVersion, 0x12345678);
  ASSERT_TRUE(apic.load_page(saved.page, saved.apic_base, 0, ApicIdFormat::kLegacy).ok());
  EXPECT_EQ(apic.ppr(), 0x40);
  EXPECT_EQ(mmio_read(apic, reg::kApr), 0u);
  EXPECT_EQ(mmio_read(apic, reg::kVersion), 0x50014u);
}

TEST(VlapicPage, LoadRefusesInconsistentPagesAndChangesNothing) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 5}, clock);
  make_busy(apic);
  const LapicSnapshot before = apic.save_page(ApicIdFormat::kX2apicApi);

  auto refused = [&](kvm_lapic_state page, uint64_t apic_base, const char* what) {
    Status status = apic.load_page(page, apic_base, 0, ApicIdFormat::kX2apicApi);
    EXPECT_FALSE(status.ok()) << what;
    EXPECT_TRUE(same(apic.save_page(ApicIdFormat::kX2apicApi), before)) << what;
    return status.ok() ? std::string() : status.error().message();
  };
  for (uint32_t base : {reg::kIsr, reg::kTmr, reg::kIrr}) {
    kvm_lapic_state page = before.page;
    set_page_reg(page, base, 1u << 15);
    EXPECT_NE(refused(page, before.apic_base, "vector 15").find("below 16"), std::string::npos);
  }
  refused(before.page, kApicBaseDefault | kApicBaseExtd, "EXTD without EN");
  refused(before.page, before.apic_base | 1, "reserved APIC base bit");
  kvm_lapic_state wrong_id = before.page;
  set_page_reg(wrong_id, reg::kId, 6);
  EXPECT_NE(refused(wrong_id, kX2apicBase, "x2APIC ID of another APIC").find("x2APIC ID 6"),
            std::string::npos);
  kvm_lapic_state count = before.page;
  set_page_reg(count, reg::kTimerCurrent, 1001);
  refused(count, before.apic_base, "current count above initial");
}

TEST(VlapicPage, DisabledAndSoftwareDisabledStatesRoundTrip) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 0, .bsp = true}, clock);
  LapicSnapshot reset = apic.save_page(ApicIdFormat::kLegacy);
  EXPECT_EQ(page_reg(reset.page, reg::kLvtLint0), 0x700u) << "unmasked while SVR disables";
  LocalApic restored(LocalApicConfig{.initial_id = 0, .bsp = true}, clock);
  ASSERT_TRUE(restored.load_page(reset.page, reset.apic_base, 0, ApicIdFormat::kLegacy).ok());
  EXPECT_TRUE(same(restored.save_page(ApicIdFormat::kLegacy), reset));

  ASSERT_TRUE(apic.set_apic_base(kApicBaseDefault | kApicBaseBsp));
  LapicSnapshot disabled = apic.save_page(ApicIdFormat::kLegacy);
  ASSERT_TRUE(restored.load_page(disabled.page, disabled.apic_base, 0, ApicIdFormat::kLegacy).ok());
  EXPECT_EQ(restored.mode(), ApicMode::kDisabled);
  EXPECT_TRUE(same(restored.save_page(ApicIdFormat::kLegacy), disabled));
}

}  // namespace
}  // namespace vmctl::vmm::vlapic
