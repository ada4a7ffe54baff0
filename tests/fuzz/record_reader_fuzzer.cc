// libFuzzer target: arbitrary bytes as a snapshot file. The reader and the decoders must turn any
// input into records or a clear error: no crash, no hang, no unbounded allocation.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "state/inspect.h"
#include "state/lapic.h"
#include "state/stream.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmctl::state;
  {
    MemorySource source(std::vector<uint8_t>(data, data + size));
    RecordReader reader(source, "fuzz");
    auto inspection = inspect_stream(reader);
    if (inspection.ok()) (void)format_inspection(*inspection);
  }
  // The LAPIC validation path on every LAPIC record that decodes.
  MemorySource source(std::vector<uint8_t>(data, data + size));
  RecordReader reader(source, "fuzz");
  for (int i = 0; i < 64; ++i) {
    auto record = reader.next();
    if (!record.ok() || !record.value()) break;
    if (record.value()->type != vmctl::proto::state::RecordType::LAPIC) continue;
    try {
      auto msg = record.value()->message();
      LapicState lapic = from_record(msg->getRoot<vmctl::proto::state::Lapic>());
      (void)validate_lapic(lapic, 0);
      (void)encode_lapic(lapic, false);
    } catch (const kj::Exception&) {
      // malformed message: what restore reports as "malformed record"
    }
  }
  return 0;
}
