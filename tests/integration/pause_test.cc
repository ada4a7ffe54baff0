// Pause and resume at a safe point, driven through the Vm API in this process on real KVM.
#include <chrono>
#include <fstream>
#include <iterator>
#include <mutex>
#include <regex>
#include <thread>

#include <gtest/gtest.h>

#include "tests/integration/vmctl_process.h"
#include "vmm/vm.h"

namespace vmctl::vmm {
namespace {

using namespace std::chrono_literals;

// Collects the guest console and counts heartbeat lines.
class Console {
 public:
  void write(const uint8_t* data, size_t len) {
    std::lock_guard lock(mu_);
    text_.append(reinterpret_cast<const char*>(data), len);
  }
  int heartbeats() {
    std::lock_guard lock(mu_);
    static const std::regex hb("(^|\n)HB [0-9]+");
    return static_cast<int>(std::distance(std::sregex_iterator(text_.begin(), text_.end(), hb),
                                          std::sregex_iterator()));
  }
  bool wait_heartbeats(int n, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (heartbeats() < n) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(10ms);
    }
    return true;
  }
  std::string text() {
    std::lock_guard lock(mu_);
    return text_;
  }

 private:
  std::mutex mu_;
  std::string text_;
};

std::unique_ptr<Vm> boot_heartbeat(Console& console, unsigned cpus) {
  VmConfig config;
  config.memory_size = 128ull << 20;
  config.num_cpus = cpus;
  config.boot.kernel_path = testing::guest_path("heartbeat.elf");
  config.boot.cmdline = cpus > 1 ? "hb_ms=50 smp=1" : "hb_ms=50";
  config.boot.num_cpus = cpus;
  config.console_output = [&console](const uint8_t* d, size_t n) { console.write(d, n); };
  Result<std::unique_ptr<Vm>> vm = Vm::create(config);
  if (!vm.ok()) ADD_FAILURE() << vm.error().message();
  return vm.ok() ? std::move(vm).value() : nullptr;
}

TEST(Pause, HeartbeatStopsWhilePausedAndContinuesAfterResume) {
  Console console;
  std::unique_ptr<Vm> vm = boot_heartbeat(console, 1);
  ASSERT_TRUE(vm);
  vm->start();
  ASSERT_TRUE(console.wait_heartbeats(3, 60s)) << console.text();

  vm->pause();
  int at_pause = console.heartbeats();
  std::this_thread::sleep_for(1s);  // 20 periods
  EXPECT_EQ(console.heartbeats(), at_pause) << "no heartbeat may be printed while paused";

  vm->resume();
  EXPECT_TRUE(console.wait_heartbeats(at_pause + 3, 30s)) << console.text();
  vm->stop();
  EXPECT_EQ(vm->wait().kind, VmExit::Kind::kStopped);
}

TEST(Pause, RepeatedPausesOfAnSmpGuestAlwaysReachASafePoint) {
  Console console;
  std::unique_ptr<Vm> vm = boot_heartbeat(console, 2);
  ASSERT_TRUE(vm);
  vm->start();
  ASSERT_TRUE(console.wait_heartbeats(1, 60s)) << console.text();
  for (int i = 0; i < 50; ++i) {
    PauseGuard paused(*vm);
    EXPECT_TRUE(vm->paused());
  }
  int before = console.heartbeats();
  EXPECT_TRUE(console.wait_heartbeats(before + 2, 30s)) << "guest must keep running after pauses";
  vm->stop();
  vm->wait();
}

}  // namespace
}  // namespace vmctl::vmm
