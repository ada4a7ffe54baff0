// Restore of crafted streams on real KVM: the golden snapshot's records rewritten with one thing
// wrong each (what a hostile peer or a crafted file could hold). Each is refused with one line
// naming what is wrong, before the VM runs; the unedited rewrite restores.
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <functional>

#include <capnp/message.h>
#include <fmt/format.h>

#include "state/stream.h"
#include "state/vm_state.h"
#include "tests/state/crafted_frames.h"

namespace vmctl::state {
namespace {

namespace ps = proto::state;
const std::string kGolden = VMCTL_SOURCE_DIR "/tests/data/heartbeat-v1.0.snap";

// Rewrites the golden snapshot's records through a new (numbering) writer. `edit` gets each
// record and writes what should take its place; the trailer it gets is rewritten to count what
// was written unless `keep_trailer`.
struct Rewrite {
  std::function<void(Record&, RecordWriter&)> edit = copy;
  bool keep_trailer = false;

  static void copy(Record& record, RecordWriter& writer) {
    auto msg = record.message();
    capnp::MallocMessageBuilder b;
    b.setRoot(msg->getRoot<capnp::AnyStruct>());
    ASSERT_TRUE(writer.write(record.type, b).ok());
  }

  std::vector<uint8_t> bytes() const {
    auto source = FileSource::open(kGolden);
    EXPECT_TRUE(source.ok());
    RecordReader reader(**source, "golden");
    MemorySink sink;
    RecordWriter writer(sink, WriterOptions{0});
    while (true) {
      auto record = reader.next();
      EXPECT_TRUE(record.ok());
      if (!record.ok() || !*record) break;
      if ((*record)->type != ps::RecordType::TRAILER || keep_trailer) {
        edit(**record, writer);
        continue;
      }
      auto msg = (*record)->message();
      capnp::MallocMessageBuilder b;
      b.setRoot(msg->getRoot<ps::Trailer>());
      b.getRoot<ps::Trailer>().setRecordCount(writer.records());
      EXPECT_TRUE(writer.write(ps::RecordType::TRAILER, b).ok());
    }
    return std::move(sink.bytes());
  }
};

// Writes what `rewrite` gives in place of records of `type` (and copies the rest).
Rewrite replacing(ps::RecordType type, std::function<void(Record&, RecordWriter&)> with) {
  return Rewrite{[type, with](Record& r, RecordWriter& w) {
    if (r.type == type) return with(r, w);
    Rewrite::copy(r, w);
  }};
}
Rewrite dropping(ps::RecordType type) {
  return replacing(type, [](Record&, RecordWriter&) {});
}
Rewrite doubling(ps::RecordType type) {
  return replacing(type, [](Record& r, RecordWriter& w) {
    Rewrite::copy(r, w);
    Rewrite::copy(r, w);
  });
}
// Edits the header record.
Rewrite with_header(std::function<void(ps::Header::Builder)> edit) {
  return replacing(ps::RecordType::HEADER, [edit](Record& r, RecordWriter& w) {
    auto msg = r.message();
    capnp::MallocMessageBuilder b;
    b.setRoot(msg->getRoot<ps::Header>());
    edit(b.getRoot<ps::Header>());
    ASSERT_TRUE(w.write(ps::RecordType::HEADER, b).ok());
  });
}

// Restores `bytes` as a migration stream; returns the error or "".
std::string restore_from_peer(std::vector<uint8_t> bytes, const RestoreOptions& options = {}) {
  MemorySource source(std::move(bytes));
  RecordReader reader(source, "migration stream");
  Result<std::unique_ptr<vmm::Vm>> vm = restore_vm(reader, options);
  if (!vm.ok()) {
    EXPECT_EQ(vm.error().kind(), ErrorKind::kUser) << vm.error().message();
    EXPECT_EQ(vm.error().message().find('\n'), std::string::npos) << "one line";
    return vm.error().message();
  }
  return "";
}

// Restores `bytes` as a snapshot file; returns the error or "".
std::string restore_from_file(const std::vector<uint8_t>& bytes,
                              const RestoreOptions& options = {}) {
  std::string path = fmt::format("{}/restore-input-{}.snap", ::testing::TempDir(), getpid());
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
  }
  Result<std::unique_ptr<vmm::Vm>> vm = restore_snapshot({path}, options);
  unlink(path.c_str());
  if (!vm.ok()) {
    EXPECT_EQ(vm.error().message().find('\n'), std::string::npos) << "one line";
    return vm.error().message();
  }
  return "";
}

std::vector<uint8_t> golden_bytes() {
  std::ifstream in(kGolden, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

#define EXPECT_HAS(haystack, needle)                                \
  do {                                                              \
    std::string h_ = (haystack);                                    \
    EXPECT_NE(h_.find(needle), std::string::npos) << "got: " << h_; \
  } while (0)

TEST(RestoreInput, RewrittenGoldenRestoresFromAPeerAndFromAFile) {
  EXPECT_EQ(restore_from_peer(Rewrite{}.bytes()), "");
  EXPECT_EQ(restore_from_file(Rewrite{}.bytes()), "");
  EXPECT_EQ(restore_from_file(golden_bytes()), "") << "format 1.0, unnumbered";
}

TEST(RestoreInput, UnnumberedStreamFromAPeerIsRefused) {
  EXPECT_HAS(restore_from_peer(golden_bytes()),
             "migration stream: a migration stream must number its records (format 1.2 on), and "
             "this one does not: the source runs an older vmctl; upgrade it");
}

TEST(RestoreInput, DroppedRecordInAPeerStreamIsRefused) {
  std::vector<uint8_t> bytes = Rewrite{}.bytes();
  std::vector<uint8_t> cut;
  std::vector<size_t> offsets = testing::frame_offsets(bytes);
  for (size_t i = 0; i < offsets.size(); ++i) {
    if (i == 5) continue;  // the first device record
    std::vector<uint8_t> f = testing::frame_bytes(bytes, i);
    cut.insert(cut.end(), f.begin(), f.end());
  }
  EXPECT_HAS(restore_from_peer(cut), "record numbered 7 follows record 5: 1 record is missing");
}

TEST(RestoreInput, EachMissingMachineRecordIsNamed) {
  for (auto [type, name] : {std::pair{ps::RecordType::IRQCHIP, "irqchip record"},
                            std::pair{ps::RecordType::PIT, "pit record"},
                            std::pair{ps::RecordType::CLOCK, "clock record"},
                            std::pair{ps::RecordType::VCPU, "vcpu record for vCPU 0"},
                            std::pair{ps::RecordType::LAPIC, "lapic record for vCPU 0"}}) {
    std::string error = restore_from_peer(dropping(type).bytes());
    EXPECT_HAS(error, fmt::format("migration stream: the stream has no {}; every stream carries "
                                  "the irqchip, PIT and clock and a vcpu and lapic record per "
                                  "vCPU: truncated or corrupt",
                                  name));
    EXPECT_HAS(restore_from_file(dropping(type).bytes()), fmt::format("has no {}", name));
  }
}

TEST(RestoreInput, VcpuOfASecondCpuIsRequiredToo) {
  // The header says 2 vCPUs; the stream has records for vCPU 0 only.
  std::string error = restore_from_peer(
      with_header([](ps::Header::Builder h) { h.getGuest().setVcpuCount(2); }).bytes());
  EXPECT_HAS(error, "the stream has no vcpu record for vCPU 1");
}

TEST(RestoreInput, SecondCopyOfARecordHeldOnceIsRefused) {
  EXPECT_HAS(restore_from_peer(doubling(ps::RecordType::PIT).bytes()),
             "migration stream: a second pit record: corrupt");
  EXPECT_HAS(restore_from_peer(doubling(ps::RecordType::IRQCHIP).bytes()), "a second irqchip");
  EXPECT_HAS(restore_from_peer(doubling(ps::RecordType::CLOCK).bytes()), "a second clock");
  EXPECT_HAS(restore_from_peer(doubling(ps::RecordType::VCPU).bytes()),
             "migration stream: a second vcpu record for vCPU 0: corrupt");
  EXPECT_HAS(restore_from_peer(doubling(ps::RecordType::LAPIC).bytes()),
             "a second lapic record for vCPU 0");
}

TEST(RestoreInput, VcpuRecordBeyondTheHeadersCountIsRefused) {
  Rewrite r = replacing(ps::RecordType::LAPIC, [](Record& rec, RecordWriter& w) {
    auto msg = rec.message();
    capnp::MallocMessageBuilder b;
    b.setRoot(msg->getRoot<ps::Lapic>());
    b.getRoot<ps::Lapic>().setVcpuIndex(3);
    ASSERT_TRUE(w.write(ps::RecordType::LAPIC, b).ok());
  });
  EXPECT_HAS(restore_from_peer(r.bytes()),
             "migration stream: lapic record for vCPU 3, but the header says 1 vCPU");
}

TEST(RestoreInput, TrailerCountsMustMatchWhatWasRead) {
  // A record left out and the original trailer kept: 9 counted, 8 there.
  Rewrite dropped = dropping(ps::RecordType::DEVICE);
  dropped.keep_trailer = true;
  std::string error = restore_from_file(dropped.bytes());
  EXPECT_HAS(error,
             "the trailer counts 9 records before it, but the stream has 7: records were "
             "lost or added");
  Rewrite pages = replacing(ps::RecordType::TRAILER, [](Record& rec, RecordWriter& w) {
    auto msg = rec.message();
    capnp::MallocMessageBuilder b;
    b.setRoot(msg->getRoot<ps::Trailer>());
    b.getRoot<ps::Trailer>().setMemoryPages(21);
    ASSERT_TRUE(w.write(ps::RecordType::TRAILER, b).ok());
  });
  pages.keep_trailer = true;
  EXPECT_HAS(restore_from_peer(pages.bytes()),
             "migration stream: the trailer counts 21 memory pages, but the stream's memory "
             "records carry 20: corrupt");
}

// A memory file record right after the header, naming a file on the receiving host.
Rewrite with_memory_file(const std::string& path, ps::StreamKind kind) {
  return replacing(ps::RecordType::HEADER, [path, kind](Record& rec, RecordWriter& w) {
    auto msg = rec.message();
    capnp::MallocMessageBuilder b;
    b.setRoot(msg->getRoot<ps::Header>());
    b.getRoot<ps::Header>().setKind(kind);
    ASSERT_TRUE(w.write(ps::RecordType::HEADER, b).ok());
    capnp::MallocMessageBuilder m;
    auto file = m.initRoot<ps::MemoryFile>();
    file.setPath(path);
    file.setRamSize(32 << 20);
    file.setHeaderSize(4096);
    ASSERT_TRUE(w.write(ps::RecordType::MEMORY_FILE, m).ok());
  });
}

TEST(RestoreInput, PeerStreamMayNotNameAMemoryFile) {
  const std::string refusal =
      "names a memory file, a path on this host: a migration carries guest memory in the stream; "
      "refused";
  // Whatever kind the header claims.
  EXPECT_HAS(restore_from_peer(with_memory_file("/etc/shadow", ps::StreamKind::MIGRATION).bytes()),
             "migration stream: " + refusal);
  EXPECT_HAS(
      restore_from_peer(with_memory_file("/etc/shadow", ps::StreamKind::FULL_SNAPSHOT).bytes()),
      refusal);
  // A saved migration stream as a file: still no memory file.
  EXPECT_HAS(restore_from_file(with_memory_file("x.mem", ps::StreamKind::MIGRATION).bytes()),
             refusal);
  // A full snapshot file may have one (this one does not exist): the refusal is another one.
  std::string error =
      restore_from_file(with_memory_file("no-such.mem", ps::StreamKind::FULL_SNAPSHOT).bytes());
  EXPECT_HAS(error, "cannot open the snapshot's memory file");
}

TEST(RestoreInput, GuestLargerThanTheHostOrTheBudgetIsRefusedBeforeAllocating) {
  std::string error = restore_from_peer(
      with_header([](ps::Header::Builder h) { h.getGuest().setMemorySize(1ull << 50); }).bytes());
  EXPECT_HAS(error,
             "migration stream: the guest has 1024 TiB of RAM, more than this host has in all");
  RestoreOptions small;
  small.budget.max_guest_memory = 16 << 20;
  EXPECT_HAS(restore_from_peer(Rewrite{}.bytes(), small),
             "migration stream: the guest has 32 MiB of RAM, more than this host allows a guest "
             "(16 MiB): restore it on a larger host");
  EXPECT_HAS(restore_from_peer(with_header([](ps::Header::Builder h) {
                                 h.getGuest().setMemorySize((32 << 20) + 100);
                               }).bytes()),
             "not a whole number of pages");
}

TEST(RestoreInput, MoreVcpusThanAllowedIsRefusedBeforeAllocating) {
  std::string error = restore_from_peer(
      with_header([](ps::Header::Builder h) { h.getGuest().setVcpuCount(100000); }).bytes());
  EXPECT_HAS(error, "migration stream: the guest has 100000 vCPUs, more than");
  // The most a header can claim: refused before the per-vCPU bookkeeping (two bits per claimed
  // vCPU, 1 GiB here) is sized by it (found by tests/fuzz/restore_contents_fuzzer).
  EXPECT_HAS(restore_from_peer(with_header([](ps::Header::Builder h) {
                                 h.getGuest().setVcpuCount(UINT32_MAX);
                               }).bytes()),
             "migration stream: the guest has 4294967295 vCPUs, more than");
  RestoreOptions one;
  one.budget.max_vcpus = 1;
  EXPECT_HAS(
      restore_from_peer(
          with_header([](ps::Header::Builder h) { h.getGuest().setVcpuCount(2); }).bytes(), one),
      "the guest has 2 vCPUs, more than 1 (what this host allows a guest)");
  EXPECT_HAS(restore_from_peer(
                 with_header([](ps::Header::Builder h) { h.getGuest().setVcpuCount(0); }).bytes()),
             "the header gives the guest no vCPUs: corrupt");
}

TEST(RestoreInput, RetainedRecordsAreBudgeted) {
  RestoreOptions few;
  few.budget.max_retained_records = 3;  // the golden needs 7
  EXPECT_HAS(restore_from_peer(Rewrite{}.bytes(), few),
             "migration stream: more than 3 CPU and device records before the trailer (a machine "
             "of 1 vCPU needs about 7): refused");
  RestoreOptions small;
  small.budget.max_retained_bytes = 4096;  // the vcpu record alone is ~7.5 KiB
  EXPECT_HAS(
      restore_from_peer(Rewrite{}.bytes(), small),
      "migration stream: its CPU and device records exceed 4 KiB before the trailer: refused");
}

TEST(RestoreInput, SkippableRecordsOfANewerMinorAreNotKept) {
  // A thousand records of a type this version does not know and may skip, each ~1 KiB.
  Rewrite r = replacing(ps::RecordType::CLOCK, [](Record& rec, RecordWriter& w) {
    Rewrite::copy(rec, w);
    for (int i = 0; i < 1000; ++i) {
      capnp::MallocMessageBuilder m;
      m.initRoot<ps::Device>().setName(std::string(1000, 'n'));
      ASSERT_TRUE(w.write(static_cast<RecordType>(known_record_types()), m).ok());
    }
  });
  RestoreOptions tight;
  tight.budget.max_retained_records = 7;
  tight.budget.max_retained_bytes = 64 << 10;
  EXPECT_EQ(restore_from_peer(r.bytes(), tight), "");
}

TEST(RestoreInput, HeaderIdsMustBePlainText) {
  std::string error = restore_from_peer(
      with_header([](ps::Header::Builder h) { h.setSnapshotId("abc\n\x1b[31mforged"); }).bytes());
  EXPECT_HAS(error,
             "migration stream: the header's snapshot id \"abc\\x0a\\x1b[31mforged\" is not an id "
             "(printable, at most 64 bytes): corrupt");
  EXPECT_HAS(restore_from_peer(with_header([](ps::Header::Builder h) {
                                 h.setParentId(std::string(65, 'a'));
                               }).bytes()),
             "the header's parent id");
}

TEST(RestoreInput, StreamInfoTextIsSanitised) {
  std::vector<uint8_t> bytes = with_header([](ps::Header::Builder h) {
                                 h.setProducer("vmctl \xff\n9.9");
                                 h.getGuest().setCmdline("hb_ms=100\x1b]0;owned\x07");
                               }).bytes();
  MemorySource source(bytes);
  RecordReader reader(source, "migration stream \xfe");
  StreamInfo info;
  Result<std::unique_ptr<vmm::Vm>> vm = restore_vm(reader, RestoreOptions{}, &info);
  ASSERT_TRUE(vm.ok()) << vm.error().message();
  EXPECT_EQ(info.producer, "vmctl \\xff\\x0a9.9");
  EXPECT_EQ(info.cmdline, "hb_ms=100\\x1b]0;owned\\x07");
  EXPECT_EQ(reader.name(), "migration stream \\xfe");
}

}  // namespace
}  // namespace vmctl::state
