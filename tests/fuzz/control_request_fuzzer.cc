// libFuzzer target: one request line on a VM process's control socket
// (vmprocess/control_protocol.h). Only the socket's owner may connect, but the line is still
// parsed without trusting it. Must hold: any bytes give a request or a clear error, never an
// exception; an accepted request's numbers lie in the ranges the protocol gives them.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "vmprocess/control_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmctl::vmprocess;
  std::string_view line(reinterpret_cast<const char*>(data), size);
  auto request = parse_control_request(line);
  if (!request.ok()) {
    if (request.error().message().empty()) std::abort();
    return 0;
  }
  if (request->op == ControlOp::kSnapshot &&
      (request->snapshot.path.empty() || request->snapshot.compression < 0 ||
       request->snapshot.compression > 19)) {
    std::abort();
  }
  if (request->op == ControlOp::kMigrate) {
    const MigrateArgs& m = request->migrate;
    if (m.migration_id.size() != 32 || m.streams < 1 || m.streams > 16 || m.max_rounds < 1 ||
        !(m.downtime_ms >= 0) || !(m.max_seconds >= 0) || m.stall_timeout_ms < 100) {
      std::abort();
    }
  }
  return 0;
}
