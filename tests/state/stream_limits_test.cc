// Hostile frames: records larger than their type can hold, zstd bombs, and gaps, repeats and
// reorderings in the record numbering. Each is refused with one line naming the record and what
// is wrong, before the reader allocates what the frame claims.
#include "state/stream_limits.h"

#include <gtest/gtest.h>
#include <zstd.h>

#include <string>

#include <fmt/format.h>

#include "state/stream.h"
#include "tests/state/crafted_frames.h"

namespace vmctl::state {
namespace {

namespace ps = proto::state;
using namespace vmctl::state::testing;

// Reads until the end or an error; returns the error message or "". `guest_memory` is what a
// restorer tells the reader once it has the header.
std::string read_all(std::vector<uint8_t> bytes, uint64_t guest_memory = 0,
                     std::vector<uint32_t>* sequences = nullptr) {
  MemorySource source(std::move(bytes));
  RecordReader reader(source, "crafted stream");
  reader.set_guest_memory_size(guest_memory);
  while (true) {
    Result<std::optional<Record>> r = reader.next();
    if (!r.ok()) return r.error().message();
    if (!r.value()) return "";
    if (sequences) sequences->push_back(r.value()->sequence);
  }
}

std::vector<uint8_t> header_payload() {
  capnp::MallocMessageBuilder m;
  m.initRoot<ps::Header>().setProducer("test");
  return flat(m);
}

// A 1 MiB memory record of one repeated byte, as a real writer would encode it raw.
std::vector<uint8_t> uniform_memory_payload(uint8_t value) {
  capnp::MallocMessageBuilder m;
  auto pages = m.initRoot<ps::MemoryPages>();
  auto run = pages.initRuns(1)[0];
  run.setFirstPage(0);
  run.setCount(kPagesPerMemoryRecord);
  auto data = pages.initData(kPagesPerMemoryRecord * kGuestPageBytes);
  std::memset(data.begin(), value, data.size());
  return flat(m);
}

std::vector<uint8_t> zstd(const std::vector<uint8_t>& raw, int level = 19) {
  std::vector<uint8_t> out(ZSTD_compressBound(raw.size()));
  size_t n = ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), level);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

std::vector<uint8_t> concat(std::initializer_list<std::vector<uint8_t>> parts) {
  std::vector<uint8_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

const uint16_t kHeader = static_cast<uint16_t>(ps::RecordType::HEADER);
const uint16_t kVcpu = static_cast<uint16_t>(ps::RecordType::VCPU);
const uint16_t kMemoryPages = static_cast<uint16_t>(ps::RecordType::MEMORY_PAGES);
const uint16_t kDirtyLog = static_cast<uint16_t>(ps::RecordType::DIRTY_LOG);
const uint8_t kMinor = static_cast<uint8_t>(format_minor());

// A frame header that claims `raw` bytes of type `type`, with no payload behind it: only a reader
// that decides from the header alone gets to the size error instead of "truncated".
std::vector<uint8_t> claim(uint16_t type, uint64_t raw, uint64_t stored, uint32_t flags = 0) {
  FrameHeader h;
  h.type = type;
  h.major = static_cast<uint8_t>(format_major());
  h.minor = kMinor;
  h.flags = flags;
  h.sequence = 1;
  h.stored_size = stored;
  h.raw_size = raw;
  std::vector<uint8_t> out(sizeof h);
  std::memcpy(out.data(), &h, sizeof h);
  return out;
}

TEST(RecordLimits, EachTypeIsBoundedFarBelowTheGenericLimit) {
  for (uint16_t t = 0; t < known_record_types(); ++t) {
    RecordLimit limit = record_limit(t, 1ull << 30);
    EXPECT_LT(limit.max_raw_bytes, kMaxRecordSize) << record_type_name(static_cast<RecordType>(t));
    EXPECT_GE(limit.max_compression_ratio, 1u);
  }
  EXPECT_LE(record_limit(kHeader).max_raw_bytes, 64u << 10);
  EXPECT_LE(record_limit(static_cast<uint16_t>(ps::RecordType::LAPIC)).max_raw_bytes, 4u << 10);
  EXPECT_LE(record_limit(kMemoryPages).max_raw_bytes, (1u << 20) + (16u << 10));
  EXPECT_LE(record_limit(known_record_types()).max_raw_bytes, 64u << 10) << "unknown types";
  EXPECT_EQ(record_limit(kDirtyLog).max_raw_bytes, kMaxRecordSize) << "guest size not known yet";
}

TEST(RecordLimits, OversizedRecordOfEachTypeIsRefusedFromItsHeaderAlone) {
  const std::vector<std::pair<uint16_t, const char*>> cases = {
      {kHeader, "header record"},
      {static_cast<uint16_t>(ps::RecordType::TRAILER), "trailer record"},
      {kVcpu, "vcpu record"},
      {static_cast<uint16_t>(ps::RecordType::LAPIC), "lapic record"},
      {static_cast<uint16_t>(ps::RecordType::IRQCHIP), "irqchip record"},
      {static_cast<uint16_t>(ps::RecordType::PIT), "pit record"},
      {static_cast<uint16_t>(ps::RecordType::CLOCK), "clock record"},
      {static_cast<uint16_t>(ps::RecordType::DEVICE), "device record"},
      {kMemoryPages, "memory-pages record"},
      {static_cast<uint16_t>(ps::RecordType::MEMORY_FILE), "memory-file record"},
  };
  for (const auto& [type, name] : cases) {
    uint64_t too_big = record_limit(type).max_raw_bytes + 8;
    std::string error = read_all(claim(type, too_big, too_big));
    EXPECT_NE(error.find(fmt::format("the {} claims {} bytes, more than a {} can hold", name,
                                     too_big, name)),
              std::string::npos)
        << error;
    EXPECT_NE(error.find("crafted stream: record 0 at byte 0"), std::string::npos) << error;
  }
}

TEST(RecordLimits, UnknownTypesGetASmallBound) {
  uint16_t unknown = known_record_types() + 3;
  std::string error = read_all(claim(unknown, 1 << 20, 1 << 20));
  EXPECT_NE(error.find(fmt::format("the record of unknown type {} claims 1048576 bytes, more than "
                                   "a record of a newer type can hold (65536)",
                                   unknown)),
            std::string::npos)
      << error;
}

TEST(RecordLimits, DirtyLogIsBoundedByTheGuestsSize) {
  // A 32 MiB guest has 8192 pages: its dirty log is at most a few runs per page.
  uint64_t raw = 1 << 20;
  std::string error = read_all(claim(kDirtyLog, raw, raw), 32 << 20);
  EXPECT_NE(error.find("the dirty-log record claims 1048576 bytes"), std::string::npos) << error;
  // Before the header is known only the generic bound applies: the frame reader gets as far as
  // the (missing) payload.
  EXPECT_NE(read_all(claim(kDirtyLog, raw, raw)).find("truncated"), std::string::npos);
}

TEST(RecordLimits, ZstdBombIsRefusedBeforeDecompressing) {
  // Claims 1 MiB of memory from 16 stored bytes: x65536.
  std::string error = read_all(claim(kMemoryPages, 1 << 20, 16, kFrameZstd));
  EXPECT_NE(error.find("the memory-pages record expands from 16 to 1048576 bytes, more than x4096 "
                       "(a zstd bomb, not compressed data)"),
            std::string::npos)
      << error;
  // The same against a vCPU record, which vmctl never compresses: x64 at most.
  error = read_all(claim(kVcpu, 64 << 10, 512, kFrameZstd));
  EXPECT_NE(error.find("more than x64"), std::string::npos) << error;
}

TEST(RecordLimits, CompressedPayloadLargerThanItsRawFormIsRefusedBeforeReadingIt) {
  // 64 raw bytes claimed, 200 MiB "compressed": the stored bytes would be allocated first.
  std::string error = read_all(claim(kMemoryPages, 64, 200 << 20, kFrameZstd));
  EXPECT_NE(error.find("the memory-pages record stores 209715200 compressed bytes for 64 raw ones: "
                       "corrupt"),
            std::string::npos)
      << error;
}

TEST(RecordLimits, RealZstdBombInANumberedStreamIsRefused) {
  std::vector<uint8_t> raw = uniform_memory_payload(0xff);
  std::vector<uint8_t> packed = zstd(raw);
  ASSERT_GT(raw.size(), packed.size() * 4096) << "1 MiB of 0xff compresses beyond the bound";
  std::vector<uint8_t> bytes =
      concat({make_frame(kHeader, header_payload(), header_payload().size(), 0, kMinor, 1),
              make_frame(kMemoryPages, packed, raw.size(), kFrameZstd, kMinor, 2)});
  EXPECT_NE(read_all(bytes).find("a zstd bomb"), std::string::npos);
}

TEST(RecordLimits, OlderWritersRecordsAreBoundedBySizeNotRatio) {
  // A format 1.1 writer compressed whatever compressed; its snapshots stay readable.
  std::vector<uint8_t> raw = uniform_memory_payload(0xff);
  std::vector<uint8_t> bytes =
      concat({make_frame(kHeader, header_payload(), header_payload().size(), 0, 1, 0),
              make_frame(kMemoryPages, zstd(raw), raw.size(), kFrameZstd, 1, 0)});
  EXPECT_EQ(read_all(bytes), "");
}

TEST(RecordLimits, WriterStoresRawWhatWouldCompressBeyondTheBound) {
  MemorySink sink;
  RecordWriter writer(sink, WriterOptions{19});
  for (uint8_t fill : {uint8_t{0xff}, uint8_t{0x00}}) {
    capnp::MallocMessageBuilder m;
    auto pages = m.initRoot<ps::MemoryPages>();
    pages.initRuns(1)[0].setCount(kPagesPerMemoryRecord);
    auto data = pages.initData(kPagesPerMemoryRecord * kGuestPageBytes);
    for (size_t i = 0; i < data.size(); ++i) {
      // The second record: compressible, but nowhere near a bomb.
      data[i] = fill == 0xff ? 0xff : static_cast<uint8_t>((i * 2654435761u) >> 13);
    }
    ASSERT_TRUE(writer.write(ps::RecordType::MEMORY_PAGES, m, /*compress=*/true).ok());
  }
  MemorySource source(sink.bytes());
  RecordReader reader(source, "written");
  auto uniform = reader.next();
  ASSERT_TRUE(uniform.ok() && *uniform) << (uniform.ok() ? "" : uniform.error().message());
  EXPECT_FALSE((*uniform)->compressed) << "x17,000 would look like a bomb: stored raw";
  auto varied = reader.next();
  ASSERT_TRUE(varied.ok() && *varied) << (varied.ok() ? "" : varied.error().message());
}

// ------------------------------------------------------------------ numbering

// A numbered stream of `n` small records (a header, then device records).
std::vector<uint8_t> numbered_stream(int n) {
  MemorySink sink;
  RecordWriter writer(sink, WriterOptions{0});
  for (int i = 0; i < n; ++i) {
    capnp::MallocMessageBuilder m;
    if (i == 0) {
      m.initRoot<ps::Header>().setProducer("test");
      EXPECT_TRUE(writer.write(ps::RecordType::HEADER, m).ok());
    } else {
      m.initRoot<ps::Device>().setName(fmt::format("device{}", i));
      EXPECT_TRUE(writer.write(ps::RecordType::DEVICE, m).ok());
    }
  }
  return std::move(sink.bytes());
}

std::vector<uint8_t> without_frame(const std::vector<uint8_t>& bytes, size_t index) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i < frame_offsets(bytes).size(); ++i) {
    if (i == index) continue;
    std::vector<uint8_t> f = frame_bytes(bytes, i);
    out.insert(out.end(), f.begin(), f.end());
  }
  return out;
}

TEST(RecordNumbering, WriterNumbersRecordsFromOne) {
  std::vector<uint32_t> sequences;
  ASSERT_EQ(read_all(numbered_stream(4), 0, &sequences), "");
  EXPECT_EQ(sequences, (std::vector<uint32_t>{1, 2, 3, 4}));
  EXPECT_EQ(frame_at(numbered_stream(1), 0).minor, format_minor());
  EXPECT_GE(format_minor(), kFirstNumberedMinor);
}

TEST(RecordNumbering, DroppedRecordIsNamedWithBothNumbers) {
  std::string error = read_all(without_frame(numbered_stream(5), 2));
  EXPECT_NE(error.find("record numbered 4 follows record 2: 1 record is missing (dropped)"),
            std::string::npos)
      << error;
  error = read_all(without_frame(without_frame(numbered_stream(6), 2), 2));
  EXPECT_NE(error.find("record numbered 5 follows record 2: 2 records are missing"),
            std::string::npos)
      << error;
}

TEST(RecordNumbering, DuplicatedRecordIsRefused) {
  std::vector<uint8_t> bytes = numbered_stream(3);
  std::vector<uint8_t> second = frame_bytes(bytes, 1);
  std::vector<uint8_t> dup = concat({frame_bytes(bytes, 0), second, second, frame_bytes(bytes, 2)});
  std::string error = read_all(dup);
  EXPECT_NE(error.find("record numbered 2 follows record 2: a record is duplicated"),
            std::string::npos)
      << error;
}

TEST(RecordNumbering, ReorderedRecordsAreRefused) {
  std::vector<uint8_t> bytes = numbered_stream(4);
  std::vector<uint8_t> swapped = concat(
      {frame_bytes(bytes, 0), frame_bytes(bytes, 2), frame_bytes(bytes, 1), frame_bytes(bytes, 3)});
  std::string error = read_all(swapped);
  EXPECT_NE(error.find("record numbered 3 follows record 1: 1 record is missing"),
            std::string::npos)
      << error;
  // Replayed: an earlier record again, later on.
  std::vector<uint8_t> replayed = concat(
      {frame_bytes(bytes, 0), frame_bytes(bytes, 1), frame_bytes(bytes, 2), frame_bytes(bytes, 1)});
  error = read_all(replayed);
  EXPECT_NE(error.find("record numbered 2 follows record 3: records are replayed or reordered"),
            std::string::npos)
      << error;
}

TEST(RecordNumbering, MissingFirstRecordsAreRefused) {
  std::string error = read_all(without_frame(numbered_stream(3), 0));
  EXPECT_NE(error.find("the stream's first record is numbered 2, not 1: the records before it are "
                       "missing"),
            std::string::npos)
      << error;
}

TEST(RecordNumbering, UnnumberedStreamsOfOlderWritersAreRead) {
  std::vector<uint8_t> h = header_payload();
  std::vector<uint8_t> old = concat(
      {make_frame(kHeader, h, h.size(), 0, 1, 0), make_frame(kHeader, h, h.size(), 0, 1, 0)});
  MemorySource source(old);
  RecordReader reader(source, "old");
  ASSERT_TRUE(reader.next().ok());
  EXPECT_FALSE(reader.numbered());
  EXPECT_EQ(read_all(old), "");
}

TEST(RecordNumbering, MixedNumberingIsRefused) {
  std::vector<uint8_t> h = header_payload();
  std::string error = read_all(concat(
      {make_frame(kHeader, h, h.size(), 0, 1, 0), make_frame(kHeader, h, h.size(), 0, 1, 7)}));
  EXPECT_NE(error.find("record numbered 7 in a stream whose first record is not numbered"),
            std::string::npos)
      << error;
  // Format 1.2 frames always carry a number.
  error = read_all(make_frame(kHeader, h, h.size(), 0, kFirstNumberedMinor, 0));
  EXPECT_NE(error.find("the record is not numbered, but format 1.2 on numbers every record"),
            std::string::npos)
      << error;
}

TEST(RecordNumbering, AppendedEncodedRecordsAreRenumberedToFollow) {
  MemorySink sink;
  RecordWriter writer(sink, WriterOptions{1});
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<ps::Header>().setProducer("test");
    ASSERT_TRUE(writer.write(ps::RecordType::HEADER, m).ok());
  }
  // Two shares encoded elsewhere (as the parallel memory writer does), each numbered from 1.
  for (int share = 0; share < 2; ++share) {
    MemorySink encoded;
    RecordWriter share_writer(encoded, writer.options());
    for (int i = 0; i < 3; ++i) {
      capnp::MallocMessageBuilder m;
      auto pages = m.initRoot<ps::MemoryPages>();
      pages.initRuns(1)[0].setCount(1);
      auto data = pages.initData(kGuestPageBytes);
      for (size_t k = 0; k < data.size(); ++k) data[k] = static_cast<uint8_t>(k % 251 + share + i);
      ASSERT_TRUE(share_writer.write(ps::RecordType::MEMORY_PAGES, m, true).ok());
    }
    ASSERT_EQ(frame_at(encoded.bytes(), 0).sequence, 1u);
    ASSERT_TRUE(writer.append_encoded(encoded.bytes(), share_writer.records()).ok());
  }
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<ps::Trailer>().setRecordCount(7);
    ASSERT_TRUE(writer.write(ps::RecordType::TRAILER, m).ok());
  }
  EXPECT_EQ(writer.records(), 8u);
  std::vector<uint32_t> sequences;
  ASSERT_EQ(read_all(sink.bytes(), 0, &sequences), "");
  EXPECT_EQ(sequences, (std::vector<uint32_t>{1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(RecordNumbering, AppendingPartialFramesFails) {
  MemorySink sink;
  RecordWriter writer(sink, WriterOptions{0});
  std::vector<uint8_t> frames = numbered_stream(2);
  std::vector<uint8_t> cut(frames.begin(), frames.end() - 8);
  EXPECT_FALSE(writer.append_encoded(cut, 2).ok());
  EXPECT_FALSE(writer.append_encoded(frames, 3).ok());
  EXPECT_FALSE(writer.append_encoded(frames, 1).ok());
  EXPECT_TRUE(sink.bytes().empty()) << "nothing of a bad batch reaches the sink";
}

}  // namespace
}  // namespace vmctl::state
