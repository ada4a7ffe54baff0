#include "vmm/vlapic/apic_bus.h"

#include <algorithm>

namespace vmctl::vmm::vlapic {
namespace {

constexpr uint32_t kXapicBroadcast = 0xff;
constexpr uint32_t kX2apicBroadcast = 0xffffffff;

}  // namespace

void ApicBus::attach(LocalApic& apic) {
  if (std::find(apics_.begin(), apics_.end(), &apic) == apics_.end()) apics_.push_back(&apic);
}

void ApicBus::detach(const LocalApic& apic) {
  std::erase(apics_, &apic);
}

bool ApicBus::matches(const LocalApic& target, const InterruptCommand& command) {
  bool target_x2apic = target.mode() == ApicMode::kX2apic;
  uint32_t destination = command.destination;
  if (target_x2apic) {
    if (!command.x2apic_destination && destination == kXapicBroadcast) return true;
    if (destination == kX2apicBroadcast) return true;
  } else {
    if (command.x2apic_destination) {
      if (destination == kX2apicBroadcast) return true;
      if (destination > 0xff) return false;  // no 8-bit xAPIC ID can match
    }
    if (destination == kXapicBroadcast) return true;
  }
  if (command.destination_mode == DestinationMode::kPhysical) return destination == target.id();

  uint32_t ldr = target.ldr();
  if (target_x2apic) {
    return (destination >> 16) == (ldr >> 16) && (destination & ldr & 0xffff) != 0;
  }
  uint32_t logical_id = ldr >> 24;
  if ((target.dfr() >> 28) == kDfrModelFlat) return (destination & logical_id) != 0;
  return (destination >> 4) == (logical_id >> 4) && (destination & logical_id & 0xf) != 0;
}

void ApicBus::deliver_to(LocalApic& target, const InterruptCommand& command) {
  switch (command.delivery) {
    case DeliveryMode::kFixed:
    case DeliveryMode::kLowestPriority:
      target.accept(command.vector, command.level_triggered);
      break;
    case DeliveryMode::kNmi:
      target.receive_nmi();
      break;
    case DeliveryMode::kInit:
      target.receive_init();
      break;
    case DeliveryMode::kStartup:
      target.receive_sipi(command.vector);
      break;
    case DeliveryMode::kExtInt:
      target.receive_extint();
      break;
    case DeliveryMode::kSmi:
    case DeliveryMode::kReserved3:
      break;
  }
}

DeliveryReport ApicBus::route(LocalApic* source, const InterruptCommand& command) {
  DeliveryReport report;
  if (command.delivery == DeliveryMode::kSmi || command.delivery == DeliveryMode::kReserved3) {
    return report;
  }
  if (command.delivery == DeliveryMode::kInit && command.level_triggered && !command.level_assert) {
    return report;  // INIT level de-assert: only arbitration IDs, which this model has none of
  }
  bool has_vector =
      command.delivery == DeliveryMode::kFixed || command.delivery == DeliveryMode::kLowestPriority;
  if (has_vector && command.level_triggered && !command.level_assert) return report;

  std::vector<LocalApic*> targets;
  for (LocalApic* apic : apics_) {
    if (apic->mode() == ApicMode::kDisabled) continue;
    bool addressed = false;
    switch (command.shorthand) {
      case Shorthand::kNone:
        addressed = matches(*apic, command);
        break;
      case Shorthand::kSelf:
        addressed = apic == source;
        break;
      case Shorthand::kAllIncludingSelf:
        addressed = true;
        break;
      case Shorthand::kAllExcludingSelf:
        addressed = apic != source;
        break;
    }
    if (addressed) targets.push_back(apic);
  }
  if (command.delivery == DeliveryMode::kLowestPriority && !targets.empty()) {
    // Among the APICs that can take a fixed interrupt, the lowest PPR; stable for ties.
    LocalApic* chosen = nullptr;
    for (LocalApic* apic : targets) {
      if (!apic->software_enabled()) continue;
      if (!chosen || apic->ppr() < chosen->ppr()) chosen = apic;
    }
    targets.assign(chosen ? 1 : 0, chosen);
  }
  for (LocalApic* apic : targets) {
    deliver_to(*apic, command);
    report.initial_ids.push_back(apic->initial_id());
  }
  return report;
}

DeliveryReport ApicBus::send(LocalApic& source, const InterruptCommand& command) {
  return route(&source, command);
}

DeliveryReport ApicBus::deliver(const InterruptCommand& command) {
  return route(nullptr, command);
}

}  // namespace vmctl::vmm::vlapic
