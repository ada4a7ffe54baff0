#include "daemon/host_report_cache.h"

#include <cstdlib>
#include <mutex>

#include "state/host_report.h"

namespace vmctl::daemon {

Result<nlohmann::json> cached_host_report() {
  static std::mutex mu;
  static nlohmann::json cached;
  std::lock_guard lock(mu);
  if (cached.is_null()) {
    nlohmann::json report = TRY(state::host_report());
    // Fault injection for the migration tests: a host whose KVM lacks a CPU feature the guests
    // of the other "host" (the same machine) were given. Never set in production.
    if (const char* drop = std::getenv("VMCTL_FAULT_HOST_REPORT_WITHOUT"); drop && *drop) {
      nlohmann::json& features = report["guest_cpu_features"];
      nlohmann::json kept = nlohmann::json::array();
      for (const auto& f : features) {
        if (!(f.is_string() && f.get<std::string>() == drop)) kept.push_back(f);
      }
      features = kept;
    }
    cached = std::move(report);
  }
  return cached;
}

}  // namespace vmctl::daemon
