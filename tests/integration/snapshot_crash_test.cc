// A snapshot with a memory file commits its two files as a pair (state/memory_file.h): a writer
// that crashes at any step between its writes and renames leaves files from which a restore
// builds either the old machine or the new one, whole, and never fails or mixes them.
//
// Each case restores the dirtier from a snapshot pair A, lets it run on, and takes snapshot B
// over the same two files with VMCTL_FAULT_CRASH_AFTER=<step>, so the VM process dies at that
// step. Then it restores the pair (eagerly and --lazy, from copies) and tells which machine came
// back by the guest's own heartbeat counter (A's first heartbeat after a restore is hA+1, B's is
// past hA+4) and checks every page with the guest's own verify.
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <optional>
#include <string>

#include "base/crash_point.h"
#include "state/vm_state.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

int vmctl(const std::vector<std::string>& args, std::string* err = nullptr) {
  VmctlProcess p(args);
  std::optional<int> code = p.wait_exit(120s);
  if (err) *err = p.err();
  return code.value_or(-1);
}

// The heartbeat number of the first "HB n" line the guest prints.
std::optional<uint64_t> first_heartbeat(VmctlProcess& vm) {
  std::optional<std::string> line = vm.wait_for_line("^HB [0-9]+ ", 60s);
  if (!line) return std::nullopt;
  return std::stoull(line->substr(3));
}

std::vector<std::string> leftovers(const std::string& dir) {
  std::vector<std::string> found;
  DIR* d = opendir(dir.c_str());
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.find(".tmp-") != std::string::npos || n.find(".pending-") != std::string::npos) {
      found.push_back(n);
    }
  }
  closedir(d);
  return found;
}

class SnapshotCrash : public ::testing::TestWithParam<const char*> {
 protected:
  // Snapshot pair A, made once: the dirtier with every page of its 32 MiB written.
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("snapshot-crash");
    std::string base = scratch_->path() + "/base";
    ASSERT_EQ(mkdir(base.c_str(), 0700), 0);
    std::string sock = scratch_->path() + "/a.sock";
    VmctlProcess vm({"run", "--control", sock, "--memory", "256M", "--kernel",
                     guest_path("dirtier.elf"), "--cmdline", "mib=32 rate=0 hb_ms=100"});
    ASSERT_TRUE(vm.wait_for_line("^HB 3 .*total=[1-9]", 60s)) << vm.out() << vm.err();
    std::string err;
    ASSERT_EQ(
        vmctl({"snapshot", "--control", sock, "--memory-file", base + "/vm.mem", base + "/vm.snap"},
              &err),
        0)
        << err;
    vm.signal(SIGTERM);
    EXPECT_EQ(vm.wait_exit(30s), 0);
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }

  std::string copy_of(const std::string& from, const std::string& name) {
    std::string to = scratch_->path() + "/" + name;
    EXPECT_EQ(shell("cp -a --sparse=always '" + from + "' '" + to + "'"), 0);
    return to;
  }

  // Restores the pair in `dir` and returns the first heartbeat, after checking every page.
  std::optional<uint64_t> restore_and_verify(const std::string& dir, bool lazy) {
    std::vector<std::string> args = {"restore"};
    if (lazy) args.push_back("--lazy");
    args.push_back(dir + "/vm.snap");
    VmctlProcess restored(args);
    std::optional<uint64_t> hb = first_heartbeat(restored);
    EXPECT_TRUE(hb) << (lazy ? "lazy " : "") << "restore failed: " << restored.err();
    if (!hb) return std::nullopt;
    restored.send("verify\n");
    std::optional<std::string> verify = restored.wait_for_line("^VERIFY ", 60s);
    EXPECT_TRUE(verify) << restored.out();
    if (verify) {
      EXPECT_NE(verify->find(" mismatches=0"), std::string::npos) << *verify;
    }
    restored.send("exit 0\n");
    EXPECT_EQ(restored.wait_exit(60s), 0) << restored.err();
    EXPECT_EQ(restored.count_lines("MISMATCH"), 0u) << restored.out();
    return hb;
  }

  static ScratchDir* scratch_;
};

ScratchDir* SnapshotCrash::scratch_ = nullptr;

TEST_P(SnapshotCrash, RestoreSeesTheOldPairOrTheNewOneNeverAMix) {
  const std::string step = GetParam();
  const bool committed = step == "snapshot-committed" || step == "memory-file-installed";
  std::string dir = copy_of(scratch_->path() + "/base", step);

  // Snapshot B over pair A, dying at `step`.
  std::string sock = scratch_->path() + "/" + step + "-b.sock";
  VmctlProcess vm("env", {fmt::format("{}={}", kCrashPointVariable, step), vmctl_binary(),
                          "restore", "--control", sock, dir + "/vm.snap"});
  std::optional<uint64_t> first = first_heartbeat(vm);
  ASSERT_TRUE(first) << vm.err();
  const uint64_t a_heartbeat = *first - 1;
  ASSERT_TRUE(vm.wait_for_line(fmt::format("^HB {} ", a_heartbeat + 4), 60s)) << vm.out();
  std::string err;
  EXPECT_NE(
      vmctl({"snapshot", "--control", sock, "--memory-file", dir + "/vm.mem", dir + "/vm.snap"},
            &err),
      0)
      << "the VM process was to die inside the snapshot";
  ASSERT_EQ(vm.wait_exit(60s), kCrashPointExitCode)
      << "crash point " << step << " was not reached: " << vm.err();

  std::string lazy_dir = copy_of(dir, step + "-lazy");
  for (bool lazy : {false, true}) {
    SCOPED_TRACE(lazy ? "restore --lazy" : "restore");
    std::optional<uint64_t> hb = restore_and_verify(lazy ? lazy_dir : dir, lazy);
    ASSERT_TRUE(hb);
    if (committed) {
      EXPECT_GT(*hb, a_heartbeat + 4) << "B was committed: B must come back";
    } else {
      EXPECT_EQ(*hb, a_heartbeat + 1) << "B was not committed: A must come back";
    }
  }

  // The next snapshot of the pair leaves no temporary or pending file behind.
  std::string sock_c = scratch_->path() + "/" + step + "-c.sock";
  VmctlProcess again({"restore", "--control", sock_c, dir + "/vm.snap"});
  ASSERT_TRUE(first_heartbeat(again)) << again.err();
  ASSERT_EQ(
      vmctl({"snapshot", "--control", sock_c, "--memory-file", dir + "/vm.mem", dir + "/vm.snap"},
            &err),
      0)
      << err;
  again.signal(SIGTERM);
  EXPECT_EQ(again.wait_exit(30s), 0);
  EXPECT_EQ(leftovers(dir), std::vector<std::string>{});
}

INSTANTIATE_TEST_SUITE_P(EveryStep, SnapshotCrash, ::testing::ValuesIn(state::kSnapshotCrashPoints),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name;
                           for (const char* c = info.param; *c; ++c) {
                             if (*c != '-') name += *c;
                           }
                           return name;
                         });

}  // namespace
}  // namespace vmctl::testing
