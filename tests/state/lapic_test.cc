#include "state/lapic.h"

#include <gtest/gtest.h>

#include <capnp/message.h>

#include <cstring>

namespace vmctl::state {
namespace {

LapicState nested_three_deep() {
  LapicState s;
  s.apic_base = 0xfee00000 | kApicBaseEnable | kApicBaseBsp;
  s.mode = ApicMode::kXapic;
  s.version = 0x50014;
  s.svr = 0x1ff;
  s.tpr = 0x20;
  s.isr.set(0x31);
  s.isr.set(0x51);
  s.isr.set(0x71);
  s.irr.set(0x41);
  s.tmr.set(0x71);
  s.ppr = derive_ppr(s.tpr, s.isr);
  s.lvt_timer = 0x20040;
  s.timer_initial_count = 1000000;
  s.timer_current_count = 5000;
  s.timer_divide = 0xb;
  return s;
}

TEST(Ppr, IsTprWhenItsClassIsAtLeastTheHighestInService) {
  VectorSet isr;
  EXPECT_EQ(derive_ppr(0x00, isr), 0x00);
  EXPECT_EQ(derive_ppr(0x45, isr), 0x45);
  isr.set(0x31);
  EXPECT_EQ(derive_ppr(0x45, isr), 0x45);
  EXPECT_EQ(derive_ppr(0x35, isr), 0x35) << "same class: TPR, low nibble kept";
  EXPECT_EQ(derive_ppr(0x20, isr), 0x30) << "ISR class wins with a zero low nibble";
  isr.set(0xe2);
  EXPECT_EQ(derive_ppr(0x20, isr), 0xe0);
}

TEST(LapicCodec, PageRoundTripsByRegister) {
  LapicState s = nested_three_deep();
  kvm_lapic_state page = encode_lapic(s, false);
  LapicState back = decode_lapic(page, s.apic_base, 0, false);
  EXPECT_EQ(back.isr, s.isr);
  EXPECT_EQ(back.irr, s.irr);
  EXPECT_EQ(back.tmr, s.tmr);
  EXPECT_EQ(back.tpr, 0x20);
  EXPECT_EQ(back.ppr, 0x70) << "encode writes the derived PPR";
  EXPECT_EQ(back.lvt_timer, 0x20040u);
  EXPECT_EQ(back.timer_current_count, 5000u);
  // ISR bit 0x31 lives in the register at 0x100 + 0x10 * (0x31 / 32), bit 0x31 % 32.
  uint32_t word;
  std::memcpy(&word, page.regs + 0x100 + 0x10 * 1, 4);
  EXPECT_EQ(word, 1u << (0x31 % 32));
}

TEST(LapicCodec, X2apicIdIsFullWidthOnlyWithX2apicIds) {
  LapicState s = nested_three_deep();
  s.apic_base |= kApicBaseExtd;
  s.mode = ApicMode::kX2apic;
  s.id = 0x1234;
  kvm_lapic_state page = encode_lapic(s, true);
  EXPECT_EQ(decode_lapic(page, s.apic_base, 0, true).id, 0x1234u);
  s.id = 3;
  page = encode_lapic(s, false);
  uint32_t raw;
  std::memcpy(&raw, page.regs + 0x20, 4);
  EXPECT_EQ(raw, 3u << 24);
}

TEST(LapicRecord, RoundTripsThroughCapnp) {
  LapicState s = nested_three_deep();
  capnp::MallocMessageBuilder m;
  to_record(s, 2, m.initRoot<proto::state::Lapic>());
  LapicState back = from_record(m.getRoot<proto::state::Lapic>().asReader());
  EXPECT_EQ(m.getRoot<proto::state::Lapic>().getVcpuIndex(), 2u);
  EXPECT_EQ(back.isr, s.isr);
  EXPECT_EQ(back.irr, s.irr);
  EXPECT_EQ(back.mode, ApicMode::kXapic);
  EXPECT_EQ(back.ppr, s.ppr);
  EXPECT_TRUE(validate_lapic(back, 2).ok());
}

TEST(LapicValidate, AcceptsThreeNestedHandlersInDifferentClasses) {
  Status s = validate_lapic(nested_three_deep(), 0);
  EXPECT_TRUE(s.ok()) << s.error().message();
}

TEST(LapicValidate, RejectsAPprThatDoesNotMatch) {
  LapicState s = nested_three_deep();
  s.ppr = 0x20;
  Status st = validate_lapic(s, 1);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message().find("vCPU 1"), std::string::npos);
  EXPECT_NE(st.error().message().find("recorded PPR 0x20"), std::string::npos)
      << st.error().message();
  EXPECT_NE(st.error().message().find("0x70"), std::string::npos);
}

TEST(LapicValidate, RejectsReservedVectors) {
  for (VectorSet LapicState::*set : {&LapicState::isr, &LapicState::irr, &LapicState::tmr}) {
    LapicState s = nested_three_deep();
    (s.*set).set(7);
    s.ppr = derive_ppr(s.tpr, s.isr);
    Status st = validate_lapic(s, 0);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.error().message().find("vector 7"), std::string::npos) << st.error().message();
  }
}

TEST(LapicValidate, RejectsTwoInServiceVectorsOfOneClass) {
  LapicState s = nested_three_deep();
  s.isr.set(0x52);
  s.ppr = derive_ppr(s.tpr, s.isr);
  Status st = validate_lapic(s, 0);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message().find("priority class 5"), std::string::npos)
      << st.error().message();
}

TEST(LapicValidate, RejectsImpossibleModes) {
  LapicState s = nested_three_deep();
  s.apic_base = (s.apic_base & ~kApicBaseEnable) | kApicBaseExtd;
  s.mode = ApicMode::kX2apic;
  Status st = validate_lapic(s, 0);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message().find("EXTD"), std::string::npos) << st.error().message();

  LapicState t = nested_three_deep();
  t.mode = ApicMode::kX2apic;  // but the base says xAPIC
  st = validate_lapic(t, 0);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message().find("does not match APIC base"), std::string::npos);
}

}  // namespace
}  // namespace vmctl::state
