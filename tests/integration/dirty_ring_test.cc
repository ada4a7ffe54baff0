// The KVM dirty ring under a real guest: the dirtier rewrites pages from ring 3 much faster than a
// tiny ring holds, nobody collects while it runs, and no page may be lost.
#include <chrono>
#include <mutex>
#include <regex>
#include <thread>

#include <gtest/gtest.h>

#include "tests/integration/vmctl_process.h"
#include "vmm/vm.h"

namespace vmctl::vmm {
namespace {

using namespace std::chrono_literals;

class Console {
 public:
  void write(const uint8_t* data, size_t len) {
    std::lock_guard lock(mu_);
    text_.append(reinterpret_cast<const char*>(data), len);
  }
  // The largest "total=NMiB" the dirtier has reported.
  uint64_t total_mib() {
    std::lock_guard lock(mu_);
    static const std::regex total("total=([0-9]+)MiB");
    uint64_t best = 0;
    for (auto it = std::sregex_iterator(text_.begin(), text_.end(), total);
         it != std::sregex_iterator(); ++it) {
      best = std::max<uint64_t>(best, std::stoull((*it)[1]));
    }
    return best;
  }
  std::string text() {
    std::lock_guard lock(mu_);
    return text_;
  }

 private:
  std::mutex mu_;
  std::string text_;
};

TEST(DirtyRing, AGuestDirtyingFarFasterThanTheRingHoldsLosesNoPage) {
  if (!testing::host_has_dirty_ring()) GTEST_SKIP() << "this host's KVM has no dirty ring";
  // The dirtier's region (at 16 MiB) is twice what the ring holds: every lap fills it twice.
  constexpr uint64_t kRegionBase = 16ull << 20, kRegionMiB = 32;
  Console console;
  VmConfig config;
  config.memory_size = 64ull << 20;
  config.boot.kernel_path = testing::guest_path("dirtier.elf");
  config.boot.cmdline = "mib=32 rate=0 hb_ms=50";
  config.dirty_tracking = DirtyTracking::kRing;
  config.dirty_ring_entries = 4096;
  config.console_output = [&console](const uint8_t* d, size_t n) { console.write(d, n); };
  Result<std::unique_ptr<Vm>> created = Vm::create(config);
  ASSERT_TRUE(created.ok()) << created.error().message();
  Vm& vm = **created;
  ASSERT_EQ(vm.dirty_pages().mode(), DirtyTracking::kRing);
  ASSERT_TRUE(vm.set_dirty_logging(true).ok());
  vm.start();
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (console.total_mib() < 4 * kRegionMiB && !vm.ended() &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_FALSE(vm.ended()) << vm.wait().describe();
  ASSERT_GE(console.total_mib(), 4 * kRegionMiB) << console.text();
  vm.pause();
  DirtyBitmaps bitmaps;
  ASSERT_TRUE(vm.dirty_pages().fetch(bitmaps).ok());
  DirtyPages::Stats stats = vm.dirty_pages().stats();
  EXPECT_EQ(stats.overruns, 0u) << "ring-3 writes fault into KVM, which must stop at the limit";
  EXPECT_EQ(stats.stray, 0u);
  EXPECT_GE(stats.ring_full_exits, 4u) << "the vCPU empties its own ring as it fills";
  // The dirtier went over its whole region at least twice since logging started.
  uint64_t missing = 0, outside = 0;
  for (uint64_t page = 0; page < vm.memory().regions()[0].size / kPageSize; ++page) {
    bool dirty = (bitmaps[0][page / 64] >> (page % 64)) & 1;
    bool in_region =
        page * kPageSize >= kRegionBase && page * kPageSize < kRegionBase + (kRegionMiB << 20);
    if (in_region && !dirty) ++missing;
    if (!in_region && dirty) ++outside;
  }
  EXPECT_EQ(missing, 0u) << "region pages the ring never reported";
  // Besides its region the dirtier writes its generation table, stack and timer state.
  EXPECT_LT(outside, 64u);

  // Paused, nothing more is dirtied; resumed, the guest carries on and finds every page intact.
  DirtyBitmaps again;
  ASSERT_TRUE(vm.dirty_pages().fetch(again).ok());
  for (uint64_t w : again[0]) EXPECT_EQ(w, 0u);
  vm.resume();
  vm.console_input(reinterpret_cast<const uint8_t*>("verify\n"), 7);
  deadline = std::chrono::steady_clock::now() + 30s;
  while (console.text().find("VERIFY") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_NE(console.text().find("VERIFY pages=8192 mismatches=0"), std::string::npos)
      << console.text();
  vm.stop();
  vm.wait();
}

}  // namespace
}  // namespace vmctl::vmm
