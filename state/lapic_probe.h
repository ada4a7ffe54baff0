// Whether this host's in-kernel local APIC honours in-service vectors given to it through
// KVM_SET_LAPIC: found by running a throwaway vCPU, because some KVMs (the paravirtual one this
// project is developed on) derive PPR from ISR only once the vCPU runs, so a PPR read straight
// after KVM_SET_LAPIC says nothing.
#pragma once

#include "base/error.h"

namespace vmctl::state {

// Creates a one-vCPU VM, gives its local APIC vector 0x51 in service with TPR 0, runs the vCPU
// until its first instruction exits, and reads PPR back: 0x50 means KVM keeps the vector (true),
// anything else that it does not (false). An error when no VM could be built or run.
Result<bool> probe_kvm_keeps_in_service_vectors();

// The probe's answer, found once per process (a restore asks it only when its read-back PPR
// disagrees with the record).
Result<bool> kvm_keeps_in_service_vectors();

}  // namespace vmctl::state
