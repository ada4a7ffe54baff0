// What a restore may cost this host, whatever the stream asks for. A snapshot file or a migration
// stream is untrusted input: its header could ask for more RAM or vCPUs than the host has, and its
// CPU and device records are held in memory until the trailer. Callers (the daemon) tighten the
// defaults; the defaults never exceed what the host can hold.
#pragma once

#include <cstdint>
#include <string>

#include "base/error.h"
#include "vmm/vm.h"

namespace vmctl::state {

struct RestoreBudget {
  // Guest RAM a stream may ask for. 0: this host's RAM (MemTotal); a larger value is capped to it.
  uint64_t max_guest_memory = 0;
  // vCPUs a stream may ask for. 0: vmm::kMaxVcpus; never more than this host's KVM allows.
  unsigned max_vcpus = 0;
  // Non-memory records (vCPU, LAPIC, irqchip, PIT, clock, devices) held from their arrival until
  // the trailer, per stream: a full machine of kMaxVcpus vCPUs needs ~2 per vCPU and a few more,
  // and well under 16 MiB (a vCPU record is ~8-20 KiB).
  uint64_t max_retained_records = 2 * vmm::kMaxVcpus + 64;
  uint64_t max_retained_bytes = 64ull << 20;
};

// /proc/meminfo's MemTotal and MemAvailable, in bytes.
struct HostMemory {
  uint64_t total = 0;
  uint64_t available = 0;
};
Result<HostMemory> read_host_memory(const std::string& meminfo_path = "/proc/meminfo");

// Whether a guest of `memory_size` bytes and `vcpus` vCPUs (as a stream's header describes it)
// fits the budget on a host with `host` memory whose KVM allows `kvm_max_vcpus` (0: unknown).
// A refusal names the stream, what it asks for and the limit.
Status check_guest_budget(const std::string& stream, uint64_t memory_size, unsigned vcpus,
                          const RestoreBudget& budget, const HostMemory& host,
                          unsigned kvm_max_vcpus);

// The same against this host: /proc/meminfo and KVM_CAP_MAX_VCPUS.
Status check_guest_fits_host(const std::string& stream, uint64_t memory_size, unsigned vcpus,
                             const RestoreBudget& budget);

}  // namespace vmctl::state
