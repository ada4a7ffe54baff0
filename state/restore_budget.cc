#include "state/restore_budget.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "base/size.h"
#include "vmm/kvm/kvm.h"

namespace vmctl::state {

Result<HostMemory> read_host_memory(const std::string& meminfo_path) {
  std::ifstream in(meminfo_path);
  if (!in) return Error::failure(fmt::format("cannot read {}", meminfo_path));
  HostMemory memory;
  bool total = false;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string key, unit;
    uint64_t kib = 0;
    if (!(fields >> key >> kib)) continue;
    if (key == "MemTotal:") {
      memory.total = kib << 10;
      total = true;
    } else if (key == "MemAvailable:") {
      memory.available = kib << 10;
    }
  }
  if (!total) return Error::failure(fmt::format("{} has no MemTotal line", meminfo_path));
  return memory;
}

Status check_guest_budget(const std::string& stream, uint64_t memory_size, unsigned vcpus,
                          const RestoreBudget& budget, const HostMemory& host,
                          unsigned kvm_max_vcpus) {
  if (memory_size == 0 || memory_size % 4096 != 0) {
    return Error::user(fmt::format(
        "{}: the header gives the guest {} bytes of RAM, not a whole number of pages: corrupt",
        stream, memory_size));
  }
  // The host's RAM, not what is free right now: guest RAM is allocated as the guest touches it
  // (zero pages never are), so a guest larger than MemAvailable may well run; one larger than all
  // of the host's RAM never could. The daemon's own limit comes on top.
  uint64_t memory_limit = host.total;
  bool configured = budget.max_guest_memory != 0 && budget.max_guest_memory < host.total;
  if (configured) memory_limit = budget.max_guest_memory;
  if (memory_size > memory_limit) {
    return Error::user(fmt::format(
        "{}: the guest has {} of RAM, more than {} ({}): restore it on a larger host", stream,
        format_size(memory_size), configured ? "this host allows a guest" : "this host has in all",
        format_size(memory_limit)));
  }
  unsigned vcpu_limit = vmm::kMaxVcpus;
  const char* why = "vmctl's limit";
  if (kvm_max_vcpus != 0 && kvm_max_vcpus < vcpu_limit) {
    vcpu_limit = kvm_max_vcpus;
    why = "what this host's KVM allows";
  }
  if (budget.max_vcpus != 0 && budget.max_vcpus < vcpu_limit) {
    vcpu_limit = budget.max_vcpus;
    why = "what this host allows a guest";
  }
  if (vcpus == 0) {
    return Error::user(fmt::format("{}: the header gives the guest no vCPUs: corrupt", stream));
  }
  if (vcpus > vcpu_limit) {
    return Error::user(fmt::format("{}: the guest has {} vCPUs, more than {} ({})", stream, vcpus,
                                   vcpu_limit, why));
  }
  return ok_status();
}

Status check_guest_fits_host(const std::string& stream, uint64_t memory_size, unsigned vcpus,
                             const RestoreBudget& budget) {
  HostMemory host = TRY(read_host_memory());
  vmm::kvm::KvmSystem kvm = TRY(vmm::kvm::KvmSystem::open());
  int kvm_max = kvm.check_extension(KVM_CAP_MAX_VCPUS);
  return check_guest_budget(stream, memory_size, vcpus, budget, host,
                            kvm_max > 0 ? static_cast<unsigned>(kvm_max) : 0);
}

}  // namespace vmctl::state
