#include "state/cpu_features.h"

#include <cpuid.h>

#include <cstring>

namespace vmctl::state {
namespace {

enum Reg { kEax, kEbx, kEcx, kEdx };

struct FeatureBit {
  uint32_t leaf;
  uint32_t subleaf;
  Reg reg;
  int bit;
  const char* name;
};

// The features that decide whether guest code keeps running after a move (Intel SDM vol. 2
// CPUID, AMD APM vol. 3). Unnamed bits are not compared.
constexpr FeatureBit kFeatures[] = {
    {1, 0, kEdx, 0, "fpu"},
    {1, 0, kEdx, 4, "tsc"},
    {1, 0, kEdx, 5, "msr"},
    {1, 0, kEdx, 6, "pae"},
    {1, 0, kEdx, 8, "cx8"},
    {1, 0, kEdx, 9, "apic"},
    {1, 0, kEdx, 11, "sep"},
    {1, 0, kEdx, 12, "mtrr"},
    {1, 0, kEdx, 13, "pge"},
    {1, 0, kEdx, 15, "cmov"},
    {1, 0, kEdx, 16, "pat"},
    {1, 0, kEdx, 19, "clflush"},
    {1, 0, kEdx, 23, "mmx"},
    {1, 0, kEdx, 24, "fxsr"},
    {1, 0, kEdx, 25, "sse"},
    {1, 0, kEdx, 26, "sse2"},
    {1, 0, kEcx, 0, "sse3"},
    {1, 0, kEcx, 1, "pclmulqdq"},
    {1, 0, kEcx, 9, "ssse3"},
    {1, 0, kEcx, 12, "fma"},
    {1, 0, kEcx, 13, "cx16"},
    {1, 0, kEcx, 17, "pcid"},
    {1, 0, kEcx, 19, "sse4_1"},
    {1, 0, kEcx, 20, "sse4_2"},
    {1, 0, kEcx, 21, "x2apic"},
    {1, 0, kEcx, 22, "movbe"},
    {1, 0, kEcx, 23, "popcnt"},
    {1, 0, kEcx, 24, "tsc_deadline_timer"},
    {1, 0, kEcx, 25, "aes"},
    {1, 0, kEcx, 26, "xsave"},
    {1, 0, kEcx, 28, "avx"},
    {1, 0, kEcx, 29, "f16c"},
    {1, 0, kEcx, 30, "rdrand"},
    {7, 0, kEbx, 0, "fsgsbase"},
    {7, 0, kEbx, 3, "bmi1"},
    {7, 0, kEbx, 4, "hle"},
    {7, 0, kEbx, 5, "avx2"},
    {7, 0, kEbx, 7, "smep"},
    {7, 0, kEbx, 8, "bmi2"},
    {7, 0, kEbx, 9, "erms"},
    {7, 0, kEbx, 10, "invpcid"},
    {7, 0, kEbx, 11, "rtm"},
    {7, 0, kEbx, 16, "avx512f"},
    {7, 0, kEbx, 17, "avx512dq"},
    {7, 0, kEbx, 18, "rdseed"},
    {7, 0, kEbx, 19, "adx"},
    {7, 0, kEbx, 20, "smap"},
    {7, 0, kEbx, 21, "avx512ifma"},
    {7, 0, kEbx, 23, "clflushopt"},
    {7, 0, kEbx, 24, "clwb"},
    {7, 0, kEbx, 28, "avx512cd"},
    {7, 0, kEbx, 29, "sha_ni"},
    {7, 0, kEbx, 30, "avx512bw"},
    {7, 0, kEbx, 31, "avx512vl"},
    {7, 0, kEcx, 1, "avx512vbmi"},
    {7, 0, kEcx, 2, "umip"},
    {7, 0, kEcx, 3, "pku"},
    {7, 0, kEcx, 5, "waitpkg"},
    {7, 0, kEcx, 6, "avx512_vbmi2"},
    {7, 0, kEcx, 8, "gfni"},
    {7, 0, kEcx, 9, "vaes"},
    {7, 0, kEcx, 10, "vpclmulqdq"},
    {7, 0, kEcx, 11, "avx512_vnni"},
    {7, 0, kEcx, 12, "avx512_bitalg"},
    {7, 0, kEcx, 14, "avx512_vpopcntdq"},
    {7, 0, kEcx, 22, "rdpid"},
    {7, 0, kEcx, 27, "movdiri"},
    {7, 0, kEcx, 28, "movdir64b"},
    {7, 0, kEdx, 4, "fsrm"},
    {7, 0, kEdx, 8, "avx512_vp2intersect"},
    {7, 0, kEdx, 14, "serialize"},
    {7, 0, kEdx, 22, "amx_bf16"},
    {7, 0, kEdx, 24, "amx_tile"},
    {7, 0, kEdx, 25, "amx_int8"},
    {7, 1, kEax, 4, "avx_vnni"},
    {7, 1, kEax, 5, "avx512_bf16"},
    {0xd, 1, kEax, 0, "xsaveopt"},
    {0xd, 1, kEax, 1, "xsavec"},
    {0xd, 1, kEax, 3, "xsaves"},
    {0x80000001, 0, kEcx, 0, "lahf_lm"},
    {0x80000001, 0, kEcx, 5, "abm"},
    {0x80000001, 0, kEcx, 8, "3dnowprefetch"},
    {0x80000001, 0, kEdx, 11, "syscall"},
    {0x80000001, 0, kEdx, 20, "nx"},
    {0x80000001, 0, kEdx, 26, "pdpe1gb"},
    {0x80000001, 0, kEdx, 27, "rdtscp"},
    {0x80000001, 0, kEdx, 29, "lm"},
};

uint32_t reg_of(const vmm::CpuidEntry& e, Reg reg) {
  switch (reg) {
    case kEax:
      return e.eax;
    case kEbx:
      return e.ebx;
    case kEcx:
      return e.ecx;
    case kEdx:
      return e.edx;
  }
  return 0;
}

}  // namespace

std::vector<std::string> missing_cpu_features(const std::vector<vmm::CpuidEntry>& guest,
                                              const std::vector<vmm::CpuidEntry>& host_supported) {
  std::vector<std::string> missing;
  for (const FeatureBit& f : kFeatures) {
    const vmm::CpuidEntry* g = vmm::find_cpuid(guest, f.leaf, f.subleaf);
    if (!g || !(reg_of(*g, f.reg) & (1u << f.bit))) continue;
    const vmm::CpuidEntry* h = vmm::find_cpuid(host_supported, f.leaf, f.subleaf);
    if (!h || !(reg_of(*h, f.reg) & (1u << f.bit))) missing.push_back(f.name);
  }
  return missing;
}

HostCpu host_cpu() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __get_cpuid(0, &eax, &ebx, &ecx, &edx);
  char vendor[13] = {};
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  __get_cpuid(1, &eax, &ebx, &ecx, &edx);
  HostCpu cpu;
  cpu.vendor = vendor;
  cpu.family = (eax >> 8) & 0xf;
  cpu.model = (eax >> 4) & 0xf;
  // The extended family and model fields count only where the SDM/APM say they do.
  if (cpu.family == 0xf) cpu.family += (eax >> 20) & 0xff;
  if (cpu.family >= 6) cpu.model |= ((eax >> 16) & 0xf) << 4;
  cpu.stepping = eax & 0xf;
  return cpu;
}

std::vector<std::string> cpu_feature_names(const std::vector<vmm::CpuidEntry>& cpuid) {
  std::vector<std::string> names;
  for (const FeatureBit& f : kFeatures) {
    const vmm::CpuidEntry* e = vmm::find_cpuid(cpuid, f.leaf, f.subleaf);
    if (e && (reg_of(*e, f.reg) & (1u << f.bit))) names.push_back(f.name);
  }
  return names;
}

}  // namespace vmctl::state
