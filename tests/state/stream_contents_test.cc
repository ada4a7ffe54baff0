// What each kind of stream must and may contain (state/stream_contents.h), record type by record
// type, without KVM.
#include "state/stream_contents.h"

#include <gtest/gtest.h>

#include <capnp/message.h>

namespace vmctl::state {
namespace {

namespace ps = proto::state;
using T = ps::RecordType;
using K = ps::StreamKind;

// A trailer that counts `records` records and `pages` pages.
struct TrailerMessage {
  capnp::MallocMessageBuilder message;
  TrailerMessage(uint64_t records, uint64_t pages) {
    auto t = message.initRoot<ps::Trailer>();
    t.setRecordCount(records);
    t.setMemoryPages(pages);
  }
  ps::Trailer::Reader reader() { return message.getRoot<ps::Trailer>().asReader(); }
};

// Admits the machine records of `vcpus` vCPUs.
void admit_machine(StreamContents& c, unsigned vcpus) {
  for (T t : {T::IRQCHIP, T::PIT, T::CLOCK}) ASSERT_TRUE(c.admit(t).ok());
  for (unsigned i = 0; i < vcpus; ++i) {
    ASSERT_TRUE(c.admit_vcpu(T::VCPU, i).ok());
    ASSERT_TRUE(c.admit_vcpu(T::LAPIC, i).ok());
  }
}

std::string message(const Status& s) {
  return s.ok() ? "" : s.error().message();
}

TEST(StreamContents, CompleteStreamOfEachKindPasses) {
  for (K kind : {K::FULL_SNAPSHOT, K::DIFF_SNAPSHOT, K::MIGRATION}) {
    StreamContents c("s", kind, StreamOrigin::kFile, 2, RestoreBudget{});
    if (kind != K::FULL_SNAPSHOT) {
      ASSERT_TRUE(c.admit(T::DIRTY_LOG).ok());
    }
    ASSERT_TRUE(c.admit(T::MEMORY_PAGES).ok());
    c.add_memory_pages(10);
    admit_machine(c, 2);
    TrailerMessage t(9, 10);
    EXPECT_EQ(message(c.check_trailer(t.reader(), 9)), "");
  }
}

TEST(StreamContents, FullSnapshotHasNoDirtyLog) {
  StreamContents c("snapshot a", K::FULL_SNAPSHOT, StreamOrigin::kFile, 1, RestoreBudget{});
  EXPECT_EQ(message(c.admit(T::DIRTY_LOG)),
            "snapshot a: a full snapshot with a dirty log (only diffs have one): corrupt");
}

TEST(StreamContents, DiffSnapshotHasOneDirtyLogBeforeItsPages) {
  {
    StreamContents c("d", K::DIFF_SNAPSHOT, StreamOrigin::kFile, 1, RestoreBudget{});
    EXPECT_EQ(message(c.admit(T::MEMORY_PAGES)),
              "d: memory pages before the diff snapshot's dirty log: corrupt");
  }
  {
    StreamContents c("d", K::DIFF_SNAPSHOT, StreamOrigin::kFile, 1, RestoreBudget{});
    ASSERT_TRUE(c.admit(T::DIRTY_LOG).ok());
    EXPECT_EQ(message(c.admit(T::DIRTY_LOG)), "d: a second dirty log in a diff snapshot: corrupt");
  }
  {
    StreamContents c("d", K::DIFF_SNAPSHOT, StreamOrigin::kFile, 1, RestoreBudget{});
    admit_machine(c, 1);
    TrailerMessage t(5, 0);
    EXPECT_EQ(message(c.check_trailer(t.reader(), 5)),
              "d: the diff snapshot has no dirty log naming the pages it covers: corrupt");
  }
  {
    StreamContents c("d", K::DIFF_SNAPSHOT, StreamOrigin::kFile, 1, RestoreBudget{});
    EXPECT_EQ(message(c.admit(T::MEMORY_FILE)),
              "d: a diff snapshot names a memory file; only full snapshots have one: corrupt");
  }
}

TEST(StreamContents, MigrationCarriesADirtyLogPerRound) {
  StreamContents c("m", K::MIGRATION, StreamOrigin::kPeer, 1, RestoreBudget{});
  ASSERT_TRUE(c.admit(T::MEMORY_PAGES).ok());  // round 0: every page, no log
  for (int round = 1; round < 4; ++round) {
    ASSERT_TRUE(c.admit(T::DIRTY_LOG).ok());
    ASSERT_TRUE(c.admit(T::MEMORY_PAGES).ok());
  }
}

TEST(StreamContents, MemoryFileOnlyInAFullSnapshotFile) {
  EXPECT_TRUE(StreamContents("f", K::FULL_SNAPSHOT, StreamOrigin::kFile, 1, RestoreBudget{})
                  .admit(T::MEMORY_FILE)
                  .ok());
  for (auto [kind, origin] : {std::pair{K::FULL_SNAPSHOT, StreamOrigin::kPeer},
                              std::pair{K::MIGRATION, StreamOrigin::kPeer},
                              std::pair{K::MIGRATION, StreamOrigin::kFile}}) {
    StreamContents c("m", kind, origin, 1, RestoreBudget{});
    EXPECT_EQ(message(c.admit(T::MEMORY_FILE)),
              "m: names a memory file, a path on this host: a migration carries guest memory in "
              "the stream; refused");
  }
}

TEST(StreamContents, MigrationStreamsMustBeNumbered) {
  EXPECT_TRUE(StreamContents("f", K::FULL_SNAPSHOT, StreamOrigin::kFile, 1, RestoreBudget{})
                  .check_numbering(false)
                  .ok())
      << "snapshot files of older versions";
  for (auto [kind, origin] : {std::pair{K::FULL_SNAPSHOT, StreamOrigin::kPeer},
                              std::pair{K::MIGRATION, StreamOrigin::kFile}}) {
    StreamContents c("m", kind, origin, 1, RestoreBudget{});
    EXPECT_FALSE(c.check_numbering(false).ok());
    EXPECT_TRUE(c.check_numbering(true).ok());
  }
}

TEST(StreamContents, MemoryFileStreamsPagesAreNotCountedAgainstTheTrailer) {
  StreamContents c("f", K::FULL_SNAPSHOT, StreamOrigin::kFile, 1, RestoreBudget{});
  ASSERT_TRUE(c.admit(T::MEMORY_FILE).ok());
  c.used_memory_file();
  admit_machine(c, 1);
  TrailerMessage t(7, 8000);  // the non-zero pages in the file
  EXPECT_EQ(message(c.check_trailer(t.reader(), 7)), "");
}

TEST(StreamContents, RetainedRecordsAndBytesAreBothBounded) {
  Record r;
  r.type = T::DEVICE;
  r.payload = kj::heapArray<capnp::word>(8);  // 64 bytes
  RestoreBudget count;
  count.max_retained_records = 2;
  StreamContents by_count("s", K::FULL_SNAPSHOT, StreamOrigin::kFile, 1, count);
  EXPECT_TRUE(by_count.retain(r).ok());
  EXPECT_TRUE(by_count.retain(r).ok());
  EXPECT_FALSE(by_count.retain(r).ok());
  RestoreBudget bytes;
  bytes.max_retained_bytes = 100;
  StreamContents by_bytes("s", K::FULL_SNAPSHOT, StreamOrigin::kFile, 1, bytes);
  EXPECT_TRUE(by_bytes.retain(r).ok());
  EXPECT_EQ(message(by_bytes.retain(r)),
            "s: its CPU and device records exceed 100 B before the trailer: refused");
}

}  // namespace
}  // namespace vmctl::state
