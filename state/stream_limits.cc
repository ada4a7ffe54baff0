#include "state/stream_limits.h"

#include "state/page_runs.h"

#include <algorithm>

#include "state/stream.h"

namespace vmctl::state {
namespace {

// Cap'n Proto overhead of one message: segment table, root pointer, struct headers and the padding
// of each text and data field to whole words. Generous: every limit below is far above any record
// this or an older vmctl writes.
constexpr uint64_t kMessageOverhead = 4 << 10;

// Records whose fields are fixed-size registers (PIT, clock, LAPIC, irqchip, trailer) are a few
// hundred bytes; a newer minor may add fields, hence the margin.
constexpr uint64_t kSmallRecordBytes = 4 << 10;
// Header: producer, ids, command line, regions, device names, host facts and capabilities.
constexpr uint64_t kHeaderBytes = 64 << 10;
// A device record (the serial port's FIFO, the CMOS bytes; devices of a newer minor).
constexpr uint64_t kDeviceBytes = 64 << 10;
// A record of a type this version does not know and may skip (from a newer minor).
constexpr uint64_t kUnknownRecordBytes = 64 << 10;
// A memory file record: a path (PATH_MAX) and three numbers.
constexpr uint64_t kMemoryFileRecordBytes = 8 << 10;

// An msr is a 16-byte list element, a CPUID entry 32 bytes (seven 32-bit fields in four words).
constexpr uint64_t kVcpuBytes =
    kMaxXsaveBytes + kMaxVcpuMsrs * 16 + kMaxCpuidEntries * 32 + 4 * kMessageOverhead;
// The pages' bytes and at most one 16-byte run per page.
constexpr uint64_t kMemoryPagesBytes =
    kPagesPerMemoryRecord * kGuestPageBytes + kPagesPerMemoryRecord * 16 + kMessageOverhead;

// Memory pages and dirty logs are the only records vmctl compresses. 1 MiB of one repeated byte
// compresses to ~60 bytes (x17,000): a record that compresses beyond x4096 is stored raw.
constexpr uint64_t kBulkRatio = 4096;
// Records vmctl never compresses: any ratio beyond text-like data is a bomb.
constexpr uint64_t kSmallRatio = 64;

uint64_t dirty_log_bytes(uint64_t guest_memory_bytes) {
  if (guest_memory_bytes == 0) return kMaxRecordSize;
  // Runs alternate clean and dirty lengths: at most one 8-byte run per page, plus two per region;
  // each region adds its own small struct.
  uint64_t pages = guest_memory_bytes / kGuestPageBytes;
  uint64_t bytes = (pages + 2 * kMaxMemoryRegions) * 8 + kMaxMemoryRegions * 64 + kMessageOverhead;
  return std::min(bytes, kMaxRecordSize);
}

}  // namespace

RecordLimit record_limit(uint16_t type, uint64_t guest_memory_bytes) {
  using T = RecordType;
  if (type >= known_record_types()) return {kUnknownRecordBytes, kSmallRatio};
  switch (static_cast<T>(type)) {
    case T::HEADER:
      return {kHeaderBytes, kSmallRatio};
    case T::TRAILER:
    case T::LAPIC:
    case T::IRQCHIP:
    case T::PIT:
    case T::CLOCK:
      return {kSmallRecordBytes, kSmallRatio};
    case T::DEVICE:
      return {kDeviceBytes, kSmallRatio};
    case T::VCPU:
      return {kVcpuBytes, kSmallRatio};
    case T::MEMORY_PAGES:
      return {kMemoryPagesBytes, kBulkRatio};
    case T::DIRTY_LOG:
      return {dirty_log_bytes(guest_memory_bytes), kBulkRatio};
    case T::MEMORY_FILE:
      return {kMemoryFileRecordBytes, kSmallRatio};
    case T::PAGE_RUNS:
      return {kPageRunsMaxBytes, 1};  // never compressed
  }
  return {kUnknownRecordBytes, kSmallRatio};
}

}  // namespace vmctl::state
