// The CPUID table a vCPU is given: KVM's supported set, filtered for what vmctl can save, restore
// and migrate, with the topology leaves rewritten for this vCPU's APIC ID.
#pragma once

#include <cstdint>
#include <vector>

namespace vmctl::vmm {

// One CPUID leaf/subleaf, as KVM describes it (struct kvm_cpuid_entry2 without the padding). A
// plain value so the state layer can save it and compare it across hosts.
struct CpuidEntry {
  uint32_t function = 0;
  uint32_t index = 0;
  uint32_t flags = 0;  // KVM_CPUID_FLAG_SIGNIFCANT_INDEX (1) when `index` selects a subleaf
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

struct CpuTopology {
  unsigned num_cpus = 1;  // one core per vCPU, one thread per core, one package
};

// Returns the table for vCPU `apic_id`:
//  - leaf 0x1: initial APIC ID (EBX[31:24]), logical processor count (EBX[23:16]), HTT when >1 CPU,
//    the hypervisor bit (ECX[31]); VMX (ECX[5]) cleared: nested state is not saved or migrated.
//  - leaf 0x4: cores per package (EAX[31:26]) for every cache subleaf.
//  - leaf 0xB and 0x1F: x2APIC ID in EDX, SMT level (1 thread) and core level (num_cpus).
//  - leaf 0x80000001: SVM (ECX[2]) cleared, for the same reason as VMX.
std::vector<CpuidEntry> filter_cpuid(const std::vector<CpuidEntry>& supported, uint32_t apic_id,
                                     const CpuTopology& topology);

// Looks up a leaf/subleaf (subleaf ignored for leaves without a significant index).
const CpuidEntry* find_cpuid(const std::vector<CpuidEntry>& table, uint32_t function,
                             uint32_t index = 0);

}  // namespace vmctl::vmm
