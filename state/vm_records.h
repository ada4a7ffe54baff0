// The VM-level records of the stream (state/stream.h): the irqchip (PICs, IOAPIC), the PIT, the
// kvmclock and the legacy devices (serial port, CMOS RTC), saved from and restored into a Vm.
// Under --irqchip user the irqchip and PIT records hold those devices masked in their reset state
// and a restore drops them after checking they are unused (state/user_irqchip_state.h).
#pragma once

#include <map>
#include <vector>

#include "base/error.h"
#include "state/stream.h"
#include "vmm/vm.h"

namespace vmctl::state {

Status write_vm_records(vmm::Vm& vm, RecordWriter& writer);
// `records`: by record type, as the stream brought them.
Status restore_vm_records(vmm::Vm& vm, const std::map<int, std::vector<Record>>& records);

}  // namespace vmctl::state
