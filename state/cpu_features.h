// CPU features a guest was given (its CPUID table) compared with what a host's KVM supports.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vmm/cpuid.h"

namespace vmctl::state {

// Names of the features set in `guest` that `host_supported` (KVM_GET_SUPPORTED_CPUID) lacks, in
// table order. Bits that describe OS state (OSXSAVE, OSPKE) or that the VMM sets itself
// (hypervisor) are not features and are not compared.
std::vector<std::string> missing_cpu_features(const std::vector<vmm::CpuidEntry>& guest,
                                              const std::vector<vmm::CpuidEntry>& host_supported);

// The host CPU as CPUID leaves 0 and 1 name it.
struct HostCpu {
  std::string vendor;  // "GenuineIntel", "AuthenticAMD"
  uint32_t family = 0, model = 0, stepping = 0;
};
HostCpu host_cpu();

// Names of the compared features that `cpuid` has, in table order (for host reports).
std::vector<std::string> cpu_feature_names(const std::vector<vmm::CpuidEntry>& cpuid);

}  // namespace vmctl::state
