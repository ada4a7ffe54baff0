#include "state/page_runs.h"

#include <xxhash.h>

#include <cstddef>
#include <cstring>

#include <fmt/format.h>

namespace vmctl::state {
namespace {

constexpr uint64_t kPage = 4096;

void put32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

std::vector<uint8_t> encode_page_run_table(const std::vector<PageRun>& runs) {
  std::vector<uint8_t> out;
  out.reserve(8 + runs.size() * kPageRunsTableEntryBytes);
  put32(out, static_cast<uint32_t>(runs.size()));
  put32(out, 0);
  for (const PageRun& r : runs) {
    put64(out, r.first_page);
    put32(out, r.count);
    put32(out, static_cast<uint32_t>(r.kind));
  }
  return out;
}

PageRunsFrame make_page_runs_frame(const std::vector<PageRun>& runs, const std::vector<iovec>& data,
                                   uint32_t sequence, bool payload_by_transport) {
  PageRunsFrame f;
  f.table = encode_page_run_table(runs);
  uint64_t data_bytes = 0;
  for (const iovec& v : data) data_bytes += v.iov_len;
  f.header.type = static_cast<uint16_t>(RecordType::PAGE_RUNS);
  f.header.major = static_cast<uint8_t>(format_major());
  f.header.minor = static_cast<uint8_t>(format_minor());
  f.header.flags = kFrameRequired | (payload_by_transport ? kFramePayloadByTransport : 0);
  f.header.sequence = sequence;
  f.header.stored_size = f.header.raw_size = f.table.size() + data_bytes;
  XXH3_state_t* sum = XXH3_createState();
  XXH3_64bits_reset(sum);
  XXH3_64bits_update(sum, &f.header, offsetof(FrameHeader, checksum));
  if (!payload_by_transport) {
    XXH3_64bits_update(sum, f.table.data(), f.table.size());
    for (const iovec& v : data) XXH3_64bits_update(sum, v.iov_base, v.iov_len);
  }
  f.header.checksum = XXH3_64bits_digest(sum);
  XXH3_freeState(sum);
  return f;
}

Result<uint64_t> write_page_runs(RecordWriter& writer, const std::vector<PageRun>& runs,
                                 const std::vector<iovec>& data, bool payload_by_transport,
                                 std::vector<uint8_t>& scratch) {
  uint64_t pages = 0;
  for (const PageRun& r : runs) pages += r.count;
  TRY(writer.write_frame([&](ByteSink& sink, uint32_t sequence) -> Result<uint64_t> {
    if (payload_by_transport) {
      PageRunsFrame f = make_page_runs_frame(runs, data, sequence, true);
      std::vector<iovec> pieces;
      pieces.reserve(data.size() + 2);
      pieces.push_back({&f.header, sizeof f.header});
      pieces.push_back({f.table.data(), f.table.size()});
      uint64_t size = sizeof f.header + f.table.size();
      for (const iovec& v : data) {
        pieces.push_back(v);
        size += v.iov_len;
      }
      TRY(sink.writev(pieces.data(), static_cast<int>(pieces.size())));
      return size;
    }
    // One copy, hashed and sent as one piece: what the checksum covers is what goes out.
    uint64_t data_bytes = 0;
    for (const iovec& v : data) data_bytes += v.iov_len;
    size_t table_bytes = 8 + runs.size() * kPageRunsTableEntryBytes;
    scratch.resize(sizeof(FrameHeader) + table_bytes + data_bytes);
    uint8_t* out = scratch.data() + sizeof(FrameHeader) + table_bytes;
    for (const iovec& v : data) {
      std::memcpy(out, v.iov_base, v.iov_len);
      out += v.iov_len;
    }
    iovec copied{scratch.data() + sizeof(FrameHeader) + table_bytes, data_bytes};
    PageRunsFrame f = make_page_runs_frame(runs, {copied}, sequence, false);
    std::memcpy(scratch.data(), &f.header, sizeof f.header);
    std::memcpy(scratch.data() + sizeof f.header, f.table.data(), f.table.size());
    TRY(sink.write(scratch.data(), scratch.size()));
    return static_cast<uint64_t>(scratch.size());
  }));
  return pages;
}

uint64_t page_run_data_pages(const std::vector<PageRun>& runs) {
  uint64_t n = 0;
  for (const PageRun& r : runs) {
    if (r.kind == PageRunKind::kData) n += r.count;
  }
  return n;
}

Result<uint64_t> apply_page_runs(RecordReader& reader, const Record& record,
                                 vmm::GuestMemory& memory) {
  auto corrupt = [&](const std::string& what) {
    return Error::user(fmt::format("{}: page-runs record at byte {}: {}: corrupt", reader.name(),
                                   record.offset, what));
  };
  uint64_t size = record.stored_size;
  if (size < 8) return corrupt("shorter than its run count");
  uint8_t head[8];
  TRY(reader.read_payload(head, sizeof head));
  uint32_t count = get32(head);
  if (count == 0 || count > kPageRunsMaxRuns) {
    return corrupt(
        fmt::format("{} runs (1 to {} may come in one record)", count, kPageRunsMaxRuns));
  }
  if (get32(head + 4) != 0) return corrupt("the reserved word is not zero");
  uint64_t table_bytes = count * kPageRunsTableEntryBytes;
  if (size < 8 + table_bytes) return corrupt("shorter than its run table");
  std::vector<uint8_t> table(table_bytes);
  TRY(reader.read_payload(table.data(), table.size()));
  std::vector<PageRun> runs(count);
  uint64_t pages = 0, data_pages = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* e = table.data() + i * kPageRunsTableEntryBytes;
    PageRun& r = runs[i];
    r.first_page = get64(e);
    r.count = get32(e + 8);
    uint32_t kind = get32(e + 12);
    if (kind > 1) return corrupt(fmt::format("run {} has kind {}", i, kind));
    r.kind = static_cast<PageRunKind>(kind);
    if (r.count == 0) return corrupt(fmt::format("run {} has no pages", i));
    pages += r.count;
    if (pages > kPageRunsMaxPages) {
      return corrupt(fmt::format("more than {} pages", kPageRunsMaxPages));
    }
    // Inside guest RAM, without overflow: first_page is the peer's number.
    if (r.first_page > (UINT64_MAX / kPage) - r.count ||
        !memory.host_address(r.first_page * kPage, uint64_t{r.count} * kPage)) {
      return Error::user(fmt::format(
          "{}: page-runs record at byte {}: pages {:#x}+{} lie outside guest RAM: corrupt or "
          "hostile",
          reader.name(), record.offset, r.first_page, r.count));
    }
    if (r.kind == PageRunKind::kData) data_pages += r.count;
  }
  if (size != 8 + table_bytes + data_pages * kPage) {
    return corrupt(
        fmt::format("{} bytes for a table of {} runs and {} data pages", size, count, data_pages));
  }
  for (const PageRun& r : runs) {
    uint64_t len = uint64_t{r.count} * kPage;
    uint8_t* dst = memory.host_address(r.first_page * kPage, len);
    if (r.kind == PageRunKind::kZero) {
      std::memset(dst, 0, len);
    } else {
      TRY(reader.read_payload(dst, len));
    }
  }
  TRY(reader.end_payload());
  return pages;
}

}  // namespace vmctl::state
