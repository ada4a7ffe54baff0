// The register file through both of its doors: xAPIC MMIO and x2APIC MSRs (Intel SDM table 10-1,
// 10.12.1), and IA32_APIC_BASE transitions (10.12.5).
#include <gtest/gtest.h>

#include <vector>

#include "tests/vmm/vlapic_test_support.h"
#include "vmm/vlapic/local_apic.h"

namespace vmctl::vmm::vlapic {
namespace {

using testing::FakeClock;
using testing::mmio_read;
using testing::mmio_write;
using testing::msr_for;
using testing::software_enable;

constexpr uint64_t kX2apicBase = kApicBaseDefault | kApicBaseEnable | kApicBaseExtd;

struct RegisterCase {
  uint32_t offset;
  uint32_t write;
  uint32_t read;  // after the write
};

TEST(VlapicRegisters, MmioWritesAndReadsEveryWritableRegister) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 1}, clock);
  software_enable(apic);
  const std::vector<RegisterCase> cases = {
      {reg::kId, 0x0a000000, 0x0a000000},
      {reg::kTpr, 0xffffff45, 0x45},
      {reg::kLdr, 0x80ffffff, 0x80000000},
      {reg::kDfr, 0x0, 0x0fffffff},
      {reg::kDfr, 0xffffffff, 0xffffffff},
      {reg::kSvr, 0xfffff3ff, 0x3ff},
      {reg::kIcrHigh, 0xffffffff, 0xff000000},
      {reg::kLvtTimer, 0xffffffff, 0x700ff},
      {reg::kLvtThermal, 0xffffffff, 0x107ff},
      {reg::kLvtPerf, 0xffffffff, 0x107ff},
      {reg::kLvtLint0, 0xffffffff, 0x1a7ff},
      {reg::kLvtLint1, 0xffffffff, 0x1a7ff},
      {reg::kLvtError, 0xffffffff, 0x100ff},
      {reg::kLvtTimer, 0x00020031, 0x20031},  // periodic, so the initial count below counts
      {reg::kTimerInitial, 0x12345678, 0x12345678},
      {reg::kTimerDivide, 0xffffffff, 0xb},
      {reg::kApr, 0xff, 0},      // reads 0 (latitude)
      {reg::kLvtCmci, 0xff, 0},  // no CMCI without `cmci`
      {0x3f0, 0xff, 0},          // SELF_IPI is x2APIC only
      {0x40, 0xff, 0},           // reserved
  };
  for (const RegisterCase& c : cases) {
    mmio_write(apic, c.offset, c.write);
    EXPECT_EQ(mmio_read(apic, c.offset), c.read) << std::hex << "offset 0x" << c.offset;
  }
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 0x12345678u);
  EXPECT_EQ(mmio_read(apic, reg::kEoi), 0u);
}

TEST(VlapicRegisters, MmioWritesToReadOnlyRegistersAreIgnored) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 1}, clock);
  software_enable(apic);
  apic.accept(0x41, true);
  apic.acknowledge(0x41);
  apic.accept(0x42, false);
  mmio_write(apic, reg::kTimerInitial, 500);
  for (uint32_t offset = reg::kIsr; offset < reg::kIrr + 0x80; offset += 0x10) {
    mmio_write(apic, offset, 0xffffffff);
  }
  mmio_write(apic, reg::kVersion, 0);
  mmio_write(apic, reg::kPpr, 0xff);
  mmio_write(apic, reg::kTimerCurrent, 1);
  EXPECT_EQ(mmio_read(apic, reg::kVersion), 0x50014u);
  EXPECT_EQ(mmio_read(apic, reg::kPpr), 0x40u);
  EXPECT_EQ(mmio_read(apic, reg::kIsr + 0x20), 1u << 1);
  EXPECT_EQ(mmio_read(apic, reg::kTmr + 0x20), 1u << 1);
  EXPECT_EQ(mmio_read(apic, reg::kIrr + 0x20), 1u << 2);
  EXPECT_EQ(mmio_read(apic, reg::kIsr), 0u);
  EXPECT_EQ(mmio_read(apic, reg::kTimerCurrent), 500u);
}

TEST(VlapicRegisters, MmioOddWidthsAndOffsets) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 1}, clock);
  software_enable(apic);
  uint8_t bytes[8];
  apic.read_mmio(reg::kVersion, bytes, 1);
  EXPECT_EQ(bytes[0], 0x14);
  apic.read_mmio(reg::kVersion + 2, bytes, 2);
  EXPECT_EQ(bytes[0], 0x05);
  EXPECT_EQ(bytes[1], 0x00);
  uint64_t wide = ~0ull;
  apic.read_mmio(reg::kVersion, &wide, 8);
  EXPECT_EQ(wide, 0x50014u) << "bytes 4-15 of a register slot read 0";
  uint32_t v = ~0u;
  apic.read_mmio(reg::kVersion + 4, &v, 4);
  EXPECT_EQ(v, 0u);

  uint8_t tpr = 0x70;
  apic.write_mmio(reg::kTpr, &tpr, 1);
  uint64_t tpr64 = 0x70;
  apic.write_mmio(reg::kTpr, &tpr64, 8);
  uint32_t tpr32 = 0x70;
  apic.write_mmio(reg::kTpr + 4, &tpr32, 4);
  apic.write_mmio(reg::kTpr + 1, &tpr32, 4);
  EXPECT_EQ(apic.tpr(), 0) << "only aligned 4-byte writes take effect";
  apic.write_mmio(reg::kTpr, &tpr32, 4);
  EXPECT_EQ(apic.tpr(), 0x70);

  v = ~0u;
  apic.read_mmio(0x1000, &v, 4);
  EXPECT_EQ(v, 0u) << "beyond the page";
  apic.read_mmio(0xffe, &v, 4);  // straddles the end of the page
  EXPECT_EQ(v, 0u);
}

TEST(VlapicRegisters, MmioAnyOffsetAndLengthIsSafe) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 1, .bsp = true}, clock);
  software_enable(apic);
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  auto next = [&] {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return seed;
  };
  uint8_t buffer[8];
  for (uint64_t offset = 0; offset < 0x1010; ++offset) {
    for (size_t len = 0; len <= 8; ++len) {
      apic.read_mmio(offset, buffer, len);
      uint64_t data = next();
      // Keep the APIC enabled so later writes still reach the registers.
      if (offset == reg::kSvr) data |= kSvrSoftwareEnable;
      apic.write_mmio(offset, &data, len);
      clock.advance(next() % 1000);
      apic.on_time();
      if (std::optional<uint8_t> v = apic.pending_interrupt()) apic.acknowledge(*v);
      if (next() % 3 == 0) apic.eoi();
    }
  }
  for (uint64_t offset : {~0ull, ~0ull - 3, 0x7fffffffffffffffull}) {
    apic.read_mmio(offset, buffer, 8);
    apic.write_mmio(offset, buffer, 4);
  }
  EXPECT_FALSE(apic.irr().has_reserved_vector());
  EXPECT_FALSE(apic.isr().has_reserved_vector());
  EXPECT_FALSE(apic.tmr().has_reserved_vector());
}

TEST(VlapicRegisters, X2apicMsrsReadAndWriteEveryRegister) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 0x10003}, clock);
  ASSERT_TRUE(apic.set_apic_base(kX2apicBase));
  ASSERT_TRUE(apic.write_msr(msr_for(reg::kSvr), 0x1ff));
  EXPECT_EQ(apic.read_msr(msr_for(reg::kId)), 0x10003u) << "the full 32-bit x2APIC ID";
  EXPECT_EQ(apic.read_msr(msr_for(reg::kLdr)), 0x10000008u) << "cluster 0x1000, bit 3";
  EXPECT_EQ(apic.read_msr(msr_for(reg::kVersion)), 0x50014u);

  const std::vector<RegisterCase> cases = {
      {reg::kTpr, 0xffffff45, 0x45},         {reg::kSvr, 0xfffff3ff, 0x3ff},
      {reg::kLvtTimer, 0xffffffff, 0x700ff}, {reg::kLvtThermal, 0xffffffff, 0x107ff},
      {reg::kLvtPerf, 0xffffffff, 0x107ff},  {reg::kLvtLint0, 0xffffffff, 0x1a7ff},
      {reg::kLvtLint1, 0xffffffff, 0x1a7ff}, {reg::kLvtError, 0xffffffff, 0x100ff},
      {reg::kLvtTimer, 0x00000031, 0x31},    {reg::kTimerInitial, 1000, 1000},
      {reg::kTimerDivide, 0xb, 0xb},
  };
  for (const RegisterCase& c : cases) {
    ASSERT_TRUE(apic.write_msr(msr_for(c.offset), c.write)) << std::hex << c.offset;
    EXPECT_EQ(apic.read_msr(msr_for(c.offset)), c.read) << std::hex << "offset 0x" << c.offset;
  }
  clock.advance(400);
  EXPECT_EQ(apic.read_msr(msr_for(reg::kTimerCurrent)), 600u);

  apic.accept(0x41, true);
  apic.acknowledge(0x41);
  apic.accept(0xe2, false);
  EXPECT_EQ(apic.read_msr(msr_for(reg::kIsr + 0x20)), 1u << 1);
  EXPECT_EQ(apic.read_msr(msr_for(reg::kTmr + 0x20)), 1u << 1);
  EXPECT_EQ(apic.read_msr(msr_for(reg::kIrr + 0x70)), 1u << 2);
  EXPECT_EQ(apic.read_msr(msr_for(reg::kPpr)), 0x45u);
  ApicWriteEffect eoi = *apic.write_msr(msr_for(reg::kEoi), 0);
  EXPECT_EQ(eoi.level_eoi, 0x41);

  apic.accept(5, false);
  ASSERT_TRUE(apic.write_msr(msr_for(reg::kEsr), 0));
  EXPECT_EQ(apic.read_msr(msr_for(reg::kEsr)), kEsrReceiveIllegalVector);
}

TEST(VlapicRegisters, X2apicGeneralProtectionCases) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 4}, clock);
  ASSERT_TRUE(apic.set_apic_base(kX2apicBase));
  // Reads of write-only, xAPIC-only and reserved registers.
  for (uint32_t msr : {0x80bu, 0x83fu, 0x809u, 0x80eu, 0x831u, 0x800u, 0x801u, 0x804u, 0x807u,
                       0x80cu, 0x829u, 0x82fu, 0x840u, 0x8ffu}) {
    EXPECT_EQ(apic.read_msr(msr), std::nullopt) << std::hex << msr;
  }
  // Writes to read-only, xAPIC-only and reserved registers.
  for (uint32_t msr : {0x802u, 0x803u, 0x809u, 0x80au, 0x80du, 0x80eu, 0x810u, 0x818u, 0x820u,
                       0x827u, 0x831u, 0x839u, 0x804u, 0x82fu, 0x8ffu}) {
    EXPECT_EQ(apic.write_msr(msr, 0), std::nullopt) << std::hex << msr;
  }
  EXPECT_EQ(apic.write_msr(msr_for(reg::kTpr), 1ull << 32), std::nullopt) << "bits 63:32";
  EXPECT_EQ(apic.write_msr(msr_for(reg::kEsr), 1), std::nullopt);
  EXPECT_EQ(apic.write_msr(msr_for(reg::kEoi), 1), std::nullopt);
  EXPECT_EQ(apic.read_msr(msr_for(reg::kId)), 4u) << "the failed writes changed nothing";
  EXPECT_EQ(apic.read_msr(0x7ff), std::nullopt) << "not an APIC MSR";
  EXPECT_EQ(apic.write_msr(0x900, 0), std::nullopt);
}

TEST(VlapicRegisters, X2apicMsrsFaultInXapicModeAndMmioIsNotDecodedInX2apicMode) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 4}, clock);
  EXPECT_EQ(apic.read_msr(msr_for(reg::kTpr)), std::nullopt);
  EXPECT_EQ(apic.write_msr(msr_for(reg::kTpr), 0x20), std::nullopt);
  EXPECT_EQ(apic.read_msr(kMsrApicBase), 0xfee00800u) << "IA32_APIC_BASE exists in every mode";

  ASSERT_TRUE(apic.set_apic_base(kX2apicBase));
  EXPECT_EQ(mmio_read(apic, reg::kVersion), 0xffffffffu);
  mmio_write(apic, reg::kTpr, 0x20);
  EXPECT_EQ(apic.tpr(), 0);
}

TEST(VlapicRegisters, XapicIcrWriteSendsTheIpi) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 0, .bsp = true}, clock);
  software_enable(apic);
  EXPECT_EQ(mmio_write(apic, reg::kIcrHigh, 0x03000000).ipi, std::nullopt);
  ApicWriteEffect effect = mmio_write(apic, reg::kIcrLow, 0xfffcc9f1);
  ASSERT_TRUE(effect.ipi);
  EXPECT_EQ(effect.ipi->vector, 0xf1);
  EXPECT_EQ(effect.ipi->delivery, DeliveryMode::kLowestPriority);
  EXPECT_EQ(effect.ipi->destination_mode, DestinationMode::kLogical);
  EXPECT_TRUE(effect.ipi->level_assert);
  EXPECT_TRUE(effect.ipi->level_triggered);
  EXPECT_EQ(effect.ipi->shorthand, Shorthand::kAllExcludingSelf);
  EXPECT_EQ(effect.ipi->destination, 3u);
  EXPECT_FALSE(effect.ipi->x2apic_destination);
  EXPECT_EQ(mmio_read(apic, reg::kIcrLow), 0xcc9f1u) << "reserved bits and delivery status read 0";
  EXPECT_EQ(mmio_read(apic, reg::kIcrHigh), 0x03000000u);
}

TEST(VlapicRegisters, X2apicIcrIsOne64BitMsr) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 0, .bsp = true}, clock);
  ASSERT_TRUE(apic.set_apic_base(kX2apicBase | kApicBaseBsp));
  std::optional<ApicWriteEffect> effect =
      apic.write_msr(kMsrX2apicIcr, (uint64_t{0x10003} << 32) | 0x4031);
  ASSERT_TRUE(effect && effect->ipi);
  EXPECT_EQ(effect->ipi->destination, 0x10003u);
  EXPECT_TRUE(effect->ipi->x2apic_destination);
  EXPECT_EQ(effect->ipi->vector, 0x31);
  EXPECT_EQ(effect->ipi->delivery, DeliveryMode::kFixed);
  EXPECT_EQ(apic.read_msr(kMsrX2apicIcr), (uint64_t{0x10003} << 32) | 0x4031);
}

TEST(VlapicRegisters, SelfIpiMsrSendsAFixedEdgeIpiToSelf) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 0, .bsp = true}, clock);
  ASSERT_TRUE(apic.set_apic_base(kX2apicBase));
  std::optional<ApicWriteEffect> effect = apic.write_msr(0x83f, 0x45);
  ASSERT_TRUE(effect && effect->ipi);
  EXPECT_EQ(effect->ipi->shorthand, Shorthand::kSelf);
  EXPECT_EQ(effect->ipi->vector, 0x45);
  EXPECT_EQ(effect->ipi->delivery, DeliveryMode::kFixed);
  EXPECT_FALSE(effect->ipi->level_triggered);
}

TEST(VlapicRegisters, IpiWithAnIllegalVectorIsNotSentAndSetsEsr) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 0, .bsp = true}, clock);
  software_enable(apic);
  EXPECT_EQ(mmio_write(apic, reg::kIcrLow, 0x4005).ipi, std::nullopt);
  mmio_write(apic, reg::kEsr, 0);
  EXPECT_EQ(mmio_read(apic, reg::kEsr), kEsrSendIllegalVector);
  EXPECT_TRUE(mmio_write(apic, reg::kIcrLow, 0x4400).ipi) << "NMI has no vector to check";
}

TEST(VlapicRegisters, CmciLvtExistsWhenConfigured) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 0, .cmci = true}, clock);
  software_enable(apic);
  EXPECT_EQ(mmio_read(apic, reg::kVersion), 0x60014u);
  EXPECT_EQ(mmio_read(apic, reg::kLvtCmci), kLvtMasked);
  mmio_write(apic, reg::kLvtCmci, 0xffffffff);
  EXPECT_EQ(mmio_read(apic, reg::kLvtCmci), 0x107ffu);
  ASSERT_TRUE(apic.set_apic_base(kX2apicBase));
  EXPECT_EQ(apic.read_msr(0x82f), 0x107ffu);
}

TEST(VlapicApicBase, LegalAndIllegalTransitions) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 0x105, .bsp = true}, clock);
  software_enable(apic);
  mmio_write(apic, reg::kTpr, 0x30);
  apic.accept(0x80, false);
  EXPECT_EQ(apic.id(), 0x05u) << "an xAPIC ID is 8 bits";

  EXPECT_FALSE(apic.set_apic_base(kApicBaseDefault | kApicBaseExtd)) << "EXTD without EN";
  EXPECT_FALSE(apic.set_apic_base(kApicBaseDefault | kApicBaseEnable | 1)) << "reserved bit 0";
  EXPECT_FALSE(apic.set_apic_base(kApicBaseDefault | kApicBaseEnable | (1u << 9)));
  EXPECT_FALSE(apic.set_apic_base(kApicBaseEnable | (1ull << 52))) << "above MAXPHYADDR";

  ASSERT_TRUE(apic.set_apic_base(kX2apicBase));  // xAPIC -> x2APIC keeps the state
  EXPECT_EQ(apic.mode(), ApicMode::kX2apic);
  EXPECT_EQ(apic.id(), 0x105u) << "the x2APIC ID is the full initial ID";
  EXPECT_EQ(apic.tpr(), 0x30);
  EXPECT_TRUE(apic.irr().test(0x80));
  EXPECT_TRUE(apic.apic_base() & kApicBaseBsp) << "BSP is kept whatever is written";

  EXPECT_FALSE(apic.set_apic_base(kApicBaseDefault | kApicBaseEnable)) << "x2APIC -> xAPIC";
  EXPECT_EQ(apic.mode(), ApicMode::kX2apic);
  ASSERT_TRUE(apic.write_msr(kMsrApicBase, kApicBaseDefault));  // x2APIC -> disabled
  EXPECT_EQ(apic.mode(), ApicMode::kDisabled);
  EXPECT_EQ(apic.write_msr(kMsrApicBase, kX2apicBase), std::nullopt) << "disabled -> x2APIC";

  ASSERT_TRUE(apic.set_apic_base(0xfec00000 | kApicBaseEnable));  // disabled -> xAPIC resets
  EXPECT_EQ(apic.mode(), ApicMode::kXapic);
  EXPECT_EQ(apic.mmio_base(), 0xfec00000u);
  EXPECT_EQ(apic.tpr(), 0);
  EXPECT_TRUE(apic.irr().empty());
  EXPECT_FALSE(apic.software_enabled());
  EXPECT_EQ(apic.id(), 0x05u);
  EXPECT_EQ(apic.apic_base(), 0xfec00000u | kApicBaseEnable | kApicBaseBsp);

  LocalApic ap(LocalApicConfig{.initial_id = 1}, clock);
  ASSERT_TRUE(ap.set_apic_base(kApicBaseDefault | kApicBaseEnable | kApicBaseBsp));
  EXPECT_FALSE(ap.apic_base() & kApicBaseBsp) << "an AP cannot make itself the BSP";
}

TEST(VlapicApicBase, XapicToDisabledAndBackResetsTheApic) {
  FakeClock clock;
  LocalApic apic(LocalApicConfig{.initial_id = 2}, clock);
  software_enable(apic);
  mmio_write(apic, reg::kId, 9u << 24);
  mmio_write(apic, reg::kLvtTimer, 0x30);
  mmio_write(apic, reg::kTimerInitial, 100);
  ASSERT_TRUE(apic.set_apic_base(kApicBaseDefault));
  clock.advance(1000);
  apic.on_time();
  ASSERT_TRUE(apic.set_apic_base(kApicBaseDefault | kApicBaseEnable));
  EXPECT_EQ(apic.id(), 2u) << "back to the initial ID";
  EXPECT_TRUE(apic.irr().empty()) << "the disabled APIC's timer did not fire";
  EXPECT_EQ(mmio_read(apic, reg::kLvtTimer), kLvtMasked);
}

}  // namespace
}  // namespace vmctl::vmm::vlapic
