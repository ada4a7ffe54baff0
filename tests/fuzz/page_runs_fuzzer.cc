// libFuzzer target: a migration data connection's bytes (state/page_runs.h) applied to guest
// memory. The first input byte chooses whether the connection authenticates its payload (TLS,
// which lets frames skip the payload checksum); the rest is the record stream, whose pageRuns
// records are applied with apply_page_runs to 64 pages of guarded guest RAM. Must hold: a run is
// written only inside guest RAM, and anything else is a clear error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "state/page_runs.h"
#include "state/stream.h"
#include "tests/fuzz/fuzz_guest_memory.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmctl;
  using namespace vmctl::state;
  if (size < 1) return 0;
  vmm::GuestMemory& memory = fuzz::guarded_guest_memory();
  MemorySource source(std::vector<uint8_t>(data + 1, data + size));
  RecordReader reader(source, "fuzz");
  reader.set_authenticated_transport(data[0] & 1);
  for (int i = 0; i < 16; ++i) {
    auto record = reader.next();
    if (!record.ok() || !record.value()) break;
    if (!record.value()->streamed) continue;
    Result<uint64_t> pages = apply_page_runs(reader, *record.value(), memory);
    if (!pages.ok()) {
      if (pages.error().message().empty()) std::abort();
      break;  // the rest of a refused record is not read: the stream cannot go on
    }
    if (*pages == 0 || *pages > kPageRunsMaxPages) std::abort();
  }
  return 0;
}
