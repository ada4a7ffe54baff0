// libFuzzer target: the first line a peer sends on a migration data connection
// (migrate/data_hello.h), before anything authenticates it. Must hold: any bytes give a hello or
// a clear error; an accepted hello is in range and formats back to a line that parses to itself.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "migrate/data_hello.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmctl::migrate;
  std::string_view line(reinterpret_cast<const char*>(data), size);
  auto hello = parse_hello(line);
  if (!hello.ok()) {
    if (hello.error().message().empty()) std::abort();
    return 0;
  }
  if (hello->count == 0 || hello->count > kMaxDataConnections || hello->index >= hello->count) {
    std::abort();
  }
  auto again = parse_hello(format_hello(*hello));
  if (!again.ok() || again->migration_id != hello->migration_id || again->secret != hello->secret ||
      again->index != hello->index || again->count != hello->count) {
    std::abort();
  }
  return 0;
}
