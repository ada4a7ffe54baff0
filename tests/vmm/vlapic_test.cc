// The local APIC's interrupt acceptance, priority and EOI (Intel SDM 10.8), software disable
// (10.4.7.2), local pins and INIT/SIPI.
#include <gtest/gtest.h>

#include "tests/vmm/vlapic_test_support.h"
#include "vmm/vlapic/local_apic.h"

namespace vmctl::vmm::vlapic {
namespace {

using testing::FakeClock;
using testing::mmio_read;
using testing::mmio_write;
using testing::software_enable;

class VlapicInterrupts : public ::testing::Test {
 protected:
  void SetUp() override { software_enable(apic); }

  // Pending -> acknowledged, as the run loop injects it.
  void take(uint8_t vector) {
    ASSERT_EQ(apic.pending_interrupt(), vector);
    ASSERT_TRUE(apic.acknowledge(vector));
  }

  FakeClock clock;
  LocalApic apic{LocalApicConfig{.initial_id = 0, .bsp = true}, clock};
};

TEST_F(VlapicInterrupts, NestedHandlersRetireInPriorityOrder) {
  ASSERT_TRUE(apic.accept(0x51, false));
  take(0x51);
  EXPECT_EQ(apic.ppr(), 0x50);
  ASSERT_TRUE(apic.accept(0x61, false));
  take(0x61);
  EXPECT_EQ(apic.ppr(), 0x60);
  ASSERT_TRUE(apic.accept(0x71, false));
  take(0x71);
  EXPECT_EQ(apic.ppr(), 0x70);
  EXPECT_EQ(mmio_read(apic, reg::kPpr), 0x70u);
  EXPECT_EQ(apic.pending_interrupt(), std::nullopt);

  // ISR word 2 holds vectors 64-95 (0x51 = 81), word 3 holds 96-127 (0x61 = 97, 0x71 = 113).
  EXPECT_EQ(mmio_read(apic, reg::kIsr + 0x20), 1u << (0x51 - 64));
  EXPECT_EQ(mmio_read(apic, reg::kIsr + 0x30), (1u << (0x61 - 96)) | (1u << (0x71 - 96)));
  EXPECT_EQ(mmio_read(apic, reg::kIrr + 0x20), 0u);

  mmio_write(apic, reg::kEoi, 0);
  EXPECT_FALSE(apic.isr().test(0x71));
  EXPECT_TRUE(apic.isr().test(0x61));
  EXPECT_EQ(apic.ppr(), 0x60);
  mmio_write(apic, reg::kEoi, 0x12345678);  // any value
  EXPECT_FALSE(apic.isr().test(0x61));
  EXPECT_TRUE(apic.isr().test(0x51));
  EXPECT_EQ(apic.ppr(), 0x50);
  mmio_write(apic, reg::kEoi, 0);
  EXPECT_TRUE(apic.isr().empty());
  EXPECT_EQ(apic.ppr(), 0x00);
}

TEST_F(VlapicInterrupts, InServiceClassHoldsBackItsOwnAndLowerClasses) {
  apic.accept(0x61, false);
  take(0x61);
  apic.accept(0x55, false);
  apic.accept(0x65, false);
  EXPECT_EQ(apic.pending_interrupt(), std::nullopt) << "0x65 is in the in-service class";
  apic.accept(0x71, false);
  EXPECT_EQ(apic.pending_interrupt(), 0x71) << "a higher class preempts";
  take(0x71);
  apic.eoi();
  EXPECT_EQ(apic.pending_interrupt(), std::nullopt);
  apic.eoi();
  take(0x65);
  apic.eoi();
  take(0x55);
}

TEST_F(VlapicInterrupts, VectorHeldBehindTprIsDeliveredOnceWhenTprDrops) {
  mmio_write(apic, reg::kTpr, 0x60);
  ASSERT_TRUE(apic.accept(0x55, false));
  EXPECT_EQ(apic.pending_interrupt(), std::nullopt);
  EXPECT_EQ(apic.ppr(), 0x60);
  EXPECT_TRUE(apic.irr().test(0x55));

  mmio_write(apic, reg::kTpr, 0x00);
  EXPECT_EQ(apic.pending_interrupt(), 0x55);
  ASSERT_TRUE(apic.acknowledge(0x55));
  EXPECT_EQ(apic.pending_interrupt(), std::nullopt);
  EXPECT_FALSE(apic.acknowledge(0x55)) << "delivered exactly once";
  apic.eoi();
  EXPECT_EQ(apic.pending_interrupt(), std::nullopt);
}

TEST_F(VlapicInterrupts, TprEqualClassBlocksAndPprTakesTprWhenHigher) {
  apic.set_tpr(0x5f);
  apic.accept(0x5f, false);
  EXPECT_EQ(apic.pending_interrupt(), std::nullopt) << "class 5 is not above TPR class 5";
  apic.set_tpr(0x80);
  apic.accept(0x91, false);
  take(0x91);
  EXPECT_EQ(apic.ppr(), 0x90);
  apic.set_tpr(0x95);
  EXPECT_EQ(apic.ppr(), 0x95) << "same class: PPR is TPR, low nibble kept";
  apic.set_tpr(0xa3);
  EXPECT_EQ(apic.ppr(), 0xa3) << "PPR = TPR when TPR's class is at least the ISR's";
}

TEST_F(VlapicInterrupts, Cr8IsTprPriorityClass) {
  apic.set_cr8(6);
  EXPECT_EQ(apic.tpr(), 0x60);
  EXPECT_EQ(mmio_read(apic, reg::kTpr), 0x60u);
  EXPECT_EQ(apic.cr8(), 6u);

  mmio_write(apic, reg::kTpr, 0x65);
  EXPECT_EQ(apic.cr8(), 6u);
  apic.set_cr8(6);  // the run loop's sync after an exit: class unchanged, low bits kept
  EXPECT_EQ(apic.tpr(), 0x65);
  apic.set_cr8(0x13);  // only bits 3:0 are CR8
  EXPECT_EQ(apic.tpr(), 0x30);
  apic.set_cr8(0);
  EXPECT_EQ(apic.tpr(), 0);
}

TEST_F(VlapicInterrupts, LevelTriggeredEoiReportsTheVectorEdgeDoesNot) {
  apic.accept(0x80, /*level_triggered=*/true);
  EXPECT_TRUE(apic.tmr().test(0x80));
  EXPECT_EQ(mmio_read(apic, reg::kTmr + 0x40), 1u);
  take(0x80);
  ApicWriteEffect effect = mmio_write(apic, reg::kEoi, 0);
  EXPECT_EQ(effect.level_eoi, 0x80);
  EXPECT_EQ(effect.ipi, std::nullopt);

  apic.accept(0x80, /*level_triggered=*/false);
  EXPECT_FALSE(apic.tmr().test(0x80)) << "edge acceptance clears TMR";
  take(0x80);
  EXPECT_EQ(mmio_write(apic, reg::kEoi, 0).level_eoi, std::nullopt);
}

TEST_F(VlapicInterrupts, EoiWithNothingInServiceDoesNothing) {
  apic.accept(0x40, true);
  EXPECT_EQ(apic.eoi(), std::nullopt);
  EXPECT_TRUE(apic.irr().test(0x40)) << "EOI touches ISR only";
  EXPECT_TRUE(apic.isr().empty());
}

TEST_F(VlapicInterrupts, IllegalVectorSetsEsrAndIsDropped) {
  for (int v = 0; v < 16; ++v) EXPECT_FALSE(apic.accept(static_cast<uint8_t>(v), false));
  EXPECT_TRUE(apic.irr().empty());
  EXPECT_EQ(mmio_read(apic, reg::kEsr), 0u) << "errors are readable only after an ESR write";
  mmio_write(apic, reg::kEsr, 0);
  EXPECT_EQ(mmio_read(apic, reg::kEsr), kEsrReceiveIllegalVector);
  mmio_write(apic, reg::kEsr, 0);
  EXPECT_EQ(mmio_read(apic, reg::kEsr), 0u) << "the previous write cleared what it latched";
  EXPECT_TRUE(apic.accept(16, false)) << "16 is the first legal vector";
}

TEST_F(VlapicInterrupts, ErrorLvtRaisesAnInterruptWhenUnmasked) {
  apic.accept(3, false);
  EXPECT_TRUE(apic.irr().empty()) << "LVT error masked";
  mmio_write(apic, reg::kLvtError, 0xfe);
  apic.accept(3, false);
  EXPECT_EQ(apic.pending_interrupt(), 0xfe);
}

TEST_F(VlapicInterrupts, SoftwareDisableMasksLvtsUntilReenabledAndUnmasked) {
  mmio_write(apic, reg::kLvtTimer, 0x20);
  mmio_write(apic, reg::kLvtLint1, 0x400);  // NMI
  EXPECT_EQ(mmio_read(apic, reg::kLvtTimer), 0x20u);

  mmio_write(apic, reg::kSvr, 0xff);
  EXPECT_FALSE(apic.software_enabled());
  for (uint32_t lvt : {reg::kLvtTimer, reg::kLvtThermal, reg::kLvtPerf, reg::kLvtLint0,
                       reg::kLvtLint1, reg::kLvtError}) {
    EXPECT_TRUE(mmio_read(apic, lvt) & kLvtMasked) << std::hex << lvt;
  }
  EXPECT_EQ(mmio_read(apic, reg::kLvtTimer), 0x10020u);
  mmio_write(apic, reg::kLvtTimer, 0x31);
  EXPECT_EQ(mmio_read(apic, reg::kLvtTimer), 0x10031u) << "cannot be unmasked while disabled";

  mmio_write(apic, reg::kSvr, 0x1ff);
  EXPECT_EQ(mmio_read(apic, reg::kLvtTimer), 0x10031u) << "re-enabling leaves the mask";
  mmio_write(apic, reg::kLvtTimer, 0x31);
  EXPECT_EQ(mmio_read(apic, reg::kLvtTimer), 0x31u);
}

TEST_F(VlapicInterrupts, SoftwareDisabledKeepsPendingStateButDropsNewFixedInterrupts) {
  apic.accept(0x40, false);
  apic.accept(0x70, false);
  take(0x70);
  mmio_write(apic, reg::kSvr, 0xff);
  EXPECT_FALSE(apic.accept(0x50, false));
  EXPECT_FALSE(apic.irr().test(0x50));
  apic.eoi();
  EXPECT_EQ(apic.pending_interrupt(), 0x40) << "what was pending stays deliverable";
}

TEST_F(VlapicInterrupts, GloballyDisabledApicAcceptsAndDeliversNothing) {
  apic.accept(0x40, false);
  ASSERT_TRUE(apic.set_apic_base(kApicBaseDefault));
  EXPECT_EQ(apic.mode(), ApicMode::kDisabled);
  EXPECT_FALSE(apic.accept(0x50, false));
  EXPECT_EQ(apic.pending_interrupt(), std::nullopt);
}

TEST_F(VlapicInterrupts, AcknowledgingAVectorNotInIrrChangesNothing) {
  EXPECT_FALSE(apic.acknowledge(0x40));
  EXPECT_TRUE(apic.isr().empty());
}

TEST(VlapicPowerUp, RegistersHaveTheirResetValues) {
  FakeClock clock;
  LocalApic bsp(LocalApicConfig{.initial_id = 0, .bsp = true}, clock);
  LocalApic ap(LocalApicConfig{.initial_id = 3, .bsp = false}, clock);
  EXPECT_EQ(bsp.apic_base(), 0xfee00900u);
  EXPECT_EQ(ap.apic_base(), 0xfee00800u);
  EXPECT_EQ(mmio_read(ap, reg::kId), 3u << 24);
  EXPECT_EQ(mmio_read(ap, reg::kVersion), 0x50014u);
  EXPECT_EQ(mmio_read(ap, reg::kSvr), 0xffu);
  EXPECT_EQ(mmio_read(ap, reg::kDfr), 0xffffffffu);
  EXPECT_EQ(mmio_read(ap, reg::kLdr), 0u);
  EXPECT_EQ(mmio_read(ap, reg::kLvtLint0), kLvtMasked);
  EXPECT_EQ(mmio_read(bsp, reg::kLvtLint0), 0x700u) << "BSP in virtual-wire mode, as KVM";
  EXPECT_EQ(mmio_read(ap, reg::kLvtTimer), kLvtMasked);
  EXPECT_EQ(bsp.mp_state(), MpState::kRunnable);
  EXPECT_EQ(ap.mp_state(), MpState::kWaitForSipi);
}

TEST_F(VlapicInterrupts, LocalPinsFollowTheirLvt) {
  apic.signal_lint(0);  // BSP LINT0 resets to ExtINT
  EXPECT_TRUE(apic.take_extint());
  EXPECT_FALSE(apic.take_extint());

  mmio_write(apic, reg::kLvtLint1, 0x400);
  apic.signal_lint(1);
  EXPECT_TRUE(apic.take_nmi());

  mmio_write(apic, reg::kLvtLint0, 0x8000 | 0x45);  // fixed, level
  apic.signal_lint(0);
  EXPECT_EQ(apic.pending_interrupt(), 0x45);
  EXPECT_TRUE(apic.tmr().test(0x45));

  mmio_write(apic, reg::kLvtLint1, kLvtMasked | 0x400);
  apic.signal_lint(1);
  EXPECT_FALSE(apic.take_nmi());
  apic.signal_lint(7);  // no such pin

  ASSERT_TRUE(apic.set_apic_base(kApicBaseDefault));  // globally disabled: pins pass through
  apic.signal_lint(0);
  apic.signal_lint(1);
  EXPECT_TRUE(apic.take_extint());
  EXPECT_TRUE(apic.take_nmi());
}

TEST(VlapicInit, InitResetsRegistersKeepsIdAndBaseAndWaitsForSipi) {
  FakeClock clock;
  LocalApic ap(LocalApicConfig{.initial_id = 2, .bsp = false}, clock);
  ASSERT_TRUE(ap.set_apic_base(0xfed00000 | kApicBaseEnable));
  software_enable(ap);
  mmio_write(ap, reg::kId, 0x07u << 24);
  mmio_write(ap, reg::kTpr, 0x40);
  mmio_write(ap, reg::kLdr, 0x04u << 24);
  mmio_write(ap, reg::kTimerInitial, 1000);
  ap.accept(0x90, true);
  ap.receive_nmi();
  ASSERT_EQ(ap.receive_sipi(0x10), 0x10000u) << "an AP starts in wait-for-SIPI";
  ASSERT_EQ(ap.mp_state(), MpState::kRunnable);
  ASSERT_EQ(ap.take_sipi(), 0x10000u);

  ap.receive_init();
  EXPECT_TRUE(ap.take_init());
  EXPECT_EQ(ap.mp_state(), MpState::kWaitForSipi);
  EXPECT_EQ(ap.id(), 7u) << "INIT keeps the APIC ID";
  EXPECT_EQ(ap.apic_base(), 0xfed00000u | kApicBaseEnable);
  EXPECT_EQ(mmio_read(ap, reg::kTpr), 0u);
  EXPECT_EQ(mmio_read(ap, reg::kLdr), 0u);
  EXPECT_EQ(mmio_read(ap, reg::kSvr), 0xffu);
  EXPECT_EQ(mmio_read(ap, reg::kTimerInitial), 0u);
  EXPECT_EQ(mmio_read(ap, reg::kLvtTimer), kLvtMasked);
  EXPECT_TRUE(ap.irr().empty());
  EXPECT_TRUE(ap.tmr().empty());
  EXPECT_FALSE(ap.take_nmi());

  EXPECT_EQ(ap.receive_sipi(0x9a), 0x9a000u);
  EXPECT_EQ(ap.take_sipi(), 0x9a000u);
  EXPECT_EQ(ap.mp_state(), MpState::kRunnable);
  EXPECT_EQ(ap.receive_sipi(0x9b), std::nullopt) << "a SIPI outside wait-for-SIPI is ignored";
  EXPECT_EQ(ap.take_sipi(), std::nullopt);
}

TEST(VlapicInit, InitOnTheBspLeavesItRunnable) {
  FakeClock clock;
  LocalApic bsp(LocalApicConfig{.initial_id = 0, .bsp = true}, clock);
  bsp.receive_init();
  EXPECT_TRUE(bsp.take_init());
  EXPECT_EQ(bsp.mp_state(), MpState::kRunnable);
  EXPECT_EQ(bsp.receive_sipi(0x10), std::nullopt);
}

}  // namespace
}  // namespace vmctl::vmm::vlapic
