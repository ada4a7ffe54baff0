// Diff snapshots: a base and two diffs restore to exactly the memory a full snapshot taken at the
// same moment holds.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "state/stream.h"
#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;
namespace ps = proto::state;

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/" + std::to_string(getpid()) + "-" + name;
}

int vmctl(const std::vector<std::string>& args, std::string* out = nullptr,
          std::string* err = nullptr) {
  VmctlProcess p(args);
  std::optional<int> code = p.wait_exit(120s);
  if (out) *out = p.out();
  if (err) *err = p.err();
  return code.value_or(-1);
}

// Guest memory as the memory records of a full snapshot describe it: page number -> bytes.
std::map<uint64_t, std::string> memory_of(const std::string& path, std::string* id = nullptr) {
  std::map<uint64_t, std::string> pages;
  auto source = state::FileSource::open(path);
  EXPECT_TRUE(source.ok());
  state::RecordReader reader(**source, path);
  while (true) {
    auto r = reader.next();
    EXPECT_TRUE(r.ok()) << r.error().message();
    if (!r.ok() || !r.value()) break;
    auto msg = r.value()->message();
    if (r.value()->type == ps::RecordType::HEADER && id) {
      *id = msg->getRoot<ps::Header>().getSnapshotId();
    }
    if (r.value()->type != ps::RecordType::MEMORY_PAGES) continue;
    auto record = msg->getRoot<ps::MemoryPages>();
    const char* data = reinterpret_cast<const char*>(record.getData().begin());
    for (auto run : record.getRuns()) {
      for (uint32_t i = 0; i < run.getCount(); ++i) {
        pages[run.getFirstPage() + i] = std::string(data, 4096);
        data += 4096;
      }
    }
  }
  return pages;
}

// Both dirty page sources. The ring is small, so that between two snapshots (when nobody collects)
// the vCPU fills it dozens of times a second and must empty it itself without losing a page.
class DiffSnapshot : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "ring" && !host_has_dirty_ring()) GTEST_SKIP() << "no KVM dirty ring here";
  }
  std::vector<std::string> tracking_args() const {
    std::vector<std::string> args = {"--dirty-tracking", GetParam()};
    if (GetParam() == "ring") args.insert(args.end(), {"--dirty-ring-entries", "512"});
    return args;
  }
};

TEST_P(DiffSnapshot, BaseAndTwoDiffsRestoreToTheMemoryOfAFullSnapshot) {
  std::string sock = temp_path("diff.sock"), sock2 = temp_path("diff2.sock");
  std::string base = temp_path("base.snap"), d1 = temp_path("d1.snap"), d2 = temp_path("d2.snap"),
              full = temp_path("full.snap"), again = temp_path("again.snap");
  std::vector<std::string> args = {"run",
                                   "--control",
                                   sock,
                                   "--memory",
                                   "128M",
                                   "--kernel",
                                   guest_path("dirtier.elf"),
                                   "--cmdline",
                                   "mib=16 rate=32 hb_ms=100"};
  for (const std::string& a : tracking_args()) args.push_back(a);
  VmctlProcess vm(args);
  // After HB 7 the dirtier has written its whole region once (16 MiB at 32 MiB/s).
  ASSERT_TRUE(vm.wait_for_line("^HB 7 ", 60s)) << vm.out() << vm.err();
  std::string out, err;
  ASSERT_EQ(vmctl({"snapshot", "--control", sock, base}, &out, &err), 0) << err;
  ASSERT_TRUE(vm.wait_for_line("^HB 9 ", 30s));
  ASSERT_EQ(vmctl({"snapshot", "--diff", "--control", sock, d1}, &out, &err), 0) << err;
  EXPECT_NE(out.find("diff snapshot"), std::string::npos) << out;
  ASSERT_TRUE(vm.wait_for_line("^HB 11 ", 30s));
  ASSERT_EQ(vmctl({"snapshot", "--diff", "--stop", "--control", sock, d2}, &out, &err), 0) << err;
  // Still paused: a full snapshot of the same moment.
  ASSERT_EQ(vmctl({"snapshot", "--stop", "--control", sock, full}, &out, &err), 0) << err;
  vm.signal(SIGTERM);
  EXPECT_EQ(vm.wait_exit(30s), 0);

  // The diffs carry only what changed.
  std::string base_id, full_id;
  size_t base_pages = memory_of(base, &base_id).size();
  size_t d1_pages = memory_of(d1).size();
  EXPECT_GT(d1_pages, 0u);
  EXPECT_LT(d1_pages, base_pages) << "a diff must be smaller than its base";
  ASSERT_EQ(vmctl({"inspect", d1}, &out, &err), 0) << err;
  EXPECT_NE(out.find("diff snapshot"), std::string::npos) << out;
  EXPECT_NE(out.find("parent    " + base_id), std::string::npos) << out;

  {
    std::vector<std::string> restore = {"restore", "--paused", "--control", sock2, base, d1, d2};
    for (const std::string& a : tracking_args()) restore.push_back(a);
    VmctlProcess restored(restore);
    for (int i = 0; i < 100 && access(sock2.c_str(), F_OK) != 0; ++i) usleep(100 * 1000);
    ASSERT_EQ(vmctl({"snapshot", "--stop", "--control", sock2, again}, &out, &err), 0) << err;
    restored.signal(SIGTERM);
    restored.wait_exit(30s);
  }
  std::map<uint64_t, std::string> expected = memory_of(full), actual = memory_of(again);
  EXPECT_EQ(expected.size(), actual.size());
  size_t differing = 0;
  for (const auto& [page, bytes] : expected) {
    auto it = actual.find(page);
    if (it == actual.end() || it->second != bytes) ++differing;
  }
  EXPECT_EQ(differing, 0u) << "pages that differ between base+d1+d2 and the full snapshot";

  // Chains must be complete and in order.
  ASSERT_EQ(vmctl({"restore", d1}, &out, &err), 2);
  EXPECT_NE(err.find("is a diff snapshot"), std::string::npos) << err;
  ASSERT_EQ(vmctl({"restore", base, d2}, &out, &err), 2);
  EXPECT_NE(err.find("not of the file before it"), std::string::npos) << err;
  for (const std::string& f : {base, d1, d2, full, again}) unlink(f.c_str());
}

INSTANTIATE_TEST_SUITE_P(Tracking, DiffSnapshot, ::testing::Values("bitmap", "ring"),
                         [](const auto& info) { return info.param; });

TEST(DiffSnapshotRefusal, DiffWithoutAParentIsRefused) {
  std::string sock = temp_path("np.sock");
  VmctlProcess vm({"run", "--control", sock, "--cmdline", "hb_ms=50"});
  ASSERT_TRUE(vm.wait_for_line("^HB 1\\b", 60s)) << vm.out() << vm.err();
  std::string err;
  EXPECT_EQ(vmctl({"snapshot", "--diff", "--control", sock, temp_path("x.snap")}, nullptr, &err),
            2);
  EXPECT_NE(err.find("take a full snapshot of this VM first"), std::string::npos) << err;
  vm.signal(SIGTERM);
  vm.wait_exit(30s);
}

}  // namespace
}  // namespace vmctl::testing
