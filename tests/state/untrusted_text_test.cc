// Text from a snapshot file reaches messages, JSON and the terminal only sanitised (base/text.h):
// valid UTF-8, one line, no escape sequences.
#include <gtest/gtest.h>

#include <capnp/message.h>

#include "base/text.h"
#include "state/inspect.h"
#include "state/memory_file.h"
#include "state/stream.h"

namespace vmctl::state {
namespace {

namespace ps = proto::state;

// A small stream whose text fields hold invalid UTF-8, newlines and escape sequences.
std::vector<uint8_t> hostile_stream() {
  MemorySink sink;
  RecordWriter writer(sink, WriterOptions{0});
  {
    capnp::MallocMessageBuilder m;
    auto h = m.initRoot<ps::Header>();
    h.setProducer("vmctl\xff\n0.1");
    h.setSnapshotId("id\x1b[2J");
    h.setParentId("\xc3");
    h.getGuest().setCmdline("console=ttyS0\r\nforged line");
    h.getHost().setHostname("host\xe2\x80\xae");
    h.getHost().setKernelRelease("6.1\x07");
    h.getHost().setCpuVendor("Genuine\xfe");
    EXPECT_TRUE(writer.write(ps::RecordType::HEADER, m).ok());
  }
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<ps::MemoryFile>().setPath("/tmp/mem\xff\n");
    EXPECT_TRUE(writer.write(ps::RecordType::MEMORY_FILE, m).ok());
  }
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<ps::Trailer>().setRecordCount(2);
    EXPECT_TRUE(writer.write(ps::RecordType::TRAILER, m).ok());
  }
  return std::move(sink.bytes());
}

TEST(UntrustedText, InspectionIsValidJsonWithEscapedText) {
  MemorySource source(hostile_stream());
  RecordReader reader(source, "snapshot \xff.snap");
  Result<nlohmann::json> j = inspect_stream(reader);
  ASSERT_TRUE(j.ok()) << j.error().message();
  std::string dumped;
  ASSERT_NO_THROW(dumped = j->dump()) << "nlohmann::json::dump throws on invalid UTF-8";
  const auto& h = (*j)["header"];
  EXPECT_EQ(h["producer"], "vmctl\\xff\\x0a0.1");
  EXPECT_EQ(h["id"], "id\\x1b[2J");
  EXPECT_EQ(h["parent"], "\\xc3");
  EXPECT_EQ(h["cmdline"], "console=ttyS0\\x0d\\x0aforged line");
  EXPECT_EQ(h["host"]["hostname"], "host\\xe2\\x80\\xae");
  EXPECT_EQ(h["host"]["kernel"], "6.1\\x07");
  EXPECT_EQ(h["host"]["cpu"], "Genuine\\xfe family 0 model 0");
  EXPECT_EQ((*j)["memory_file"]["path"], "/tmp/mem\\xff\\x0a");
  std::string text = format_inspection(*j);
  EXPECT_TRUE(is_valid_utf8(text));
  EXPECT_EQ(text.find('\x1b'), std::string::npos);
}

TEST(UntrustedText, StreamNameInMessagesIsSanitised) {
  std::vector<uint8_t> garbage(64, 0x5a);
  MemorySource source(garbage);
  RecordReader reader(source, "snapshot /tmp/a\nb\xff.snap");
  Result<std::optional<Record>> r = reader.next();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message().find('\n'), std::string::npos) << r.error().message();
  EXPECT_TRUE(is_valid_utf8(r.error().message()));
  EXPECT_NE(r.error().message().find("snapshot /tmp/a\\x0ab\\xff.snap: record 0"),
            std::string::npos)
      << r.error().message();
}

TEST(UntrustedText, MemoryFilePathInMessagesIsSanitised) {
  Result<Fd> fd = open_memory_file("/nonexistent/mem\n\xff", 32 << 20, "id");
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.error().message(),
            "cannot open the snapshot's memory file /nonexistent/mem\\x0a\\xff: No such file or "
            "directory");
}

}  // namespace
}  // namespace vmctl::state
