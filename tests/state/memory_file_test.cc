#include "state/memory_file.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>

namespace vmctl::state {
namespace {

constexpr uint64_t kRam = vmm::kMinimumMemory;
const std::string kOldId = "00000000000000000000000000000a0a";
const std::string kNewId = "00000000000000000000000000000b0b";

// The pair-commit steps of state/memory_file.h on real files (the crash test in
// tests/integration/snapshot_crash_test.cc drives them through real snapshots).
class MemoryFilePair : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "memory-file-pair-" + std::to_string(getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::system(("rm -rf '" + dir_ + "'").c_str());
    ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0);
    mem_ = dir_ + "/vm.mem";
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  // A memory file bound to `id` whose first RAM byte is `marker`, committed as `path`.
  void write(const std::string& path, const std::string& id, uint8_t marker) {
    Result<vmm::GuestMemory> memory = vmm::GuestMemory::create(kRam);
    ASSERT_TRUE(memory.ok()) << memory.error().message();
    memory->regions()[0].host.data()[0] = marker;
    auto sink = FileSink::create(path, mem_);
    ASSERT_TRUE(sink.ok()) << sink.error().message();
    ASSERT_TRUE(write_memory_file(*memory, **sink, id).ok());
    ASSERT_TRUE((*sink)->commit().ok());
  }
  // The marker of the memory file at `path` if it is bound to `id`, else -1.
  int marker(const std::string& path, const std::string& id) {
    Result<Fd> fd = open_memory_file(path, kRam, id);
    if (!fd.ok()) return -1;
    uint8_t byte = 0;
    if (pread(fd->get(), &byte, 1, kMemoryFileHeaderSize) != 1) return -1;
    return byte;
  }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    DIR* d = opendir(dir_.c_str());
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    closedir(d);
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string dir_, mem_;
};

TEST_F(MemoryFilePair, RollForwardMovesThisSnapshotsPendingFileIntoPlace) {
  write(mem_, kOldId, 1);
  write(pending_memory_file(mem_, kNewId), kNewId, 2);
  Status s = roll_forward_memory_file(mem_, kRam, kNewId);
  ASSERT_TRUE(s.ok()) << s.error().message();
  EXPECT_EQ(marker(mem_, kNewId), 2);
  EXPECT_EQ(entries(), std::vector<std::string>{"vm.mem"});
}

TEST_F(MemoryFilePair, RollForwardLeavesAWholePairAndTheOlderSnapshotAlone) {
  write(mem_, kOldId, 1);
  write(pending_memory_file(mem_, kNewId), kNewId, 2);
  // The old snapshot's own memory file is in place: nothing to finish for it.
  ASSERT_TRUE(roll_forward_memory_file(mem_, kRam, kOldId).ok());
  EXPECT_EQ(marker(mem_, kOldId), 1);
  EXPECT_EQ(marker(pending_memory_file(mem_, kNewId), kNewId), 2);
}

TEST_F(MemoryFilePair, ForeignPendingFileIsRefusedAndReplacesNothing) {
  write(mem_, kOldId, 1);
  // Named for the new snapshot, but bound to another one (planted, or a bug): not a roll-forward.
  write(pending_memory_file(mem_, kNewId), kOldId, 3);
  Status s = roll_forward_memory_file(mem_, kRam, kNewId);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("interrupted snapshot " + kNewId), std::string::npos)
      << s.error().message();
  EXPECT_NE(s.error().message().find("belongs to snapshot " + kOldId), std::string::npos)
      << s.error().message();
  EXPECT_EQ(marker(mem_, kOldId), 1);
}

TEST_F(MemoryFilePair, InstallRemovesThePendingFilesOfOtherSnapshots) {
  write(mem_, kOldId, 1);
  write(pending_memory_file(mem_, kOldId), kOldId, 4);  // a stale one
  write(pending_memory_file(mem_, kNewId), kNewId, 2);
  std::ofstream(dir_ + "/vm.mem.pending-not-an-id") << "kept";
  std::ofstream(dir_ + "/other.mem.pending-" + kOldId) << "kept";
  Status s = install_pending_memory_file(mem_, kNewId);
  ASSERT_TRUE(s.ok()) << s.error().message();
  EXPECT_EQ(marker(mem_, kNewId), 2);
  std::vector<std::string> expected = {"other.mem.pending-" + kOldId, "vm.mem",
                                       "vm.mem.pending-not-an-id"};
  EXPECT_EQ(entries(), expected);
}

TEST_F(MemoryFilePair, InstallWithoutItsPendingFileIsAClearError) {
  write(mem_, kOldId, 1);
  Status s = install_pending_memory_file(mem_, kNewId);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find(pending_memory_file(mem_, kNewId)), std::string::npos)
      << s.error().message();
  EXPECT_EQ(marker(mem_, kOldId), 1);
}

}  // namespace
}  // namespace vmctl::state
