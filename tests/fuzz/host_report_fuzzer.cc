// libFuzzer target: a peer's host report (state/host_report.h), as vmctld receives it before a
// migration and `vmctl host-check` reads it from a file: hostile input. Must hold: any bytes are
// refused with a clear error or validate; whatever JSON they hold, formatting it and checking a
// move to and from a valid host (with and without the guest's features) never throws, and a
// report that does not validate blocks the move.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "state/host_report.h"

namespace {

using nlohmann::json;

const json& valid_report() {
  static const json report = json::parse(R"({
    "hostname": "b", "kernel": "6.1.0-18-amd64",
    "kvm": {"api_version": 12, "modules": ["kvm_intel"],
            "capabilities": {"irqchip": 1, "xsave2": 4096, "tsc_control": 1,
                             "manual_dirty_log_protect": 3, "max_vcpus": 288},
            "lapic_keeps_in_service_vectors": 1},
    "cpu": {"vendor": "GenuineIntel", "family": 6, "model": 85, "tsc_khz": 2000000},
    "virtualization": {"tpr_shadow": "yes", "pml": "unknown"},
    "guest_cpu_features": ["sse2", "avx2"]})");
  return report;
}

void check_both_ways(const json& peer, bool valid) {
  using vmctl::state::check_move;
  static const std::vector<std::string> guest_features = {"sse2", "avx2", "avx512f"};
  for (const auto* features :
       {static_cast<const std::vector<std::string>*>(nullptr), &guest_features}) {
    for (const auto& verdict :
         {check_move(valid_report(), peer, features), check_move(peer, valid_report(), features)}) {
      if (verdict.reasons.empty()) std::abort();
      if (!valid && verdict.can_move) std::abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmctl::state;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto report = parse_host_report(text, "the destination's host report");
  if (report.ok()) {
    if (!validate_host_report(*report).ok()) std::abort();
    (void)format_host_report(*report);
    check_both_ways(*report, true);
    return 0;
  }
  if (report.error().message().empty()) std::abort();
  // JSON that does not validate still reaches the readers, which must refuse it themselves.
  json raw = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (raw.is_discarded()) return 0;
  if (validate_host_report(raw).ok()) return 0;  // over parse_host_report's size bound
  (void)format_host_report(raw);
  check_both_ways(raw, false);
  return 0;
}
