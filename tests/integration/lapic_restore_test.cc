// Restore refuses local APIC records that no real APIC could be in, with one line saying what is
// wrong: the golden snapshot with its LAPIC record edited by hand.
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include <capnp/message.h>

#include "state/stream.h"
#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;
namespace ps = proto::state;

// Writes the golden snapshot to `path` with `edit` applied to its LAPIC record.
void write_edited(const std::string& path, const std::function<void(ps::Lapic::Builder)>& edit) {
  auto source = state::FileSource::open(VMCTL_SOURCE_DIR "/tests/data/heartbeat-v1.0.snap");
  ASSERT_TRUE(source.ok());
  state::RecordReader reader(**source, "golden");
  auto sink = state::FileSink::create(path);
  ASSERT_TRUE(sink.ok());
  state::RecordWriter writer(**sink, state::WriterOptions{1});
  while (true) {
    auto record = reader.next();
    ASSERT_TRUE(record.ok());
    if (!*record) break;
    auto msg = (*record)->message();
    capnp::MallocMessageBuilder b;
    b.setRoot(msg->getRoot<capnp::AnyStruct>());
    if ((*record)->type == ps::RecordType::LAPIC) edit(b.getRoot<ps::Lapic>());
    ASSERT_TRUE(writer.write((*record)->type, b, (*record)->compressed).ok());
  }
  ASSERT_TRUE((*sink)->commit().ok());
}

std::string restore_error(const std::function<void(ps::Lapic::Builder)>& edit) {
  std::string path = ::testing::TempDir() + std::to_string(getpid()) + "-lapic.snap";
  write_edited(path, edit);
  VmctlProcess p({"restore", path});
  std::optional<int> code = p.wait_exit(60s);
  unlink(path.c_str());
  std::string err = p.err();
  EXPECT_EQ(code, 2) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line: " << err;
  return err;
}

TEST(LapicRestore, UneditedGoldenRecordRestores) {
  std::string path = ::testing::TempDir() + std::to_string(getpid()) + "-lapic-ok.snap";
  write_edited(path, [](ps::Lapic::Builder) {});
  VmctlProcess p({"restore", path});
  EXPECT_TRUE(p.wait_for_line("^HB [0-9]+", 30s)) << p.err();
  p.send("exit 0\n");
  EXPECT_EQ(p.wait_exit(30s), 0);
  unlink(path.c_str());
}

TEST(LapicRestore, PprThatDoesNotFollowFromTprAndIsrIsRefused) {
  std::string err = restore_error([](ps::Lapic::Builder l) { l.setPpr(0x90); });
  EXPECT_NE(err.find("PPR"), std::string::npos) << err;
}

TEST(LapicRestore, InServiceVectorBelow16IsRefused) {
  std::string err = restore_error([](ps::Lapic::Builder l) { l.getIsr().set(0, 1u << 5); });
  EXPECT_NE(err.find("vector 5"), std::string::npos) << err;
}

TEST(LapicRestore, X2apicModeWithAnXapicBaseIsRefused) {
  std::string err = restore_error([](ps::Lapic::Builder l) { l.setMode(ps::ApicMode::X2APIC); });
  EXPECT_NE(err.find("mode"), std::string::npos) << err;
}

}  // namespace
}  // namespace vmctl::testing
