// How large each kind of record may be, so that a reader refuses a hostile frame from its 40-byte
// header alone, before it allocates or decompresses anything.
//
// A frame names its raw (decompressed) size, and zstd can expand a few bytes into ~32,000 times
// as many. The generic bound (kMaxRecordSize) alone would let every record of a crafted stream
// claim 256 MiB. Each record type has a far smaller natural size, and a ratio of raw to stored
// bytes beyond which the data was made to be a bomb rather than compressed; the writer stores a
// record raw rather than exceed that ratio, so what it writes the reader accepts.
#pragma once

#include <cstdint>

namespace vmctl::state {

// Guest pages per MemoryPages record (1 MiB), and the page size they are counted in.
inline constexpr uint32_t kPagesPerMemoryRecord = 256;
inline constexpr uint64_t kGuestPageBytes = 4096;

// Parts of a vCPU record that vary with the host (the rest is a few hundred bytes of registers):
// the XSAVE area KVM_CAP_XSAVE2 reports (about 11 KiB with AMX; the architectural area is far
// smaller than this bound), the MSRs KVM lists (a few hundred), and the CPUID table (KVM's
// KVM_MAX_CPUID_ENTRIES).
inline constexpr uint64_t kMaxXsaveBytes = 64 << 10;
inline constexpr uint64_t kMaxVcpuMsrs = 4096;
inline constexpr uint64_t kMaxCpuidEntries = 256;
// Memory regions a header or dirty log may describe (vmctl makes at most 2: below and above the
// 32-bit PCI hole).
inline constexpr uint64_t kMaxMemoryRegions = 64;

struct RecordLimit {
  uint64_t max_raw_bytes;
  // Largest raw/stored ratio of a zstd-compressed record (frames of format 1.2 on).
  uint64_t max_compression_ratio;
};

// The limit for a record of frame type `type` (unknown types get a small one). A dirty log grows
// with the guest: `guest_memory_bytes` is the header's memory size, 0 while it is not known.
RecordLimit record_limit(uint16_t type, uint64_t guest_memory_bytes = 0);

}  // namespace vmctl::state
