// State of a VM whose interrupt controllers vmctl models in userspace (`--irqchip user`,
// vmm/vlapic/), in the same records as KVM's in-kernel irqchip, so that one snapshot restores into
// either implementation:
// - the local APICs go in the usual LAPIC records (KVM's register-page layout, state/lapic.h);
// - such a VM has no IOAPIC, PIC or PIT, so its IRQCHIP and PIT records hold those devices in
//   KVM's reset state with every input masked: restored into the in-kernel irqchip they deliver
//   nothing until the guest programs them, exactly as on the user VM;
// - restoring an in-kernel snapshot under `--irqchip user` drops its IOAPIC, PIC and PIT, which
//   is only sound while the guest does not use them: an IOAPIC with an unmasked pin or a PIT
//   whose channel 0 was programmed is refused, naming the pin or channel.
// MP state: an AP waiting for its SIPI records KVM_MP_STATE_INIT_RECEIVED, a halted vCPU
// KVM_MP_STATE_HALTED, as the in-kernel LAPIC reports them; a halted vCPU restored under
// --irqchip user resumes just past its HLT (an interrupt KVM had taken into the saved vCPU events
// is delivered only when the vCPU enters the guest).
#pragma once

#include <cstdint>

#include "base/error.h"
#include "vmm/kvm/kvm_uapi.h"

namespace vmctl::state {

kvm_irqchip reset_pic(bool master);
kvm_irqchip reset_ioapic();
kvm_pit_state2 reset_pit();

// Whether the in-kernel devices in a snapshot may be dropped for a restore under --irqchip user.
Status check_legacy_devices_unused(const kvm_irqchip& ioapic, const kvm_pit_state2& pit);

}  // namespace vmctl::state
