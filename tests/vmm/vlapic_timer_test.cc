// The APIC timer (Intel SDM 10.5.4): one-shot, periodic and TSC-deadline modes, at 1 ns per count
// before division.
#include <gtest/gtest.h>

#include "tests/vmm/vlapic_test_support.h"
#include "vmm/vlapic/apic_timer.h"
#include "vmm/vlapic/local_apic.h"

namespace vmctl::vmm::vlapic {
namespace {

using testing::FakeClock;
using testing::mmio_read;
using testing::mmio_write;

constexpr uint8_t kTimerVector = 0x30;
constexpr uint32_t kOneShot = 0, kPeriodic = 1u << 17, kTscDeadline = 2u << 17;

class VlapicTimer : public ::testing::Test {
 protected:
  void SetUp() override { testing::software_enable(apic); }

  // Whether the timer vector is pending now; takes it (acknowledge and EOI) if so.
  bool fired() {
    apic.on_time();
    if (!apic.irr().test(kTimerVector)) return false;
    apic.acknowledge(kTimerVector);
    apic.eoi();
    return true;
  }
  uint64_t tsc() const { return clock.now().tsc; }

  FakeClock clock;
  LocalApic apic{LocalApicConfig{.initial_id = 0, .bsp = true}, clock};
};

TEST_F(VlapicTimer, OneShotFiresOnceAtTheRightTimeForEachDivider) {
  const std::pair<uint32_t, uint32_t> dividers[] = {{0x0, 2},  {0x1, 4},  {0x2, 8},   {0x3, 16},
                                                    {0x8, 32}, {0x9, 64}, {0xa, 128}, {0xb, 1}};
  for (auto [config, divisor] : dividers) {
    SCOPED_TRACE(::testing::Message() << "divide configuration 0x" << std::hex << config);
    mmio_write(apic, reg::kLvtTimer, kOneShot | kTimerVector);
    mmio_write(apic, reg::kTimerDivide, config);
    mmio_write(apic, reg::kTimerInitial, 1000);
    uint64_t start = clock.now().ns;
    EXPECT_EQ(apic.next_timer_deadline_ns(), start + 1000u * divisor);

    clock.set(start + 1000u * divisor - 1);
    EXPECT_FALSE(fired());
    EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 1u);
    clock.advance(1);
    EXPECT_TRUE(fired());
    EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 0u);
    EXPECT_EQ(mmio_read(apic, reg::kTimerInitial), 1000u);
    EXPECT_EQ(apic.next_timer_deadline_ns(), std::nullopt);
    clock.advance(100000);
    EXPECT_FALSE(fired()) << "a one-shot timer fires once";
  }
}

TEST_F(VlapicTimer, CurrentCountFollowsTime) {
  mmio_write(apic, reg::kTimerDivide, 0x1);  // divide by 4
  mmio_write(apic, reg::kLvtTimer, kOneShot | kTimerVector);
  mmio_write(apic, reg::kTimerInitial, 1000);
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 1000u);
  clock.advance(3);
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 1000u) << "not a full count yet";
  clock.advance(1);
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 999u);
  clock.advance(1000);
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 749u);
  mmio_write(apic, reg::kTimerInitial, 0);
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 0u) << "initial count 0 stops the timer";
  clock.advance(10000);
  EXPECT_FALSE(fired());
}

TEST_F(VlapicTimer, PeriodicTimerReArms) {
  mmio_write(apic, reg::kTimerDivide, 0xb);
  mmio_write(apic, reg::kLvtTimer, kPeriodic | kTimerVector);
  mmio_write(apic, reg::kTimerInitial, 100);
  uint64_t start = clock.now().ns;
  for (int period = 1; period <= 3; ++period) {
    clock.set(start + 100 * period - 1);
    EXPECT_FALSE(fired()) << "period " << period;
    clock.advance(1);
    EXPECT_TRUE(fired()) << "period " << period;
    EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 100u) << "reloaded";
    EXPECT_EQ(apic.next_timer_deadline_ns(), start + 100 * (period + 1));
  }
  clock.advance(30);
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 70u);
}

TEST_F(VlapicTimer, MissedPeriodsCoalesceIntoOneInterrupt) {
  mmio_write(apic, reg::kTimerDivide, 0xb);
  mmio_write(apic, reg::kLvtTimer, kPeriodic | kTimerVector);
  mmio_write(apic, reg::kTimerInitial, 100);
  uint64_t start = clock.now().ns;
  clock.advance(1050);
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 50u);
  EXPECT_TRUE(fired());
  EXPECT_FALSE(fired());
  EXPECT_EQ(apic.next_timer_deadline_ns(), start + 1100);
}

TEST_F(VlapicTimer, MaskedTimerCountsButRaisesNothing) {
  mmio_write(apic, reg::kTimerDivide, 0xb);
  mmio_write(apic, reg::kLvtTimer, kLvtMasked | kPeriodic | kTimerVector);
  mmio_write(apic, reg::kTimerInitial, 100);
  EXPECT_EQ(apic.next_timer_deadline_ns(), std::nullopt) << "no host timer needed";
  clock.advance(250);
  EXPECT_FALSE(fired());
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 50u);
  mmio_write(apic, reg::kLvtTimer, kPeriodic | kTimerVector);
  EXPECT_FALSE(fired()) << "unmasking does not deliver expiries that happened while masked";
  clock.advance(50);
  EXPECT_TRUE(fired());
}

TEST_F(VlapicTimer, DivideChangeKeepsTheRemainingCount) {
  mmio_write(apic, reg::kTimerDivide, 0xb);
  mmio_write(apic, reg::kLvtTimer, kOneShot | kTimerVector);
  mmio_write(apic, reg::kTimerInitial, 100);
  clock.advance(40);
  mmio_write(apic, reg::kTimerDivide, 0x0);  // divide by 2: 60 counts = 120 ns
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 60u);
  clock.advance(119);
  EXPECT_FALSE(fired());
  clock.advance(1);
  EXPECT_TRUE(fired());
}

TEST_F(VlapicTimer, OneShotAndPeriodicSwitchKeepsCounting) {
  mmio_write(apic, reg::kTimerDivide, 0xb);
  mmio_write(apic, reg::kLvtTimer, kOneShot | kTimerVector);
  mmio_write(apic, reg::kTimerInitial, 100);
  mmio_write(apic, reg::kLvtTimer, kPeriodic | kTimerVector);
  clock.advance(100);
  EXPECT_TRUE(fired());
  clock.advance(100);
  EXPECT_TRUE(fired()) << "now periodic";
}

TEST_F(VlapicTimer, TscDeadlineFiresAtTheDeadline) {
  mmio_write(apic, reg::kLvtTimer, kTscDeadline | kTimerVector);
  uint64_t deadline = tsc() + 1000;  // 500 ns at 2 GHz
  ASSERT_TRUE(apic.write_msr(kMsrTscDeadline, deadline));
  EXPECT_EQ(apic.read_msr(kMsrTscDeadline), deadline);
  EXPECT_EQ(apic.next_timer_deadline_ns(), clock.now().ns + 500);
  clock.advance(499);
  EXPECT_FALSE(fired());
  clock.advance(1);
  EXPECT_TRUE(fired());
  EXPECT_EQ(apic.read_msr(kMsrTscDeadline), 0u) << "disarmed after firing";
  EXPECT_EQ(apic.next_timer_deadline_ns(), std::nullopt);
  clock.advance(1000);
  EXPECT_FALSE(fired());
}

TEST_F(VlapicTimer, TscDeadlineZeroDisarmsAndAPastDeadlineFiresAtOnce) {
  mmio_write(apic, reg::kLvtTimer, kTscDeadline | kTimerVector);
  ASSERT_TRUE(apic.write_msr(kMsrTscDeadline, tsc() + 1000));
  ASSERT_TRUE(apic.write_msr(kMsrTscDeadline, 0));
  clock.advance(1000);
  EXPECT_FALSE(fired());
  ASSERT_TRUE(apic.write_msr(kMsrTscDeadline, tsc() - 1));
  EXPECT_TRUE(apic.irr().test(kTimerVector)) << "fires on the write itself";
}

TEST_F(VlapicTimer, TscDeadlineMsrOutsideTscDeadlineModeIsInert) {
  mmio_write(apic, reg::kLvtTimer, kOneShot | kTimerVector);
  ASSERT_TRUE(apic.write_msr(kMsrTscDeadline, tsc() + 10));
  EXPECT_EQ(apic.read_msr(kMsrTscDeadline), 0u);
  mmio_write(apic, reg::kLvtTimer, kTscDeadline | kTimerVector);
  EXPECT_EQ(apic.read_msr(kMsrTscDeadline), 0u) << "the ignored write did not arm anything";
  clock.advance(1000);
  EXPECT_FALSE(fired());
}

TEST_F(VlapicTimer, InitialCountIsIgnoredInTscDeadlineMode) {
  mmio_write(apic, reg::kLvtTimer, kTscDeadline | kTimerVector);
  mmio_write(apic, reg::kTimerInitial, 100);
  EXPECT_EQ(mmio_read(apic, reg::kTimerInitial), 0u);
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 0u);
  clock.advance(1000);
  EXPECT_FALSE(fired());
}

TEST_F(VlapicTimer, SwitchingIntoOrOutOfTscDeadlineModeDisarms) {
  mmio_write(apic, reg::kTimerDivide, 0xb);
  mmio_write(apic, reg::kLvtTimer, kOneShot | kTimerVector);
  mmio_write(apic, reg::kTimerInitial, 100);
  mmio_write(apic, reg::kLvtTimer, kTscDeadline | kTimerVector);
  EXPECT_EQ(mmio_read(apic, reg::kTimerInitial), 0u);
  clock.advance(1000);
  EXPECT_FALSE(fired());

  ASSERT_TRUE(apic.write_msr(kMsrTscDeadline, tsc() + 100));
  mmio_write(apic, reg::kLvtTimer, kOneShot | kTimerVector);
  mmio_write(apic, reg::kLvtTimer, kTscDeadline | kTimerVector);
  EXPECT_EQ(apic.read_msr(kMsrTscDeadline), 0u);
  clock.advance(1000);
  EXPECT_FALSE(fired());
}

TEST_F(VlapicTimer, ReservedModeDoesNotCount) {
  mmio_write(apic, reg::kTimerDivide, 0xb);
  mmio_write(apic, reg::kLvtTimer, (3u << 17) | kTimerVector);
  mmio_write(apic, reg::kTimerInitial, 100);
  clock.advance(1000);
  EXPECT_FALSE(fired());
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 0u);
}

TEST(VlapicApicTimer, DivisorEncoding) {
  ApicTimer timer(1'000'000'000);
  const uint32_t expected[16] = {2, 4, 8, 16, 2, 4, 8, 16, 32, 64, 128, 1, 32, 64, 128, 1};
  for (uint32_t config = 0; config < 16; ++config) {
    timer.set_divide_config(config, GuestTime{});
    EXPECT_EQ(timer.divisor(), expected[config]) << config;
  }
}

TEST(VlapicApicTimer, RestoreResumesTheRemainingCount) {
  ApicTimer timer(1'000'000'000);
  timer.restore(TimerMode::kPeriodic, 0xb, 100, 30, 0, GuestTime{.ns = 1000, .tsc = 0});
  EXPECT_EQ(timer.current_count(GuestTime{.ns = 1000}), 30u);
  EXPECT_EQ(timer.next_deadline_ns(GuestTime{.ns = 1000}), 1030u);
  EXPECT_TRUE(timer.expire(GuestTime{.ns = 1030}));
  EXPECT_EQ(timer.next_deadline_ns(GuestTime{.ns = 1030}), 1130u) << "then full periods";
  timer.restore(TimerMode::kOneShot, 0xb, 100, 0, 0, GuestTime{.ns = 1000});
  EXPECT_EQ(timer.next_deadline_ns(GuestTime{.ns = 1000}), std::nullopt) << "expired one-shot";
}

}  // namespace
}  // namespace vmctl::vmm::vlapic
