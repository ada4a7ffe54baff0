// An interrupt message on the APIC bus: an IPI decoded from the ICR (Intel SDM 10.6.1; x2APIC form
// in 10.12.9), or later an MSI/IOAPIC message in the same shape.
#pragma once

#include <cstdint>

#include "vmm/vlapic/apic_registers.h"

namespace vmctl::vmm::vlapic {

enum class DestinationMode : uint8_t { kPhysical, kLogical };
enum class Shorthand : uint8_t { kNone, kSelf, kAllIncludingSelf, kAllExcludingSelf };

struct InterruptCommand {
  uint8_t vector = 0;
  DeliveryMode delivery = DeliveryMode::kFixed;
  DestinationMode destination_mode = DestinationMode::kPhysical;
  // ICR bit 14. INIT with level de-asserted is the obsolete "INIT level de-assert".
  bool level_assert = true;
  bool level_triggered = false;  // ICR bit 15
  Shorthand shorthand = Shorthand::kNone;
  // xAPIC: the 8-bit destination (ICR bits 63:56); x2APIC: the 32-bit destination (bits 63:32).
  uint32_t destination = 0;
  bool x2apic_destination = false;  // which of the two forms `destination` is (fixes broadcast)

  bool operator==(const InterruptCommand&) const = default;

  // ICR low and high as the xAPIC registers hold them, or the x2APIC MSR's halves.
  static InterruptCommand from_icr(uint32_t low, uint32_t high, bool x2apic) {
    InterruptCommand c;
    c.vector = static_cast<uint8_t>(low & 0xff);
    c.delivery = delivery_mode_of(low);
    c.destination_mode =
        (low & (1u << 11)) ? DestinationMode::kLogical : DestinationMode::kPhysical;
    c.level_assert = (low >> 14) & 1;
    c.level_triggered = (low >> 15) & 1;
    c.shorthand = static_cast<Shorthand>((low >> 18) & 3);
    c.destination = x2apic ? high : high >> 24;
    c.x2apic_destination = x2apic;
    return c;
  }
};

}  // namespace vmctl::vmm::vlapic
