#include <gtest/gtest.h>

#include "vmm/devices/cmos_rtc.h"
#include "vmm/devices/debug_exit.h"
#include "vmm/devices/i8042.h"

namespace vmctl::vmm {
namespace {

uint8_t in(PortIoDevice& d, uint16_t offset) {
  uint8_t v = 0;
  d.read(offset, &v, 1);
  return v;
}
void out(PortIoDevice& d, uint16_t offset, uint8_t v) {
  d.write(offset, &v, 1);
}

TEST(I8042, CommandFeResets) {
  int resets = 0;
  I8042 kbd([&] { ++resets; });
  out(kbd, 4, 0xfe);
  EXPECT_EQ(resets, 1);
}

TEST(I8042, OutputPortWithResetLineLowResets) {
  int resets = 0;
  I8042 kbd([&] { ++resets; });
  out(kbd, 4, 0xd1);
  out(kbd, 0, 0x03);
  EXPECT_EQ(resets, 0) << "bit 0 high keeps the CPU running";
  out(kbd, 4, 0xd1);
  out(kbd, 0, 0x02);
  EXPECT_EQ(resets, 1);
}

TEST(I8042, CommandByteReadsBackWhatWasWritten) {
  I8042 kbd([] {});
  out(kbd, 4, 0x60);
  out(kbd, 0, 0x21);
  out(kbd, 4, 0x20);
  EXPECT_EQ(in(kbd, 4) & 1, 1) << "output buffer full";
  EXPECT_EQ(in(kbd, 0), 0x21);
  EXPECT_EQ(in(kbd, 4) & 1, 0);
}

TEST(DebugExit, WrittenValueIsTheStatus) {
  uint32_t status = 0;
  DebugExit port([&](uint32_t s) { status = s; });
  uint32_t value = 0x1234;
  port.write(0, reinterpret_cast<uint8_t*>(&value), 4);
  EXPECT_EQ(status, 0x1234u);
  out(port, 0, 7);
  EXPECT_EQ(status, 7u);
}

constexpr uint64_t kMiB = 1 << 20;

uint8_t cmos(CmosRtc& rtc, uint8_t index) {
  out(rtc, 0, index);
  return in(rtc, 1);
}

TEST(CmosRtc, TimeIsBcdByDefaultAndBinaryWhenAsked) {
  CmosRtc rtc(256 * kMiB, 0);
  // 2026-11-24 19:45:37 UTC, a Tuesday.
  rtc.set_clock_for_testing([] { return std::time_t{1795549537}; });
  EXPECT_EQ(cmos(rtc, 0x00), 0x37);
  EXPECT_EQ(cmos(rtc, 0x02), 0x45);
  EXPECT_EQ(cmos(rtc, 0x04), 0x19);
  EXPECT_EQ(cmos(rtc, 0x07), 0x24);
  EXPECT_EQ(cmos(rtc, 0x08), 0x11);
  EXPECT_EQ(cmos(rtc, 0x09), 0x26);
  EXPECT_EQ(cmos(rtc, 0x32), 0x20);
  out(rtc, 0, 0x0b);
  out(rtc, 1, 0x06);  // binary, 24 h
  EXPECT_EQ(cmos(rtc, 0x00), 37);
  EXPECT_EQ(cmos(rtc, 0x04), 19);
}

TEST(CmosRtc, FollowsTheHostClock) {
  CmosRtc rtc(256 * kMiB, 0);
  out(rtc, 0, 0x0b);
  out(rtc, 1, 0x06);
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  EXPECT_EQ(cmos(rtc, 0x09), tm.tm_year % 100);
  EXPECT_EQ(cmos(rtc, 0x08), tm.tm_mon + 1);
}

TEST(CmosRtc, MemorySizeBytesFor256MiB) {
  CmosRtc rtc(256 * kMiB, 0);
  EXPECT_EQ(cmos(rtc, 0x15) | cmos(rtc, 0x16) << 8, 640);
  EXPECT_EQ(cmos(rtc, 0x17) | cmos(rtc, 0x18) << 8, 0xffff) << "255 MiB in KiB, capped";
  EXPECT_EQ(cmos(rtc, 0x34) | cmos(rtc, 0x35) << 8, (256 - 16) * 16);
  EXPECT_EQ(cmos(rtc, 0x5b) | cmos(rtc, 0x5c) << 8 | cmos(rtc, 0x5d) << 16, 0);
}

TEST(CmosRtc, MemorySizeBytesFor8GiB) {
  CmosRtc rtc(3072 * kMiB, 5120 * kMiB);
  EXPECT_EQ(cmos(rtc, 0x34) | cmos(rtc, 0x35) << 8, (3072 - 16) * 16);
  EXPECT_EQ(cmos(rtc, 0x5b) | cmos(rtc, 0x5c) << 8 | cmos(rtc, 0x5d) << 16, 5120 * 16);
}

TEST(CmosRtc, NmiMaskBitIsNotPartOfTheIndexAndSaveRestoreKeepsRam) {
  CmosRtc rtc(64 * kMiB, 0);
  out(rtc, 0, 0x80 | 0x40);
  out(rtc, 1, 0xab);
  EXPECT_EQ(cmos(rtc, 0x40), 0xab);
  CmosRtc other(64 * kMiB, 0);
  other.restore(rtc.save());
  EXPECT_EQ(cmos(other, 0x40), 0xab);
}

}  // namespace
}  // namespace vmctl::vmm
