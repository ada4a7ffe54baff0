#include "base/fault.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace vmctl {

void fault_hold(const char* point) {
  const char* spec = std::getenv("VMCTL_FAULT_HOLD");
  if (!spec || !*spec) return;
  std::string all = spec;
  size_t at = 0;
  while (at <= all.size()) {
    size_t end = all.find(',', at);
    std::string item = all.substr(at, end == std::string::npos ? std::string::npos : end - at);
    size_t colon = item.rfind(':');
    if (colon != std::string::npos && item.compare(0, colon, point) == 0) {
      long ms = std::strtol(item.c_str() + colon + 1, nullptr, 10);
      std::fprintf(stderr, "fault: holding at %s for %ld ms\n", point, ms);
      std::fflush(stderr);
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      return;
    }
    if (end == std::string::npos) break;
    at = end + 1;
  }
}

bool fault_enabled(const char* name) {
  const char* v = std::getenv(name);
  return v && *v;
}

}  // namespace vmctl
