// CPU features a guest was given (its CPUID table) compared with what a host's KVM supports.
#pragma once

#include <string>
#include <vector>

#include "vmm/cpuid.h"

namespace vmctl::state {

// Names of the features set in `guest` that `host_supported` (KVM_GET_SUPPORTED_CPUID) lacks, in
// table order. Bits that describe OS state (OSXSAVE, OSPKE) or that the VMM sets itself
// (hypervisor) are not features and are not compared.
std::vector<std::string> missing_cpu_features(const std::vector<vmm::CpuidEntry>& guest,
                                              const std::vector<vmm::CpuidEntry>& host_supported);

}  // namespace vmctl::state
