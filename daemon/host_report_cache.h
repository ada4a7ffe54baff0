// This host's report (state/host_report.h), made once per daemon: it holds only facts fixed while
// the daemon runs (KVM's capabilities, the CPU), and making it creates and destroys a probe VM,
// which every migration would otherwise pay for.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace vmctl::daemon {

Result<nlohmann::json> cached_host_report();

}  // namespace vmctl::daemon
