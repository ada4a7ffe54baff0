#include "state/host_report.h"

#include <cpuid.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <kj/exception.h>

#include "base/text.h"
#include "state/cpu_features.h"
#include "state/lapic.h"
#include "state/stream.h"
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

// A local APIC given vector 0x51 in service must report PPR 0x50. Some paravirtual KVMs keep no
// in-service vectors at all (neither when they deliver an interrupt nor when given them), so a
// snapshot taken inside a guest's interrupt handler cannot be restored there (restore refuses).
int probe_in_service_vectors(vmm::kvm::VcpuFd& vcpu) {
  constexpr uint64_t kApicBase = 0xfee00900;  // enabled, xAPIC, boot processor
  Result<kvm_lapic_state> page = vcpu.get_lapic();
  if (!page.ok()) return -1;
  LapicState s = decode_lapic(*page, kApicBase, 0, false);
  s.svr = 0x1ff;  // software-enabled
  s.isr.set(0x51);
  if (!vcpu.set_lapic(encode_lapic(s, false)).ok()) return -1;
  Result<kvm_lapic_state> after = vcpu.get_lapic();
  if (!after.ok()) return -1;
  return decode_lapic(*after, kApicBase, 0, false).ppr == 0x50 ? 1 : 0;
}

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
  if (vm.ok()) {
    bool irqchip = vm->create_irqchip().ok();
    Result<vmm::kvm::VcpuFd> vcpu = vm->create_vcpu(0);
    if (vcpu.ok() && irqchip) keeps_in_service = probe_in_service_vectors(*vcpu);
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

namespace {

// Readers of a validated report (validate_host_report): required fields are there with their
// types; optional ones are looked up.
const nlohmann::json& field(const nlohmann::json& j, const char* key) {
  return j.at(key);
}
int int_field(const nlohmann::json& j, const char* key, int fallback) {
  auto it = j.find(key);
  return it == j.end() ? fallback : it->get<int>();
}
std::string text_field(const nlohmann::json& j, const char* key) {
  return sanitize_text(j.at(key).get<std::string>());
}
int capability(const nlohmann::json& report, const char* name) {
  return int_field(field(field(report, "kvm"), "capabilities"), name, 0);
}

}  // namespace

std::string format_host_report(const nlohmann::json& r) {
  Status valid = validate_host_report(r);
  if (!valid.ok()) return valid.error().message() + "\n";
  const nlohmann::json& kvm = field(r, "kvm");
  const nlohmann::json& cpu = field(r, "cpu");
  std::string out =
      fmt::format("host {} (Linux {})\n", text_field(r, "hostname"), text_field(r, "kernel"));
  out += fmt::format("cpu  {} family {} model {}, TSC {} kHz\n", text_field(cpu, "vendor"),
                     int_field(cpu, "family", 0), int_field(cpu, "model", 0),
                     int_field(cpu, "tsc_khz", -1));
  std::string modules;
  if (auto it = kvm.find("modules"); it != kvm.end()) {
    for (const auto& m : *it) modules += " " + m.get<std::string>();
  }
  out += fmt::format("kvm  modules:{}\n", modules.empty() ? " (built in)" : modules);
  out += "\nKVM capabilities the VMM uses:\n";
  for (const auto& [name, value] : field(kvm, "capabilities").items()) {
    int v = value.get<int>();
    out += fmt::format("  {:<26} {}\n", name, v == 0 ? "no" : v == 1 ? "yes" : std::to_string(v));
  }
  int keeps = int_field(kvm, "lapic_keeps_in_service_vectors", -1);
  out += fmt::format("  {:<26} {}\n", "lapic_in_service_vectors",
                     keeps < 0    ? "unknown"
                     : keeps == 1 ? "kept (PPR follows ISR)"
                                  : "ignored (PPR ignores ISR: snapshots taken inside a guest's "
                                    "interrupt handler are refused here)");
  out += "\nvirtualization features (from what the kernel publishes):\n";
  if (auto it = r.find("virtualization"); it != r.end()) {
    for (const auto& [name, value] : it->items()) {
      out += fmt::format("  {:<26} {}\n", name, sanitize_text(value.get<std::string>()));
    }
  }
  const nlohmann::json& features = field(r, "guest_cpu_features");
  out += fmt::format("\nCPU features KVM offers guests ({}):\n ", features.size());
  size_t col = 1;
  for (const auto& f : features) {
    std::string name = f.get<std::string>();
    if (col + name.size() + 1 > 100) {
      out += "\n ";
      col = 1;
    }
    out += " " + name;
    col += name.size() + 1;
  }
  return out + "\n";
}

MoveVerdict check_move(const nlohmann::json& from, const nlohmann::json& to,
                       const std::vector<std::string>* guest_features) {
  MoveVerdict v;
  for (auto [report, whose] :
       {std::pair{&from, "this host's report"}, std::pair{&to, "the destination's host report"}}) {
    Status valid = validate_host_report(*report, whose);
    if (!valid.ok()) {
      v.can_move = false;
      v.reasons.push_back("blocks: " + valid.error().message());
      return v;
    }
  }
  std::set<std::string> target;
  for (const auto& f : field(to, "guest_cpu_features")) target.insert(f.get<std::string>());
  std::vector<std::string> needed;
  if (guest_features) {
    needed = *guest_features;
  } else {
    for (const auto& f : field(from, "guest_cpu_features")) needed.push_back(f.get<std::string>());
  }
  std::vector<std::string> missing;
  for (const std::string& f : needed) {
    if (!target.count(f)) missing.push_back(f);
  }
  std::string to_name = text_field(to, "hostname");
  if (to_name.empty()) to_name = "the destination";
  if (missing.empty()) {
    v.reasons.push_back(fmt::format("ok: {} offers every CPU feature the guest {} ({})", to_name,
                                    guest_features ? "was given" : "may have been given",
                                    needed.size()));
  } else {
    v.can_move = false;
    std::string list;
    for (const std::string& f : missing) list += (list.empty() ? "" : ", ") + sanitize_text(f, 64);
    v.reasons.push_back(
        fmt::format("blocks: {} lacks {}: a guest using them would fault there", to_name, list));
  }
  if (capability(from, "xsave2") > capability(to, "xsave2")) {
    v.can_move = false;
    v.reasons.push_back(fmt::format(
        "blocks: the XSAVE area is {} bytes here but {} bytes on {}: extended register state "
        "would not fit",
        capability(from, "xsave2"), capability(to, "xsave2"), to_name));
  }
  const nlohmann::json& from_cpu = field(from, "cpu");
  const nlohmann::json& to_cpu = field(to, "cpu");
  int from_khz = int_field(from_cpu, "tsc_khz", -1), to_khz = int_field(to_cpu, "tsc_khz", -1);
  if (from_khz > 0 && to_khz > 0 && from_khz != to_khz) {
    v.reasons.push_back(fmt::format(
        "note: the TSC runs at {} kHz here and {} kHz on {}; {}", from_khz, to_khz, to_name,
        capability(to, "tsc_control") ? "it can scale the guest's TSC"
                                      : "it cannot scale it, so the guest's TSC changes rate (a "
                                        "warning at restore; kvmclock guests cope)"));
  }
  std::string from_vendor = text_field(from_cpu, "vendor"),
              to_vendor = text_field(to_cpu, "vendor");
  if (from_vendor != to_vendor) {
    v.reasons.push_back(
        fmt::format("note: CPU vendors differ ({} and {}): only guests given a "
                    "common CPU model move safely",
                    from_vendor, to_vendor));
  }
  if (int_field(field(from, "kvm"), "lapic_keeps_in_service_vectors", -1) == 1 &&
      int_field(field(to, "kvm"), "lapic_keeps_in_service_vectors", -1) == 0) {
    v.reasons.push_back(
        fmt::format("note: {}'s KVM ignores in-service interrupt vectors: a guest caught inside an "
                    "interrupt handler is refused there (migrating again a moment later works)",
                    to_name));
  }
  if (!capability(to, "manual_dirty_log_protect")) {
    v.reasons.push_back(
        fmt::format("note: {} lacks manual dirty-log protection: migrations from it "
                    "are slower",
                    to_name));
  }
  return v;
}

Result<std::vector<std::string>> snapshot_cpu_features(const std::string& path) {
  std::unique_ptr<FileSource> source = TRY(FileSource::open(path));
  RecordReader reader(*source, fmt::format("snapshot {}", path));
  while (true) {
    std::optional<Record> record = TRY(reader.next());
    if (!record) break;
    if (record->type != proto::state::RecordType::VCPU) continue;
    try {
      auto msg = record->message();
      std::vector<vmm::CpuidEntry> cpuid;
      for (auto e : msg->getRoot<proto::state::Vcpu>().getCpuid()) {
        cpuid.push_back(vmm::CpuidEntry{e.getFunction(), e.getIndex(), e.getFlags(), e.getEax(),
                                        e.getEbx(), e.getEcx(), e.getEdx()});
      }
      return cpu_feature_names(cpuid);
    } catch (const kj::Exception& e) {
      return Error::user(fmt::format("{}: malformed vCPU record", reader.name()));
    }
  }
  return Error::user(fmt::format("{} has no vCPU record", reader.name()));
}

}  // namespace vmctl::state
