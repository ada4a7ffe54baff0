#include "base/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

namespace vmctl {
namespace {

// A fresh directory per test, removed at the end.
class AtomicFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "atomic-file-" + std::to_string(getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::system(("rm -rf '" + dir_ + "'").c_str());
    ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0);
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }
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
  static std::string read(const std::string& file) {
    std::ifstream in(file);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  static void write(const std::string& file, const std::string& text) {
    std::ofstream(file) << text;
  }
  // The temporary name create_temp_file tries for `random` in this process.
  std::string temp_name(const std::string& target, uint64_t random) const {
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(random));
    return temp_file_prefix(target) + std::to_string(getpid()) + "-" + hex;
  }
  // A pid that ran a moment ago and does not any more.
  static pid_t dead_pid() {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    int status = 0;
    waitpid(pid, &status, 0);
    return pid;
  }

  std::string dir_;
};

TEST_F(AtomicFile, TempFileIsNewOwnerOnlyAndBesideItsTarget) {
  std::string target = path("vm.snap");
  Result<TempFile> a = create_temp_file(target);
  Result<TempFile> b = create_temp_file(target);
  ASSERT_TRUE(a.ok()) << a.error().message();
  ASSERT_TRUE(b.ok()) << b.error().message();
  EXPECT_NE(a->path, b->path) << "the names must not be predictable";
  std::string prefix = target + ".tmp-" + std::to_string(getpid()) + "-";
  ASSERT_EQ(a->path.substr(0, prefix.size()), prefix) << a->path;
  EXPECT_EQ(a->path.size(), prefix.size() + 16) << a->path;
  struct stat st {};
  ASSERT_EQ(fstat(a->fd.get(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_NE(fcntl(a->fd.get(), F_GETFD) & FD_CLOEXEC, 0);
}

TEST_F(AtomicFile, PlantedSymlinkAtTheTempNameIsNotFollowed) {
  std::string target = path("vm.snap");
  std::string victim = path("victim"), missing = path("would-be-created");
  write(victim, "precious");
  std::vector<uint64_t> sequence = {1, 2, 3};
  size_t next = 0;
  // Planted once the leftovers are cleaned up (they would go with them): when the first name is
  // chosen, as an attacker racing the writer would.
  Result<TempFile> temp = create_temp_file(target, [&] {
    if (next == 0) {
      EXPECT_EQ(symlink(victim.c_str(), temp_name(target, 1).c_str()), 0);
      EXPECT_EQ(symlink(missing.c_str(), temp_name(target, 2).c_str()), 0);
    }
    return sequence[next++];
  });
  ASSERT_TRUE(temp.ok()) << temp.error().message();
  EXPECT_EQ(temp->path, temp_name(target, 3)) << "a planted name must be skipped";
  ASSERT_EQ(::write(temp->fd.get(), "mine", 4), 4);
  EXPECT_EQ(read(victim), "precious");
  EXPECT_NE(access(missing.c_str(), F_OK), 0) << "a dangling symlink was followed";
  struct stat st {};
  ASSERT_EQ(lstat(temp_name(target, 1).c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
}

TEST_F(AtomicFile, PreexistingTempFileIsNotReused) {
  std::string target = path("vm.json");
  std::vector<uint64_t> sequence = {7, 8};
  size_t next = 0;
  Result<TempFile> temp = create_temp_file(target, [&] {
    if (next == 0) write(temp_name(target, 7), "planted");
    return sequence[next++];
  });
  ASSERT_TRUE(temp.ok()) << temp.error().message();
  EXPECT_EQ(temp->path, temp_name(target, 8));
  ASSERT_TRUE(commit_temp_file(*temp, target).ok());
  EXPECT_EQ(read(temp_name(target, 7)), "planted");
}

TEST_F(AtomicFile, NamesThatAllExistAreAnErrorNotAnEndlessLoop) {
  std::string target = path("vm.json");
  bool planted = false;
  Result<TempFile> temp = create_temp_file(target, [&] {
    if (!planted) write(temp_name(target, 5), "planted");
    planted = true;
    return uint64_t{5};
  });
  ASSERT_FALSE(temp.ok());
  EXPECT_NE(temp.error().message().find(target), std::string::npos) << temp.error().message();
}

TEST_F(AtomicFile, LeftoversNobodyHoldsAreRemovedWhenTheTargetIsNextWritten) {
  std::string target = path("vm.snap");
  std::string base = "vm.snap.tmp-";
  // A crashed writer's file: nobody holds it, whatever pid its name says (even a running one).
  std::string dead_left = base + std::to_string(dead_pid()) + "-0123456789abcdef";
  std::string pid1_left = base + "1-0123456789abcdef";
  std::string not_ours = base + std::to_string(dead_pid()) + "-short";
  std::string other_target = "vm.snapshot.tmp-" + std::to_string(dead_pid()) + "-0123456789abcdef";
  for (const std::string& n : {dead_left, pid1_left, not_ours, other_target}) write(path(n), "x");
  ASSERT_EQ(symlink("/etc/passwd", path(base + "77-fedcba9876543210").c_str()), 0);
  // A writer at work (another process would hold it the same way).
  Result<TempFile> busy = create_temp_file(target);
  ASSERT_TRUE(busy.ok()) << busy.error().message();
  std::string busy_name = busy->path.substr(dir_.size() + 1);

  Result<TempFile> temp = create_temp_file(target);
  ASSERT_TRUE(temp.ok()) << temp.error().message();
  ASSERT_TRUE(commit_temp_file(*temp, target).ok());
  std::vector<std::string> expected = {busy_name, not_ours, "vm.snap", other_target};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(entries(), expected);
  EXPECT_EQ(access("/etc/passwd", F_OK), 0);
}

TEST_F(AtomicFile, WriteFileAtomicallyReplacesTheFileAndLeavesNothingElse) {
  std::string target = path("vm.json");
  write(target, "old");
  ASSERT_TRUE(write_file_atomically(target, "new contents\n").ok());
  EXPECT_EQ(read(target), "new contents\n");
  EXPECT_EQ(entries(), std::vector<std::string>{"vm.json"});
  struct stat st {};
  ASSERT_EQ(stat(target.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(AtomicFile, UnwritableDirectoryIsAClearErrorAndTheFileStays) {
  Status s = write_file_atomically("/nonexistent-dir/vm.json", "x");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("/nonexistent-dir/vm.json"), std::string::npos)
      << s.error().message();
  EXPECT_EQ(s.error().exit_code(), 2);
}

TEST_F(AtomicFile, DirectoryFsyncFailureIsAnError) {
  Status s = fsync_directory(path("missing"));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("missing"), std::string::npos) << s.error().message();
}

}  // namespace
}  // namespace vmctl
