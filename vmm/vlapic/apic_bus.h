// The APIC bus: routes interrupt messages (IPIs from an ICR or SELF_IPI write, later MSIs and
// IOAPIC redirections) to the local APICs they address, per Intel SDM vol. 3A 10.6.2 (xAPIC) and
// 10.12.9-10.12.10 (x2APIC):
// - Physical: the destination equals the target's APIC ID; 0xff (xAPIC) or 0xffffffff (x2APIC)
//   is broadcast.
// - Logical, xAPIC flat (DFR model 1111b): the 8-bit destination ANDed with LDR[31:24].
// - Logical, xAPIC cluster (DFR model 0000b): destination[7:4] equals LDR[31:28] and
//   destination[3:0] ANDed with LDR[27:24]; 0xff is broadcast.
// - Logical, x2APIC cluster: destination[31:16] equals LDR[31:16] and destination[15:0] ANDed with
//   LDR[15:0]; 0xffffffff is broadcast.
// - Shorthands self, all-including-self and all-excluding-self ignore the destination.
// Each target interprets the destination in its own mode and DFR (a guest mixing modes is
// misconfigured; an xAPIC broadcast still reaches x2APIC targets, as in KVM).
//
// Delivery: fixed (the vector into IRR), lowest priority (to the one matching APIC with the lowest
// PPR, ties to the first attached; the SDM also allows plain "first matching", and leaves focus
// checking out of this model), NMI, INIT (INIT level de-assert is ignored, as on Pentium 4 and
// later), SIPI and ExtINT. SMI and the reserved mode are dropped. A fixed IPI with level
// de-asserted delivers nothing. Globally disabled APICs receive nothing.
#pragma once

#include <cstdint>
#include <vector>

#include "vmm/vlapic/interrupt_command.h"
#include "vmm/vlapic/local_apic.h"

namespace vmctl::vmm::vlapic {

// Which APICs a message reached (their initial IDs), so the run loop can kick their vCPUs.
struct DeliveryReport {
  std::vector<uint32_t> initial_ids;
};

class ApicBus {
 public:
  // The bus does not own the APICs; they must outlive it (or be detached).
  void attach(LocalApic& apic);
  void detach(const LocalApic& apic);

  // An IPI from `source` (whose shorthands name it).
  DeliveryReport send(LocalApic& source, const InterruptCommand& command);
  // A message from outside any APIC (MSI, IOAPIC): shorthands reach nobody/everybody.
  DeliveryReport deliver(const InterruptCommand& command);

  // Whether `target` is addressed by `command`'s destination (ignoring shorthands).
  static bool matches(const LocalApic& target, const InterruptCommand& command);

 private:
  DeliveryReport route(LocalApic* source, const InterruptCommand& command);
  static void deliver_to(LocalApic& target, const InterruptCommand& command);

  std::vector<LocalApic*> apics_;
};

}  // namespace vmctl::vmm::vlapic
