#include "vmm/cpuid.h"

namespace vmctl::vmm {

namespace {

constexpr uint32_t kSignificantIndex = 1;  // KVM_CPUID_FLAG_SIGNIFCANT_INDEX

// Bits cleared from what the host offers (SDM Vol. 2A, CPUID).
constexpr uint32_t kLeaf1EcxVmx = 1u << 5;
constexpr uint32_t kLeaf1EcxHypervisor = 1u << 31;
constexpr uint32_t kLeaf1EdxHtt = 1u << 28;
constexpr uint32_t kExtLeaf1EcxSvm = 1u << 2;

// Topology level types for leaves 0xB/0x1F, ECX[15:8].
constexpr uint32_t kLevelSmt = 1;
constexpr uint32_t kLevelCore = 2;

unsigned bits_for(unsigned count) {
  unsigned bits = 0;
  while ((1u << bits) < count) ++bits;
  return bits;
}

}  // namespace

std::vector<CpuidEntry> filter_cpuid(const std::vector<CpuidEntry>& supported, uint32_t apic_id,
                                     const CpuTopology& topology) {
  const unsigned n = topology.num_cpus == 0 ? 1 : topology.num_cpus;
  std::vector<CpuidEntry> out;
  out.reserve(supported.size());
  for (CpuidEntry e : supported) {
    switch (e.function) {
      case 0x1:
        e.ebx = (e.ebx & 0x0000ffff) | ((n & 0xff) << 16) | ((apic_id & 0xff) << 24);
        e.ecx = (e.ecx & ~kLeaf1EcxVmx) | kLeaf1EcxHypervisor;
        if (n > 1) {
          e.edx |= kLeaf1EdxHtt;
        } else {
          e.edx &= ~kLeaf1EdxHtt;
        }
        break;
      case 0x4:
        // EAX[31:26] = addressable core IDs per package - 1; EAX[25:14] = threads sharing - 1 are
        // left as the host reports them only when the cache level is shared by one core.
        if ((e.eax & 0x1f) != 0) e.eax = (e.eax & 0x03ffffff) | ((n - 1) << 26);
        break;
      case 0xb:
      case 0x1f: {
        e.flags |= kSignificantIndex;
        e.edx = apic_id;
        if (e.index == 0) {
          e.eax = 0;  // no SMT bits in the APIC ID
          e.ebx = 1;
          e.ecx = (kLevelSmt << 8) | e.index;
        } else if (e.index == 1) {
          e.eax = bits_for(n);
          e.ebx = n;
          e.ecx = (kLevelCore << 8) | e.index;
        } else {
          e.eax = 0;
          e.ebx = 0;
          e.ecx = e.index;  // invalid level terminates the enumeration
        }
        break;
      }
      case 0x80000001:
        e.ecx &= ~kExtLeaf1EcxSvm;
        break;
      default:
        break;
    }
    out.push_back(e);
  }
  return out;
}

const CpuidEntry* find_cpuid(const std::vector<CpuidEntry>& table, uint32_t function,
                             uint32_t index) {
  for (const CpuidEntry& e : table) {
    if (e.function != function) continue;
    if ((e.flags & kSignificantIndex) && e.index != index) continue;
    return &e;
  }
  return nullptr;
}

}  // namespace vmctl::vmm
