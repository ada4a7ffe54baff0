#include "state/stream.h"

#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include <fmt/format.h>

namespace vmctl::state {
namespace {

namespace ps = proto::state;

// How many lines a shell command prints.
int shell_count(const std::string& command) {
  FILE* p = popen(command.c_str(), "r");
  int lines = 0;
  for (int c; (c = fgetc(p)) != EOF;) lines += c == '\n';
  pclose(p);
  return lines;
}

std::vector<uint8_t> write_stream(int compression = 1) {
  MemorySink sink;
  RecordWriter writer(sink, WriterOptions{compression});
  {
    capnp::MallocMessageBuilder m;
    auto h = m.initRoot<ps::Header>();
    h.setFormatMajor(format_major());
    h.setProducer("test");
    EXPECT_TRUE(writer.write(ps::RecordType::HEADER, m).ok());
  }
  {
    capnp::MallocMessageBuilder m;
    auto pages = m.initRoot<ps::MemoryPages>();
    auto runs = pages.initRuns(1);
    runs[0].setFirstPage(256);
    runs[0].setCount(2);
    auto data = pages.initData(8192);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i / 64);
    EXPECT_TRUE(writer.write(ps::RecordType::MEMORY_PAGES, m, true).ok());
  }
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<ps::Trailer>().setRecordCount(2);
    EXPECT_TRUE(writer.write(ps::RecordType::TRAILER, m).ok());
  }
  return std::move(sink.bytes());
}

// Reads records until the end or an error; returns the error message or "".
std::string read_all(std::vector<uint8_t> bytes, size_t* count = nullptr) {
  MemorySource source(std::move(bytes));
  RecordReader reader(source, "test stream");
  size_t n = 0;
  while (true) {
    Result<std::optional<Record>> r = reader.next();
    if (!r.ok()) return r.error().message();
    if (!r.value()) break;
    ++n;
  }
  if (count) *count = n;
  return "";
}

TEST(RecordStream, RoundTripsRecordsAndCompressesMemory) {
  std::vector<uint8_t> bytes = write_stream();
  MemorySource source(bytes);
  RecordReader reader(source, "test stream");
  auto header = reader.next();
  ASSERT_TRUE(header.ok() && header.value());
  EXPECT_EQ(header.value()->type, ps::RecordType::HEADER);
  EXPECT_EQ(header.value()->message()->getRoot<ps::Header>().getProducer(), "test");
  auto pages = reader.next();
  ASSERT_TRUE(pages.ok() && pages.value());
  EXPECT_TRUE(pages.value()->compressed) << "a repetitive page compresses";
  EXPECT_LT(pages.value()->stored_size, 8192u);
  auto msg = pages.value()->message();
  auto data = msg->getRoot<ps::MemoryPages>().getData();
  ASSERT_EQ(data.size(), 8192u);
  EXPECT_EQ(data[8191], 8191 / 64);
  auto trailer = reader.next();
  ASSERT_TRUE(trailer.ok() && trailer.value());
  auto end = reader.next();
  ASSERT_TRUE(end.ok());
  EXPECT_FALSE(end.value());
}

TEST(RecordStream, CompressionOffStoresRawPayloads) {
  std::vector<uint8_t> bytes = write_stream(0);
  MemorySource source(bytes);
  RecordReader reader(source, "test");
  ASSERT_TRUE(reader.next().ok());
  auto pages = reader.next();
  ASSERT_TRUE(pages.ok() && pages.value());
  EXPECT_FALSE(pages.value()->compressed);
}

TEST(RecordStream, EveryFlippedByteIsDetected) {
  std::vector<uint8_t> good = write_stream();
  size_t records = 0;
  ASSERT_EQ(read_all(good, &records), "");
  ASSERT_EQ(records, 3u);
  for (size_t i = 0; i < good.size(); ++i) {
    std::vector<uint8_t> bad = good;
    bad[i] ^= 0x20;
    size_t n = 0;
    std::string error = read_all(bad, &n);
    EXPECT_FALSE(error.empty()) << "flipping byte " << i << " went unnoticed";
  }
}

TEST(RecordStream, TruncationIsNamed) {
  std::vector<uint8_t> good = write_stream();
  for (size_t cut : {size_t{10}, size_t{60}, good.size() - 41}) {
    std::vector<uint8_t> bad(good.begin(), good.begin() + cut);
    std::string error = read_all(bad);
    EXPECT_NE(error.find("truncated"), std::string::npos) << cut << ": " << error;
  }
}

TEST(RecordStream, NewerMajorIsRefusedNamingBothVersions) {
  std::vector<uint8_t> bytes = write_stream();
  bytes[6] = static_cast<uint8_t>(format_major() + 1);
  bytes[7] = 3;
  std::string error = read_all(bytes);
  EXPECT_NE(error.find(fmt::format("format {}.3", format_major() + 1)), std::string::npos) << error;
  EXPECT_NE(error.find(fmt::format("reads format {}.x", format_major())), std::string::npos)
      << error;
  EXPECT_NE(error.find("upgrade"), std::string::npos) << error;
}

// Frame layout: magic (4), type (2), major (1), minor (1), flags (4) ...
void set_frame_u16(std::vector<uint8_t>& bytes, size_t offset, uint16_t v) {
  std::memcpy(bytes.data() + offset, &v, sizeof v);
}
void set_frame_u32(std::vector<uint8_t>& bytes, size_t offset, uint32_t v) {
  std::memcpy(bytes.data() + offset, &v, sizeof v);
}

TEST(RecordStream, UnknownRequiredRecordTypeIsRefusedNotSkipped) {
  std::vector<uint8_t> bytes = write_stream();
  set_frame_u16(bytes, 4, known_record_types());  // one past the last type this version knows
  set_frame_u32(bytes, 8, kFrameRequired);
  std::string error = read_all(bytes);
  EXPECT_NE(error.find("must not skip"), std::string::npos) << error;
  EXPECT_NE(error.find("upgrade vmctl"), std::string::npos) << error;
}

TEST(RecordStream, UnknownOptionalRecordTypeIsNotRefusedByTheFrameReader) {
  std::vector<uint8_t> bytes = write_stream();
  set_frame_u16(bytes, 4, known_record_types());
  // Without REQUIRED the frame reader gets as far as the checksum (which covers the type).
  EXPECT_NE(read_all(bytes).find("checksum mismatch"), std::string::npos);
}

TEST(RecordStream, UnknownFrameFlagsAreRefused) {
  std::vector<uint8_t> bytes = write_stream();
  set_frame_u32(bytes, 8, 1u << 7);
  std::string error = read_all(bytes);
  EXPECT_NE(error.find("frame flags 0x80"), std::string::npos) << error;
}

TEST(RecordStream, EveryRecordTypeHasAName) {
  for (uint16_t t = 0; t < known_record_types(); ++t) {
    EXPECT_STRNE(record_type_name(static_cast<RecordType>(t)), "unknown") << t;
  }
}

TEST(FileSink, SkippedRangesAreHolesThatReadAsZero) {
  std::string path = ::testing::TempDir() + "/sink-holes.bin";
  {
    auto sink = FileSink::create(path);
    ASSERT_TRUE(sink.ok());
    ASSERT_TRUE((*sink)->write("ab", 2).ok());
    ASSERT_TRUE((*sink)->skip(8 << 20).ok());
    ASSERT_TRUE((*sink)->write("cd", 2).ok());
    ASSERT_TRUE((*sink)->skip(1 << 20).ok());  // a trailing hole still counts toward the size
    ASSERT_TRUE((*sink)->commit().ok());
  }
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 2 + (8 << 20) + 2 + (1 << 20));
  EXPECT_LT(st.st_blocks * 512, 1 << 20) << "skipped ranges must not be allocated";
  std::ifstream in(path, std::ios::binary);
  std::string content((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(content.substr(0, 2), "ab");
  EXPECT_EQ(content.substr(2 + (8 << 20), 2), "cd");
  EXPECT_EQ(content.find_first_not_of('\0', 2), size_t{2 + (8 << 20)});
  unlink(path.c_str());
}

TEST(RecordStream, GarbageIsNotAStream) {
  std::vector<uint8_t> garbage(4096, 0x5a);
  EXPECT_NE(read_all(garbage).find("not a vmctl state stream"), std::string::npos);
}

TEST(RecordStream, AbsurdSizesAreRefusedBeforeAllocating) {
  std::vector<uint8_t> bytes = write_stream();
  uint64_t huge = uint64_t{1} << 40;
  std::memcpy(bytes.data() + 16, &huge, 8);
  std::memcpy(bytes.data() + 24, &huge, 8);
  EXPECT_NE(read_all(bytes).find("more than any record can hold"), std::string::npos);
}

TEST(FileSink, UncommittedFileLeavesNothingAndKeepsTheOldFile) {
  std::string path = ::testing::TempDir() + "/sink-test.snap";
  {
    auto sink = FileSink::create(path);
    ASSERT_TRUE(sink.ok());
    ASSERT_TRUE((*sink)->write("old", 3).ok());
    ASSERT_TRUE((*sink)->commit().ok());
  }
  {
    auto sink = FileSink::create(path);
    ASSERT_TRUE(sink.ok());
    ASSERT_TRUE((*sink)->write("new data", 8).ok());
    // destroyed without commit: a failed snapshot
  }
  FILE* f = fopen(path.c_str(), "r");
  ASSERT_NE(f, nullptr);
  char buf[16] = {};
  size_t n = fread(buf, 1, sizeof(buf), f);
  fclose(f);
  EXPECT_EQ(std::string(buf, n), "old");
  EXPECT_EQ(shell_count("ls '" + path + "'.tmp-* 2>/dev/null"), 0) << "temporary file left behind";
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u) << "snapshots are the operator's alone";
  unlink(path.c_str());
}

TEST(FileSink, WriterThatCrashesLeavesTheOldFileAndItsLeftoverGoesNextTime) {
  std::string path = ::testing::TempDir() + "/sink-crash-" + std::to_string(getpid()) + ".snap";
  {
    auto sink = FileSink::create(path);
    ASSERT_TRUE(sink.ok());
    ASSERT_TRUE((*sink)->write("old", 3).ok());
    ASSERT_TRUE((*sink)->commit().ok());
  }
  pid_t writer = fork();
  if (writer == 0) {
    auto sink = FileSink::create(path);
    if (!sink.ok()) _exit(1);
    std::vector<uint8_t> big(8 << 20, 0x5a);  // more than the buffer: it reaches the disk
    if (!(*sink)->write(big.data(), big.size()).ok()) _exit(1);
    _exit(0);  // a crash: no commit, no destructor
  }
  int status = 0;
  ASSERT_EQ(waitpid(writer, &status, 0), writer);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  std::string leftover = fmt::format("{}.tmp-{}-", path, writer);
  EXPECT_EQ(shell_count("ls '" + leftover + "'* 2>/dev/null"), 1) << "the crash leaves its file";
  std::ifstream in(path, std::ios::binary);
  std::string content((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(content, "old");
  {
    auto sink = FileSink::create(path);  // the next writer of this file
    ASSERT_TRUE(sink.ok());
  }
  EXPECT_EQ(shell_count("ls '" + leftover + "'* 2>/dev/null"), 0)
      << "the dead writer's temporary file must be removed";
  unlink(path.c_str());
}

TEST(FileSink, UnwritableDirectoryIsAClearError) {
  auto sink = FileSink::create("/nonexistent-dir/x.snap");
  ASSERT_FALSE(sink.ok());
  EXPECT_NE(sink.error().message().find("/nonexistent-dir/x.snap"), std::string::npos);
}

}  // namespace
}  // namespace vmctl::state

#include "state/dirty_tracker.h"

namespace vmctl::state {
namespace {

TEST(DirtyRuns, RoundTripAlternatingCleanAndDirty) {
  std::vector<uint64_t> bitmap(3, 0);
  for (uint64_t p : {0, 1, 2, 70, 71, 130, 150}) bitmap[p / 64] |= 1ull << (p % 64);
  std::vector<uint64_t> runs = encode_runs(bitmap, 160);
  EXPECT_EQ(runs, (std::vector<uint64_t>{0, 3, 67, 2, 58, 1, 19, 1, 9}));
  auto back = decode_runs(runs, 160);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, bitmap);
  EXPECT_FALSE(decode_runs({0, 3, 200}, 160).ok()) << "runs past the region";
  EXPECT_FALSE(decode_runs({0, 3}, 160).ok()) << "runs short of the region";
}

}  // namespace
}  // namespace vmctl::state
