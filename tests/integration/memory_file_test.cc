// Snapshots with a separate memory file (`snapshot --memory-file`) and lazy restore
// (`restore --lazy`, guest RAM mapped copy-on-write from that file).
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>

#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/" + std::to_string(getpid()) + "-" + name;
}

int vmctl(const std::vector<std::string>& args, std::string* err = nullptr) {
  VmctlProcess p(args);
  std::optional<int> code = p.wait_exit(120s);
  if (err) *err = p.err();
  return code.value_or(-1);
}

off_t file_size(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

blkcnt_t allocated_bytes(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? st.st_blocks * 512 : -1;
}

// Runs the dirtier (64 MiB it writes and checksums) and snapshots it with a memory file.
class MemoryFile : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string sock = temp_path("mf.sock");
    VmctlProcess vm({"run", "--control", sock, "--memory", "512M", "--kernel",
                     guest_path("dirtier.elf"), "--cmdline", "mib=64 rate=0 hb_ms=100"});
    ASSERT_TRUE(vm.wait_for_line("^HB 3 .*total=[1-9]", 60s)) << vm.out() << vm.err();
    std::string err;
    ASSERT_EQ(vmctl({"snapshot", "--control", sock, "--memory-file", mem_, snap_}, &err), 0) << err;
    vm.signal(SIGTERM);
    EXPECT_EQ(vm.wait_exit(30s), 0);
  }
  void TearDown() override {
    unlink(snap_.c_str());
    unlink(mem_.c_str());
  }

  void expect_guest_intact(VmctlProcess& restored) {
    ASSERT_TRUE(restored.wait_for_line("^HB [0-9]+ ", 60s)) << restored.out() << restored.err();
    restored.send("verify\n");
    auto verify = restored.wait_for_line("^VERIFY ", 60s);
    ASSERT_TRUE(verify) << restored.out();
    EXPECT_NE(verify->find("pages=16384 mismatches=0"), std::string::npos) << *verify;
    restored.send("exit 0\n");
    EXPECT_EQ(restored.wait_exit(60s), 0) << restored.err();
    EXPECT_EQ(restored.count_lines("MISMATCH"), 0u) << restored.out();
  }

  std::string snap_ = temp_path("mf.snap"), mem_ = temp_path("mf.mem");
};

TEST_F(MemoryFile, IsRawRamWithZeroPagesAsHoles) {
  EXPECT_EQ(file_size(mem_), 4096 + (512 << 20));
  // The guest touched ~64 MiB; the rest of its 512 MiB must not take disk space.
  EXPECT_LT(allocated_bytes(mem_), 160 << 20);
  EXPECT_GT(allocated_bytes(mem_), 60 << 20);
  EXPECT_LT(file_size(snap_), 1 << 20) << "the snapshot itself carries no memory";
}

TEST_F(MemoryFile, LazyRestoreContinuesTheGuestWithEveryPageIntact) {
  VmctlProcess restored({"restore", "--lazy", snap_});
  expect_guest_intact(restored);
}

TEST_F(MemoryFile, EagerRestoreReadsTheMemoryFile) {
  VmctlProcess restored({"restore", snap_});
  expect_guest_intact(restored);
}

TEST_F(MemoryFile, LazyRestoreNeverWritesTheFile) {
  std::string before;
  {
    std::ifstream in(mem_, std::ios::binary);
    before.assign(std::istreambuf_iterator<char>(in), {});
  }
  VmctlProcess restored({"restore", "--lazy", snap_});
  expect_guest_intact(restored);  // the dirtier rewrote its pages after the restore
  std::ifstream in(mem_, std::ios::binary);
  std::string after(std::istreambuf_iterator<char>(in), {});
  EXPECT_TRUE(before == after) << "guest writes must stay private to the restored VM";
}

TEST_F(MemoryFile, MemoryFileOfAnotherSnapshotIsRefused) {
  // A second snapshot from another VM writes over the memory file the first snapshot names.
  std::string other = temp_path("other.snap");
  {
    std::string sock = temp_path("mf2.sock");
    VmctlProcess vm({"run", "--control", sock, "--memory", "512M"});
    ASSERT_TRUE(vm.wait_for_line("^HB 1\\b", 60s)) << vm.out() << vm.err();
    std::string err;
    ASSERT_EQ(vmctl({"snapshot", "--control", sock, "--memory-file", mem_, other}, &err), 0) << err;
    vm.signal(SIGTERM);
    EXPECT_EQ(vm.wait_exit(30s), 0);
  }
  for (const char* mode : {"--lazy", "--paused"}) {
    std::string err;
    EXPECT_EQ(vmctl({"restore", mode, snap_}, &err), 2) << mode;
    EXPECT_NE(err.find("belongs to snapshot"), std::string::npos) << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line: " << err;
  }
  unlink(other.c_str());
}

TEST_F(MemoryFile, TruncatedMemoryFileIsRefusedBeforeMapping) {
  ASSERT_EQ(truncate(mem_.c_str(), 1 << 20), 0);
  std::string err;
  EXPECT_EQ(vmctl({"restore", "--lazy", snap_}, &err), 2);
  EXPECT_NE(err.find("truncated"), std::string::npos) << err;
}

TEST_F(MemoryFile, LazyNeedsAMemoryFile) {
  std::string sock = temp_path("mf3.sock"), plain = temp_path("plain.snap");
  {
    VmctlProcess vm({"run", "--control", sock});
    ASSERT_TRUE(vm.wait_for_line("^HB 1\\b", 60s)) << vm.out() << vm.err();
    ASSERT_EQ(vmctl({"snapshot", "--control", sock, plain}), 0);
    vm.signal(SIGTERM);
    EXPECT_EQ(vm.wait_exit(30s), 0);
  }
  std::string err;
  EXPECT_EQ(vmctl({"restore", "--lazy", plain}, &err), 2);
  EXPECT_NE(err.find("--memory-file"), std::string::npos) << err;
  unlink(plain.c_str());
}

}  // namespace
}  // namespace vmctl::testing
