// host_report(): what this host's KVM and CPU offer, gathered from KVM, sysfs and /proc/cpuinfo.
#include "state/host_report.h"

#include <cpuid.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>

#include <fmt/format.h>

#include "base/text.h"
#include "state/cpu_features.h"
#include "state/lapic_probe.h"
#include "vmm/kvm/kvm.h"

namespace vmctl::state {
namespace {

std::string read_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// "yes"/"no" from a kvm_intel/kvm_amd module parameter ("Y", "1", "N", "0"), or "" if absent.
std::string module_param(const std::string& module, const std::string& param) {
  std::string v = read_line("/sys/module/" + module + "/parameters/" + param);
  if (v.empty()) return "";
  return (v == "Y" || v == "y" || v == "1") ? "yes" : "no";
}

// The host CPU's flags and (on newer kernels) its "vmx flags" line from /proc/cpuinfo.
std::set<std::string> cpuinfo_flags() {
  std::set<std::string> flags;
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    bool flag_line = line.rfind("flags", 0) == 0 || line.rfind("vmx flags", 0) == 0;
    if (!flag_line) {
      if (line.empty() && !flags.empty()) break;  // the first processor is enough
      continue;
    }
    std::string list = line.substr(line.find(':') + 1);
    size_t pos = 0;
    while (pos < list.size()) {
      size_t start = list.find_first_not_of(' ', pos);
      if (start == std::string::npos) break;
      size_t end = list.find(' ', start);
      flags.insert(list.substr(start, end - start));
      pos = end == std::string::npos ? list.size() : end;
    }
  }
  return flags;
}

}  // namespace

Result<nlohmann::json> host_report() {
  vmm::kvm::KvmSystem kvm = TRY(vmm::kvm::KvmSystem::open());
  nlohmann::json caps;
  const std::pair<const char*, long> wanted[] = {
      {"irqchip", KVM_CAP_IRQCHIP},
      {"pit2", KVM_CAP_PIT2},
      {"x2apic_api", KVM_CAP_X2APIC_API},
      {"manual_dirty_log_protect", KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2},
      {"dirty_log_ring", KVM_CAP_DIRTY_LOG_RING},
      {"xsave2", KVM_CAP_XSAVE2},
      {"binary_stats_fd", KVM_CAP_BINARY_STATS_FD},
      {"tsc_control", KVM_CAP_TSC_CONTROL},
      {"get_tsc_khz", KVM_CAP_GET_TSC_KHZ},
      {"immediate_exit", KVM_CAP_IMMEDIATE_EXIT},
      {"vcpu_events", KVM_CAP_VCPU_EVENTS},
      {"kvmclock_ctrl", KVM_CAP_KVMCLOCK_CTRL},
      {"max_vcpus", KVM_CAP_MAX_VCPUS},
  };
  // Some capabilities are answered per VM only.
  Result<vmm::kvm::VmFd> vm = kvm.create_vm();
  for (const auto& [name, cap] : wanted) {
    int v = vm.ok() ? vm->check_extension(cap) : kvm.check_extension(cap);
    caps[name] = v;
  }

  HostCpu cpu = host_cpu();
  std::vector<vmm::CpuidEntry> supported = TRY(kvm.get_supported_cpuid());
  std::set<std::string> flags = cpuinfo_flags();
  bool intel = cpu.vendor == "GenuineIntel";
  std::string module = intel ? "kvm_intel" : "kvm_amd";
  // The module parameter says what KVM uses; the cpuinfo flag says what the CPU has. Neither
  // present (a nested or paravirtual KVM): unknown.
  auto feature = [&](const std::string& param, std::initializer_list<const char*> cpu_flags) {
    std::string p = param.empty() ? "" : module_param(module, param);
    if (!p.empty()) return p;
    for (const char* f : cpu_flags) {
      if (flags.count(f)) return std::string("cpu has it");
    }
    return std::string("unknown");
  };
  nlohmann::json virt;
  if (intel) {
    virt["tpr_shadow"] = feature("flexpriority", {"tpr_shadow", "flexpriority"});
    virt["apic_virtualization"] = feature("enable_apicv", {"apicv"});
    virt["two_level_paging"] = feature("ept", {"ept"});
    virt["vpid"] = feature("vpid", {"vpid"});
    virt["pml"] = feature("pml", {"pml"});
  } else {
    // AMD has no TPR shadow as such: CR8 writes are handled by the CPU (V_TPR) with NPT/AVIC.
    virt["tpr_shadow"] = feature("", {"v_tpr"});
    virt["apic_virtualization"] = feature("avic", {"avic"});
    virt["two_level_paging"] = feature("npt", {"npt"});
    virt["vpid"] = feature("", {"asid"});
    virt["pml"] = "no (Intel only)";
  }
  std::vector<std::string> loaded;
  for (const char* m : {"kvm_intel", "kvm_amd", "kvm_pvm"}) {
    if (::access((std::string("/sys/module/") + m).c_str(), F_OK) == 0) loaded.push_back(m);
  }

  utsname u{};
  uname(&u);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  int tsc_khz = -1;
  // -1 unknown, else whether KVM derives PPR from in-service vectors given to it (KVM_SET_LAPIC).
  int keeps_in_service = -1;
  if (Result<bool> keeps = probe_kvm_keeps_in_service_vectors(); keeps.ok()) {
    keeps_in_service = *keeps ? 1 : 0;
  }
  if (vm.ok()) {
    Result<vmm::kvm::VcpuFd> vcpu = vm->create_vcpu(0);
    if (vcpu.ok()) {
      Result<uint32_t> khz = vcpu->get_tsc_khz();
      if (khz.ok()) tsc_khz = static_cast<int>(*khz);
      // Some hosts' KVM (paravirtual ones) report a narrower table than a vCPU given it ends up
      // with; the guest sees the latter, so count both, as restore does.
      if (vcpu->set_cpuid2(supported).ok()) {
        Result<std::vector<vmm::CpuidEntry>> effective = vcpu->get_cpuid2();
        if (effective.ok()) {
          for (vmm::CpuidEntry& e : supported) {
            if (const vmm::CpuidEntry* w = vmm::find_cpuid(*effective, e.function, e.index)) {
              e.eax |= w->eax;
              e.ebx |= w->ebx;
              e.ecx |= w->ecx;
              e.edx |= w->edx;
            }
          }
        }
      }
    }
  }
  // The report goes out as JSON (GetHostInfo): text the kernel returns is made valid UTF-8.
  return nlohmann::json{{"hostname", sanitize_text(host, 255)},
                        {"kernel", sanitize_text(u.release, 256)},
                        // KvmSystem::open refuses any API version but the stable 12.
                        {"kvm",
                         {{"api_version", 12},
                          {"modules", loaded},
                          {"capabilities", caps},
                          {"lapic_keeps_in_service_vectors", keeps_in_service}}},
                        {"cpu",
                         {{"vendor", sanitize_text(cpu.vendor, 64)},
                          {"family", cpu.family},
                          {"model", cpu.model},
                          {"tsc_khz", tsc_khz}}},
                        {"virtualization", virt},
                        {"guest_cpu_features", cpu_feature_names(supported)}};
}

}  // namespace vmctl::state
