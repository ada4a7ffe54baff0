#include "base/crash_point.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace vmctl {

void crash_point(const char* step) {
  const char* wanted = std::getenv(kCrashPointVariable);
  if (wanted != nullptr && std::strcmp(wanted, step) == 0) ::_exit(kCrashPointExitCode);
}

}  // namespace vmctl
