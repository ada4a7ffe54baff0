// Reading host reports: for people (format_host_report), and whether a guest can move between two
// hosts (check_move); host_report_collect.cc gathers them.
#include "state/host_report.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>
#include <kj/exception.h>

#include "base/text.h"
#include "state/cpu_features.h"
#include "state/stream.h"
#include "vmm/cpuid.h"

namespace vmctl::state {

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
