#include "state/user_irqchip_state.h"

#include <fmt/format.h>

namespace vmctl::state {
namespace {

constexpr uint64_t kIoapicBase = 0xfec00000;
constexpr uint64_t kRedirectionMasked = 1ull << 16;
constexpr uint8_t kPitChannelUnprogrammed = 0xff;  // KVM's reset marker for a channel's mode

}  // namespace

kvm_irqchip reset_pic(bool master) {
  kvm_irqchip chip{};
  chip.chip_id = master ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
  chip.chip.pic.imr = 0xff;  // every input masked
  // The inputs that may be level-triggered (ELCR): as KVM's i8259 has them.
  chip.chip.pic.elcr_mask = master ? 0xf8 : 0xde;
  return chip;
}

kvm_irqchip reset_ioapic() {
  kvm_irqchip chip{};
  chip.chip_id = KVM_IRQCHIP_IOAPIC;
  chip.chip.ioapic.base_address = kIoapicBase;
  for (auto& entry : chip.chip.ioapic.redirtbl) entry.bits = kRedirectionMasked;
  return chip;
}

kvm_pit_state2 reset_pit() {
  kvm_pit_state2 pit{};
  for (int i = 0; i < 3; ++i) {
    pit.channels[i].mode = kPitChannelUnprogrammed;
    pit.channels[i].count = 0x10000;  // a count of 0 is 65536
    pit.channels[i].gate = i != 2;    // channel 2's gate is port 0x61 bit 0, off at reset
  }
  return pit;
}

Status check_legacy_devices_unused(const kvm_irqchip& ioapic, const kvm_pit_state2& pit) {
  for (unsigned pin = 0; pin < KVM_IOAPIC_NUM_PINS; ++pin) {
    if (!(ioapic.chip.ioapic.redirtbl[pin].bits & kRedirectionMasked)) {
      return Error::user(fmt::format(
          "the snapshot's guest routes interrupts through the IOAPIC (pin {} is unmasked), which "
          "--irqchip user does not model: restore it with --irqchip kernel",
          pin));
    }
  }
  if (pit.channels[0].mode != kPitChannelUnprogrammed) {
    return Error::user(
        "the snapshot's guest programmed the PIT's timer (channel 0), which --irqchip user does "
        "not model: restore it with --irqchip kernel");
  }
  return ok_status();
}

}  // namespace vmctl::state
