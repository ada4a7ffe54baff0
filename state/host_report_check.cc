// validate_host_report: a host report from a peer (vmctld's GetHostInfo, a file given to
// host-check) checked field by field before anything reads it. nlohmann::json's get<>() throws
// on a wrong type and its const operator[] on a missing key is undefined behaviour; in the
// pre-migration check either would take the source VM's process down, at the destination's will.
#include <cstdint>
#include <limits>
#include <string>

#include <fmt/format.h>

#include "base/text.h"
#include "state/host_report.h"

namespace vmctl::state {
namespace {

using json = nlohmann::json;

// Bounds: far above what any real host reports, far below what would cost the reader.
constexpr size_t kMaxNameBytes = 64;       // a capability, module, feature or vendor name
constexpr size_t kMaxHostnameBytes = 255;  // HOST_NAME_MAX is 64; DNS names up to 253
constexpr size_t kMaxKernelBytes = 256;    // a kernel release string
constexpr size_t kMaxValueBytes = 128;     // a virtualization feature's description
constexpr size_t kMaxFeatures = 4096;      // CPU features (a few hundred exist)
constexpr size_t kMaxCapabilities = 128;   // KVM capabilities (the VMM reports 13)
constexpr size_t kMaxModules = 16;
constexpr size_t kMaxVirtualization = 32;
constexpr size_t kMaxReportBytes = 1 << 20;

class Checker {
 public:
  explicit Checker(std::string_view whose) : whose_(whose) {}

  Status object(const json& parent, const char* key, const std::string& path, bool required,
                const json** out) {
    *out = nullptr;
    auto it = parent.find(key);
    if (it == parent.end()) return required ? missing(path) : ok_status();
    if (!it->is_object()) return bad(path, "is not an object");
    *out = &*it;
    return ok_status();
  }

  // A name (`is_name`: a feature, module or capability) is non-empty printable text; other strings
  // need only be UTF-8 (they are sanitised where they are shown).
  Status string(const json& value, const std::string& path, size_t max_bytes, bool is_name) {
    if (!value.is_string()) return bad(path, "is not a string");
    const std::string& s = value.get_ref<const std::string&>();
    if (!is_valid_utf8(s)) return bad(path, "is not valid UTF-8");
    if (s.size() > max_bytes) {
      return bad(path, fmt::format("is {} bytes long, more than {}", s.size(), max_bytes));
    }
    if (is_name && (s.empty() || sanitize_text(s, max_bytes) != s)) {
      return bad(path, "is not a name (printable text)");
    }
    return ok_status();
  }

  Status string_field(const json& parent, const char* key, const std::string& path,
                      size_t max_bytes, bool required) {
    auto it = parent.find(key);
    if (it == parent.end()) return required ? missing(path) : ok_status();
    return string(*it, path, max_bytes, false);
  }

  Status integer(const json& value, const std::string& path, int64_t lo, int64_t hi) {
    if (!value.is_number()) return bad(path, "is not a number");
    if (!value.is_number_integer()) return bad(path, "is not a whole number");
    bool in_range = value.is_number_unsigned()
                        ? value.get<uint64_t>() <= static_cast<uint64_t>(hi)
                        : value.get<int64_t>() >= lo && value.get<int64_t>() <= hi;
    if (!in_range) return bad(path, fmt::format("is out of range ({} to {})", lo, hi));
    return ok_status();
  }

  Status integer_field(const json& parent, const char* key, const std::string& path, int64_t lo,
                       int64_t hi, bool required) {
    auto it = parent.find(key);
    if (it == parent.end()) return required ? missing(path) : ok_status();
    return integer(*it, path, lo, hi);
  }

  Status name_list(const json& parent, const char* key, const std::string& path, size_t max_items,
                   bool required) {
    auto it = parent.find(key);
    if (it == parent.end()) return required ? missing(path) : ok_status();
    if (!it->is_array()) return bad(path, "is not a list");
    if (it->size() > max_items) {
      return bad(path, fmt::format("has {} entries, more than {}", it->size(), max_items));
    }
    for (size_t i = 0; i < it->size(); ++i) {
      TRY(string((*it)[i], fmt::format("{}[{}]", path, i), kMaxNameBytes, true));
    }
    return ok_status();
  }

  // An object whose keys are names and whose values `check` accepts.
  template <typename Check>
  Status map(const json& value, const std::string& path, size_t max_items, Check&& check) {
    if (value.size() > max_items) {
      return bad(path, fmt::format("has {} entries, more than {}", value.size(), max_items));
    }
    for (const auto& [name, v] : value.items()) {
      if (name.empty() || name.size() > kMaxNameBytes ||
          sanitize_text(name, kMaxNameBytes) != name) {
        return bad(fmt::format("{}.{}", path, sanitize_text(name, kMaxNameBytes)),
                   fmt::format("is not a name (1 to {} bytes of printable text)", kMaxNameBytes));
      }
      TRY(check(v, fmt::format("{}.{}", path, name)));
    }
    return ok_status();
  }

  Error missing(const std::string& path) const { return bad(path, "is missing"); }
  Error bad(const std::string& path, const std::string& what) const {
    return Error::user(fmt::format("{} is malformed: field {} {}", whose_, path, what));
  }

 private:
  std::string whose_;
};

}  // namespace

Status validate_host_report(const json& report, std::string_view whose) {
  Checker c(whose);
  if (!report.is_object()) {
    return Error::user(fmt::format("{} is malformed: it is not a JSON object", whose));
  }
  TRY(c.string_field(report, "hostname", "hostname", kMaxHostnameBytes, true));
  TRY(c.string_field(report, "kernel", "kernel", kMaxKernelBytes, true));

  const json* kvm = nullptr;
  TRY(c.object(report, "kvm", "kvm", true, &kvm));
  TRY(c.integer_field(*kvm, "api_version", "kvm.api_version", 0, 1 << 16, true));
  TRY(c.name_list(*kvm, "modules", "kvm.modules", kMaxModules, false));
  const json* caps = nullptr;
  TRY(c.object(*kvm, "capabilities", "kvm.capabilities", true, &caps));
  TRY(c.map(*caps, "kvm.capabilities", kMaxCapabilities, [&](const json& v, const std::string& p) {
    // KVM_CHECK_EXTENSION returns an int.
    return c.integer(v, p, std::numeric_limits<int32_t>::min(),
                     std::numeric_limits<int32_t>::max());
  }));
  TRY(c.integer_field(*kvm, "lapic_keeps_in_service_vectors", "kvm.lapic_keeps_in_service_vectors",
                      -1, 1, false));

  const json* cpu = nullptr;
  TRY(c.object(report, "cpu", "cpu", true, &cpu));
  TRY(c.string_field(*cpu, "vendor", "cpu.vendor", kMaxNameBytes, true));
  TRY(c.integer_field(*cpu, "family", "cpu.family", 0, std::numeric_limits<int32_t>::max(), true));
  TRY(c.integer_field(*cpu, "model", "cpu.model", 0, std::numeric_limits<int32_t>::max(), true));
  TRY(c.integer_field(*cpu, "tsc_khz", "cpu.tsc_khz", -1, std::numeric_limits<int32_t>::max(),
                      true));

  const json* virt = nullptr;
  TRY(c.object(report, "virtualization", "virtualization", false, &virt));
  if (virt) {
    TRY(c.map(*virt, "virtualization", kMaxVirtualization,
              [&](const json& v, const std::string& p) {
                return c.string(v, p, kMaxValueBytes, false);
              }));
  }
  TRY(c.name_list(report, "guest_cpu_features", "guest_cpu_features", kMaxFeatures, true));
  return ok_status();
}

Result<json> parse_host_report(std::string_view text, std::string_view whose) {
  if (text.size() > kMaxReportBytes) {
    return Error::user(fmt::format("{} is malformed: it is {} bytes, more than {}", whose,
                                   text.size(), kMaxReportBytes));
  }
  json report = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (report.is_discarded()) {
    return Error::user(fmt::format("{} is malformed: it is not JSON", whose));
  }
  TRY(validate_host_report(report, whose));
  return report;
}

}  // namespace vmctl::state
