// IPI routing on the APIC bus (Intel SDM 10.6.2, 10.12.9-10.12.10): destinations, shorthands,
// lowest priority, NMI, INIT and SIPI.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "tests/vmm/vlapic_test_support.h"
#include "vmm/vlapic/apic_bus.h"

namespace vmctl::vmm::vlapic {
namespace {

using testing::FakeClock;
using testing::mmio_write;
using testing::msr_for;

constexpr uint64_t kX2apicBase = kApicBaseDefault | kApicBaseEnable | kApicBaseExtd;

class VlapicBus : public ::testing::Test {
 protected:
  // Four APICs; `ids` are their initial IDs, the first is the BSP.
  void build(std::vector<uint32_t> ids = {0, 1, 2, 3}) {
    for (size_t i = 0; i < ids.size(); ++i) {
      apics.push_back(
          std::make_unique<LocalApic>(LocalApicConfig{.initial_id = ids[i], .bsp = i == 0}, clock));
      testing::software_enable(*apics.back());
      bus.attach(*apics.back());
    }
  }
  void SetUp() override { build(); }

  LocalApic& apic(size_t i) { return *apics[i]; }

  // Which APICs have `vector` in IRR (by index), clearing it.
  std::vector<size_t> holders(uint8_t vector) {
    std::vector<size_t> out;
    for (size_t i = 0; i < apics.size(); ++i) {
      if (apics[i]->irr().test(vector)) {
        out.push_back(i);
        apics[i]->acknowledge(vector);
        apics[i]->eoi();
      }
    }
    return out;
  }

  // Sends through apic(from)'s xAPIC ICR.
  DeliveryReport send_xapic(size_t from, uint32_t icr_low, uint8_t destination) {
    mmio_write(apic(from), reg::kIcrHigh, uint32_t{destination} << 24);
    ApicWriteEffect effect = mmio_write(apic(from), reg::kIcrLow, icr_low);
    EXPECT_TRUE(effect.ipi);
    return effect.ipi ? bus.send(apic(from), *effect.ipi) : DeliveryReport{};
  }
  DeliveryReport send_x2apic(size_t from, uint32_t icr_low, uint32_t destination) {
    std::optional<ApicWriteEffect> effect =
        apic(from).write_msr(kMsrX2apicIcr, (uint64_t{destination} << 32) | icr_low);
    EXPECT_TRUE(effect && effect->ipi);
    return effect && effect->ipi ? bus.send(apic(from), *effect->ipi) : DeliveryReport{};
  }

  FakeClock clock;
  std::vector<std::unique_ptr<LocalApic>> apics;
  ApicBus bus;
};

using Indices = std::vector<size_t>;
using Ids = std::vector<uint32_t>;

constexpr uint32_t kFixed = 0x4000;  // fixed, edge, assert
constexpr uint32_t kLogical = 1u << 11;

TEST_F(VlapicBus, PhysicalDestinationReachesOneApicAndBroadcastReachesAll) {
  DeliveryReport report = send_xapic(0, kFixed | 0x40, 2);
  EXPECT_EQ(report.initial_ids, Ids{2});
  EXPECT_EQ(holders(0x40), Indices{2});
  send_xapic(0, kFixed | 0x41, 7);
  EXPECT_EQ(holders(0x41), Indices{}) << "no APIC has ID 7";
  send_xapic(0, kFixed | 0x42, 0xff);
  EXPECT_EQ(holders(0x42), (Indices{0, 1, 2, 3}));
}

TEST_F(VlapicBus, PhysicalDestinationFollowsAWrittenXapicId) {
  mmio_write(apic(3), reg::kId, 0x20u << 24);
  send_xapic(0, kFixed | 0x40, 0x20);
  EXPECT_EQ(holders(0x40), Indices{3});
}

TEST_F(VlapicBus, LogicalFlatMatchesLdrBits) {
  for (size_t i = 0; i < 4; ++i) mmio_write(apic(i), reg::kLdr, (1u << i) << 24);
  send_xapic(0, kFixed | kLogical | 0x50, 0x05);
  EXPECT_EQ(holders(0x50), (Indices{0, 2}));
  send_xapic(0, kFixed | kLogical | 0x51, 0x10);
  EXPECT_EQ(holders(0x51), Indices{});
  send_xapic(0, kFixed | kLogical | 0x52, 0xff);
  EXPECT_EQ(holders(0x52), (Indices{0, 1, 2, 3}));
}

TEST_F(VlapicBus, LogicalClusterMatchesClusterAndMember) {
  const uint32_t ldr[4] = {0x11, 0x12, 0x21, 0x22};  // cluster in 7:4, member bit in 3:0
  for (size_t i = 0; i < 4; ++i) {
    mmio_write(apic(i), reg::kDfr, 0x0fffffff);
    mmio_write(apic(i), reg::kLdr, ldr[i] << 24);
  }
  send_xapic(0, kFixed | kLogical | 0x50, 0x13);
  EXPECT_EQ(holders(0x50), (Indices{0, 1}));
  send_xapic(0, kFixed | kLogical | 0x51, 0x22);
  EXPECT_EQ(holders(0x51), Indices{3});
  send_xapic(0, kFixed | kLogical | 0x52, 0x31);
  EXPECT_EQ(holders(0x52), Indices{}) << "cluster 3 is empty";
  send_xapic(0, kFixed | kLogical | 0x53, 0xff);
  EXPECT_EQ(holders(0x53), (Indices{0, 1, 2, 3}));
}

TEST_F(VlapicBus, X2apicPhysicalAndClusterDestinations) {
  apics.clear();
  bus = ApicBus();
  build({0x0, 0x1, 0x10, 0x10011});
  for (auto& a : apics) ASSERT_TRUE(a->set_apic_base(kX2apicBase));
  send_x2apic(0, kFixed | 0x40, 0x10011);
  EXPECT_EQ(holders(0x40), Indices{3});
  send_x2apic(0, kFixed | 0x41, 0x11);
  EXPECT_EQ(holders(0x41), Indices{}) << "32-bit IDs: 0x11 is not 0x10011";
  send_x2apic(0, kFixed | kLogical | 0x42, 0x00000003);  // cluster 0, members 0 and 1
  EXPECT_EQ(holders(0x42), (Indices{0, 1}));
  send_x2apic(0, kFixed | kLogical | 0x43, 0x00010001);  // cluster 1, member 0 = ID 0x10
  EXPECT_EQ(holders(0x43), Indices{2});
  send_x2apic(0, kFixed | kLogical | 0x44, 0x10010002);  // cluster 0x1001, member 1
  EXPECT_EQ(holders(0x44), Indices{3});
  send_x2apic(0, kFixed | 0x45, 0xffffffff);
  EXPECT_EQ(holders(0x45), (Indices{0, 1, 2, 3}));
  send_x2apic(0, kFixed | 0x46, 0xff);
  EXPECT_EQ(holders(0x46), Indices{}) << "in x2APIC form 0xff is ID 255, not broadcast";
}

TEST_F(VlapicBus, ShorthandsIgnoreTheDestination) {
  constexpr uint32_t kSelf = 1u << 18, kAll = 2u << 18, kAllButSelf = 3u << 18;
  send_xapic(1, kFixed | kSelf | 0x60, 3);
  EXPECT_EQ(holders(0x60), Indices{1});
  send_xapic(1, kFixed | kAll | 0x61, 3);
  EXPECT_EQ(holders(0x61), (Indices{0, 1, 2, 3}));
  DeliveryReport report = send_xapic(1, kFixed | kAllButSelf | 0x62, 1);
  EXPECT_EQ(holders(0x62), (Indices{0, 2, 3}));
  EXPECT_EQ(report.initial_ids, (Ids{0, 2, 3}));
}

TEST_F(VlapicBus, X2apicSelfIpiGoesThroughTheBusToItsSender) {
  ASSERT_TRUE(apic(2).set_apic_base(kX2apicBase));
  std::optional<ApicWriteEffect> effect = apic(2).write_msr(msr_for(reg::kSelfIpi), 0x77);
  ASSERT_TRUE(effect && effect->ipi);
  bus.send(apic(2), *effect->ipi);
  EXPECT_EQ(holders(0x77), Indices{2});
}

TEST_F(VlapicBus, LevelTriggeredFixedIpiMarksTmrAndDeassertDeliversNothing) {
  send_xapic(0, 0xc000 | 0x70, 1);  // level, assert
  EXPECT_TRUE(apic(1).tmr().test(0x70));
  EXPECT_EQ(holders(0x70), Indices{1});
  EXPECT_EQ(send_xapic(0, 0x8000 | 0x71, 1).initial_ids, Ids{});  // level, de-assert
  EXPECT_EQ(holders(0x71), Indices{});
}

TEST_F(VlapicBus, LowestPriorityGoesToTheLowestPpr) {
  for (size_t i = 0; i < 4; ++i) mmio_write(apic(i), reg::kLdr, (1u << i) << 24);
  const uint8_t tpr[4] = {0x20, 0x10, 0x30, 0x10};
  for (size_t i = 0; i < 4; ++i) apic(i).set_tpr(tpr[i]);
  DeliveryReport report = send_xapic(0, 0x4100 | kLogical | 0x80, 0x0f);
  EXPECT_EQ(report.initial_ids, Ids{1}) << "lowest PPR, the first of equals";
  EXPECT_EQ(holders(0x80), Indices{1});
  send_xapic(0, 0x4100 | kLogical | 0x81, 0x0d);  // APICs 0, 2, 3
  EXPECT_EQ(holders(0x81), Indices{3});
}

TEST_F(VlapicBus, LowestPrioritySkipsSoftwareDisabledApics) {
  mmio_write(apic(0), reg::kSvr, 0xff);
  apic(1).set_tpr(0x40);
  apic(2).set_tpr(0x40);
  apic(3).set_tpr(0x50);
  EXPECT_EQ(send_xapic(1, 0x4100 | 0x82, 0xff).initial_ids, Ids{1});
  EXPECT_EQ(holders(0x82), Indices{1});
}

TEST_F(VlapicBus, XapicBroadcastReachesX2apicTargets) {
  ASSERT_TRUE(apic(2).set_apic_base(kX2apicBase));
  send_xapic(0, kFixed | 0x40, 0xff);
  EXPECT_EQ(holders(0x40), (Indices{0, 1, 2, 3}));
  send_xapic(0, kFixed | 0x41, 2);
  EXPECT_EQ(holders(0x41), Indices{2}) << "each target matches in its own mode";
}

TEST_F(VlapicBus, NmiIpiSetsTheTargetsNmi) {
  send_xapic(0, 0x4400, 3);
  EXPECT_TRUE(apic(3).take_nmi());
  EXPECT_FALSE(apic(2).take_nmi());
}

TEST_F(VlapicBus, InitSipiSipiStartsAnAp) {
  apic(2).receive_init();  // as after its power-up: waiting for SIPI
  ASSERT_TRUE(apic(2).take_init());
  apic(2).accept(0x90, false);

  EXPECT_EQ(send_xapic(0, 0xc500, 2).initial_ids, Ids{2});  // INIT, level, assert
  EXPECT_TRUE(apic(2).take_init());
  EXPECT_TRUE(apic(2).irr().empty()) << "INIT reset the APIC";
  EXPECT_EQ(apic(2).mp_state(), MpState::kWaitForSipi);
  EXPECT_EQ(send_xapic(0, 0x8500, 2).initial_ids, Ids{}) << "INIT level de-assert is ignored";
  EXPECT_FALSE(apic(2).take_init());

  send_xapic(0, 0x4600 | 0x9a, 2);  // SIPI, start page 0x9a000
  EXPECT_EQ(apic(2).mp_state(), MpState::kRunnable);
  EXPECT_EQ(apic(2).take_sipi(), 0x9a000u);
  send_xapic(0, 0x4600 | 0x9a, 2);  // the second SIPI of the sequence: ignored
  EXPECT_EQ(apic(2).take_sipi(), std::nullopt);
  EXPECT_EQ(apic(1).mp_state(), MpState::kWaitForSipi) << "not addressed";
}

TEST_F(VlapicBus, InitAndSipiReachSoftwareDisabledApicsButFixedInterruptsDoNot) {
  mmio_write(apic(1), reg::kSvr, 0xff);
  send_xapic(0, kFixed | 0x40, 1);
  EXPECT_EQ(holders(0x40), Indices{});
  send_xapic(0, 0xc500, 1);
  EXPECT_TRUE(apic(1).take_init());
  send_xapic(0, 0x4400, 1);
  EXPECT_TRUE(apic(1).take_nmi());
}

TEST_F(VlapicBus, GloballyDisabledApicsReceiveNothing) {
  ASSERT_TRUE(apic(3).set_apic_base(kApicBaseDefault));
  EXPECT_EQ(send_xapic(0, kFixed | 0x40, 0xff).initial_ids, (Ids{0, 1, 2}));
  send_xapic(0, 0xc500, 3);
  EXPECT_FALSE(apic(3).take_init());
}

TEST_F(VlapicBus, ExternalMessagesAndDetach) {
  InterruptCommand msi;
  msi.vector = 0x33;
  msi.destination = 1;
  bus.deliver(msi);
  EXPECT_EQ(holders(0x33), Indices{1});
  msi.delivery = DeliveryMode::kExtInt;
  bus.deliver(msi);
  EXPECT_TRUE(apic(1).take_extint());
  msi.delivery = DeliveryMode::kSmi;
  EXPECT_EQ(bus.deliver(msi).initial_ids, Ids{}) << "no SMM";
  bus.detach(apic(1));
  msi.delivery = DeliveryMode::kFixed;
  EXPECT_EQ(bus.deliver(msi).initial_ids, Ids{});
}

}  // namespace
}  // namespace vmctl::vmm::vlapic
