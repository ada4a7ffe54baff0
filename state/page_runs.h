// The pageRuns record (format 1.3): guest pages without a Cap'n Proto message around them, so a
// sender writes them from guest memory to the wire and a receiver reads them from the wire into
// guest memory, with no copy in between.
//
// Payload (little endian), after the usual 40-byte frame header (state/stream.h):
//   u32 run count (1 .. kPageRunsMaxRuns)
//   u32 reserved, zero
//   run count x { u64 first guest page number; u32 pages (1 ..); u32 kind: 0 data, 1 zero }
//   the bytes of every data run, in the order of the table (pages x 4096 each)
// At most kPageRunsMaxPages pages per record, data and zero runs together. A zero run carries no
// bytes: the receiver zeroes those pages (a page the guest cleared since the last round).
//
// The frame's checksum covers its header and the whole payload, unless the frame carries
// kFramePayloadByTransport: then only the header, because the connection it travels on
// authenticates every byte (TLS's AEAD) and hashing the pages once more would be a second pass
// over them. A reader accepts that flag only from such a connection (RecordReader option).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <vector>

#include "base/error.h"
#include "state/stream.h"
#include "vmm/memory.h"

namespace vmctl::state {

inline constexpr uint32_t kPageRunsMaxPages = 256;
inline constexpr uint32_t kPageRunsMaxRuns = kPageRunsMaxPages;
inline constexpr uint64_t kPageRunsTableEntryBytes = 16;
inline constexpr uint64_t kPageRunsMaxBytes =
    8 + kPageRunsMaxRuns * kPageRunsTableEntryBytes + kPageRunsMaxPages * 4096ull;

enum class PageRunKind : uint32_t { kData = 0, kZero = 1 };

struct PageRun {
  uint64_t first_page = 0;
  uint32_t count = 0;
  PageRunKind kind = PageRunKind::kData;
};

// The run table of a record (the payload up to the page bytes).
std::vector<uint8_t> encode_page_run_table(const std::vector<PageRun>& runs);
// Pages carried as data (what follows the table).
uint64_t page_run_data_pages(const std::vector<PageRun>& runs);

// The frame of a pageRuns record for `runs`, whose data runs' bytes (in table order) are `data`:
// the sender writes the header, the table, then the data. With `payload_by_transport` the checksum
// covers the header only (the connection authenticates the rest); else it covers everything, so
// `data` must not change between this call and its sending (a copy, or a paused guest).
struct PageRunsFrame {
  FrameHeader header;
  std::vector<uint8_t> table;
};
PageRunsFrame make_page_runs_frame(const std::vector<PageRun>& runs,
                                   const std::vector<struct iovec>& data, uint32_t sequence,
                                   bool payload_by_transport);

// Writes one pageRuns record through `writer`. With `payload_by_transport` (the sink is a TLS
// connection) the pages go from guest memory to the sink as they are; else they are copied into
// `scratch` first and hashed there, because a running guest may change them while they are sent
// and the checksum must match what was sent. Returns the pages (data and zero runs).
Result<uint64_t> write_page_runs(RecordWriter& writer, const std::vector<PageRun>& runs,
                                 const std::vector<struct iovec>& data, bool payload_by_transport,
                                 std::vector<uint8_t>& scratch);

// Reads the rest of a pageRuns record `record` (just returned by `reader`) and applies it to
// `memory`: data straight into guest RAM, zero runs zeroed. Every run must lie inside guest RAM,
// and the payload must be exactly the table and its data. Returns the pages applied.
Result<uint64_t> apply_page_runs(RecordReader& reader, const Record& record,
                                 vmm::GuestMemory& memory);

}  // namespace vmctl::state
