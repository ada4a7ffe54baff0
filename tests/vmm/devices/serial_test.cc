#include "vmm/devices/serial.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace vmctl::vmm {
namespace {

constexpr uint16_t kData = 0, kIer = 1, kIir = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6, kScr = 7;

struct Uart {
  std::vector<bool> irq_calls;
  std::string output;
  Serial8250 serial{[this](bool level) { irq_calls.push_back(level); },
                    [this](const uint8_t* d, size_t n) { output.append(d, d + n); }};

  uint8_t in(uint16_t offset) {
    uint8_t v = 0;
    serial.read(offset, &v, 1);
    return v;
  }
  void out(uint16_t offset, uint8_t v) { serial.write(offset, &v, 1); }
  void input(const std::string& s) {
    serial.enqueue_input(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }
};

TEST(Serial8250, TransmittedBytesReachTheSink) {
  Uart u;
  for (char c : std::string("hi\n")) u.out(kData, static_cast<uint8_t>(c));
  EXPECT_EQ(u.output, "hi\n");
  EXPECT_EQ(u.in(kLsr)&0x60, 0x60) << "transmitter always empty";
}

TEST(Serial8250, ReceiveFifoKeepsOrderAndSetsDataReady) {
  Uart u;
  EXPECT_EQ(u.in(kLsr)&1, 0);
  u.input("ab");
  EXPECT_EQ(u.in(kLsr)&1, 1);
  EXPECT_EQ(u.in(kData), 'a');
  EXPECT_EQ(u.in(kData), 'b');
  EXPECT_EQ(u.in(kLsr)&1, 0);
}

TEST(Serial8250, DivisorLatchShadowsDataAndIer) {
  Uart u;
  u.out(kLcr, 0x80);
  u.out(kData, 0x01);
  u.out(kIer, 0x02);
  EXPECT_EQ(u.in(kData), 0x01);
  EXPECT_EQ(u.in(kIer), 0x02);
  u.out(kLcr, 0x03);
  EXPECT_EQ(u.in(kIer), 0x00) << "the divisor write must not have reached IER";
  EXPECT_TRUE(u.output.empty()) << "the divisor write must not have been transmitted";
}

TEST(Serial8250, IrqNeedsOut2AndChangesOnlyOnEdges) {
  Uart u;
  u.out(kIer, 0x01);  // RX data interrupt
  u.input("x");
  EXPECT_TRUE(u.irq_calls.empty()) << "no interrupt reaches the PIC without OUT2";
  u.out(kMcr, 0x08);
  ASSERT_EQ(u.irq_calls, std::vector<bool>({true}));
  EXPECT_EQ(u.in(kIir)&0x0f, 0x04);
  u.input("y");
  EXPECT_EQ(u.irq_calls.size(), 1u) << "still high: no new call";
  u.in(kData);
  u.in(kData);
  EXPECT_EQ(u.irq_calls, std::vector<bool>({true, false}));
  EXPECT_EQ(u.in(kIir)&0x0f, 0x01);
}

TEST(Serial8250, ThreInterruptRaisedOnEnableAndClearedByReadingIir) {
  Uart u;
  u.out(kMcr, 0x08);
  u.out(kIer, 0x02);
  EXPECT_EQ(u.irq_calls, std::vector<bool>({true}));
  EXPECT_EQ(u.in(kIir)&0x0f, 0x02);
  EXPECT_EQ(u.irq_calls, std::vector<bool>({true, false}));
  EXPECT_EQ(u.in(kIir)&0x0f, 0x01);
  u.out(kData, 'z');
  EXPECT_EQ(u.in(kIir)&0x0f, 0x02) << "a write empties the transmitter again";
}

TEST(Serial8250, ReceiveDataHasPriorityOverThre) {
  Uart u;
  u.out(kIer, 0x03);
  u.input("q");
  EXPECT_EQ(u.in(kIir)&0x0f, 0x04);
}

TEST(Serial8250, FifoControlReportsAndClears) {
  Uart u;
  u.out(kIir, 0x01);
  EXPECT_EQ(u.in(kIir)&0xc0, 0xc0);
  u.input("abc");
  u.out(kIir, 0x03);
  EXPECT_EQ(u.in(kLsr)&1, 0) << "FCR bit 1 clears the receive FIFO";
}

TEST(Serial8250, LoopbackSendsTransmitToReceive) {
  Uart u;
  u.out(kMcr, 0x10 | 0x03);
  u.out(kData, 'L');
  EXPECT_TRUE(u.output.empty());
  EXPECT_EQ(u.in(kData), 'L');
  EXPECT_EQ(u.in(kMsr)&0x30, 0x30) << "DTR/RTS looped to DSR/CTS";
}

TEST(Serial8250, ScratchRegisterHoldsItsValue) {
  Uart u;
  u.out(kScr, 0x5a);
  EXPECT_EQ(u.in(kScr), 0x5a);
}

TEST(Serial8250, InputBeyondCapacityIsDroppedAndCounted) {
  Uart u;
  u.input(std::string(Serial8250::kInputCapacity + 10, 'a'));
  EXPECT_EQ(u.serial.dropped_input_bytes(), 10u);
}

TEST(Serial8250, SaveRestoreRoundTripsRegistersFifoAndIrqLevel) {
  Uart a;
  a.out(kLcr, 0x80);
  a.out(kData, 0x0c);
  a.out(kLcr, 0x03);
  a.out(kMcr, 0x0b);
  a.out(kIer, 0x01);
  a.out(kScr, 0x77);
  a.input("state");
  Serial8250State saved = a.serial.save();

  Uart b;
  b.serial.restore(saved);
  EXPECT_EQ(b.irq_calls, std::vector<bool>({true})) << "restore drives the saved IRQ level";
  Serial8250State again = b.serial.save();
  EXPECT_EQ(again.ier, 0x01);
  EXPECT_EQ(again.lcr, 0x03);
  EXPECT_EQ(again.mcr, 0x0b);
  EXPECT_EQ(again.scr, 0x77);
  EXPECT_EQ(again.dll, 0x0c);
  std::string fifo;
  while (b.in(kLsr)&1) fifo += static_cast<char>(b.in(kData));
  EXPECT_EQ(fifo, "state");
}

}  // namespace
}  // namespace vmctl::vmm
