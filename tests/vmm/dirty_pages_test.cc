// The VM's dirty page sources on real KVM: a tiny 32-bit guest written by the test dirties known
// pages, and what DirtyPages::fetch() hands out must be exactly those pages, in both modes.
#include "vmm/dirty_pages.h"

#include <chrono>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "vmm/vm.h"

namespace vmctl::vmm {

// For test names and messages: "ring" rather than a 4-byte dump.
void PrintTo(DirtyTracking mode, std::ostream* out) {
  *out << dirty_tracking_name(mode);
}

namespace {

using namespace std::chrono_literals;

constexpr uint64_t kCodeAddress = 0x1000;
constexpr uint64_t kMailbox = 0x6000;  // the guest spins until the test stores non-zero here

// A few x86 instructions, 32-bit protected mode, paging off.
class Code {
 public:
  Code& store(uint32_t address, uint32_t value) {  // mov dword [address], value
    bytes_.insert(bytes_.end(), {0xc7, 0x05});
    put32(address);
    put32(value);
    return *this;
  }
  Code& wait_mailbox() {  // spin: mov eax, [kMailbox]; test eax, eax; jz spin
    bytes_.push_back(0xa1);
    put32(static_cast<uint32_t>(kMailbox));
    bytes_.insert(bytes_.end(), {0x85, 0xc0, 0x74, static_cast<uint8_t>(-9)});
    return *this;
  }
  // for (edi = first, ecx = count; ecx; edi += 4096, --ecx) [edi] = ecx
  Code& store_pages(uint32_t first, uint32_t count) {
    bytes_.push_back(0xbf);
    put32(first);
    bytes_.push_back(0xb9);
    put32(count);
    bytes_.insert(bytes_.end(), {0x89, 0x0f, 0x81, 0xc7, 0x00, 0x10, 0x00, 0x00, 0x49, 0x75,
                                 static_cast<uint8_t>(-11)});
    return *this;
  }
  Code& exit(uint8_t status) {  // mov al, status; out 0xf4, al; hlt
    bytes_.insert(bytes_.end(), {0xb0, status, 0xe6, 0xf4, 0xf4});
    return *this;
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  void put32(uint32_t v) {
    for (int i = 0; i < 4; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  std::vector<uint8_t> bytes_;
};

std::unique_ptr<Vm> make_vm(DirtyTracking mode, const Code& code, uint32_t ring_entries = 0) {
  VmConfig config;
  config.memory_size = 64ull << 20;
  config.for_restore = true;  // no kernel: the test sets the vCPU up itself
  config.dirty_tracking = mode;
  config.dirty_ring_entries = ring_entries;
  Result<std::unique_ptr<Vm>> vm = Vm::create(config);
  if (!vm.ok()) {
    ADD_FAILURE() << vm.error().message();
    return nullptr;
  }
  EXPECT_TRUE((*vm)->memory().write(kCodeAddress, code.bytes().data(), code.bytes().size()).ok());
  boot::BootEntry entry;
  entry.mode = boot::CpuMode::kProtected32;
  entry.rip = kCodeAddress;
  entry.rsp = 0x8000;
  Status s = (*vm)->vcpu(0).set_boot_state(entry);
  EXPECT_TRUE(s.ok()) << s.error().message();
  return std::move(vm).value();
}

std::set<uint64_t> fetch_pages(Vm& vm) {
  DirtyBitmaps bitmaps;
  Status s = vm.dirty_pages().fetch(bitmaps);
  EXPECT_TRUE(s.ok()) << s.error().message();
  std::set<uint64_t> pages;
  for (size_t r = 0; r < bitmaps.size(); ++r) {
    for (size_t w = 0; w < bitmaps[r].size(); ++w) {
      for (int b = 0; b < 64; ++b) {
        if ((bitmaps[r][w] >> b) & 1) {
          pages.insert(vm.memory().regions()[r].guest_phys + (w * 64 + b) * kPageSize);
        }
      }
    }
  }
  return pages;
}

bool host_has_ring() {
  Result<kvm::KvmSystem> kvm = kvm::KvmSystem::open();
  return kvm.ok() && kvm->check_extension(KVM_CAP_DIRTY_LOG_RING) > 0;
}

class DirtyPagesTest : public ::testing::TestWithParam<DirtyTracking> {
 protected:
  void SetUp() override {
    if (GetParam() == DirtyTracking::kRing && !host_has_ring()) {
      GTEST_SKIP() << "this host's KVM has no dirty ring";
    }
  }
};

TEST_P(DirtyPagesTest, FetchYieldsExactlyThePagesTheGuestWroteAndReArmsThem) {
  const std::set<uint64_t> first = {0x100000, 0x105000, 0x200000, 0x3ff000};
  const std::set<uint64_t> second = {0x100000, 0x300000};  // one page again, one new
  Code code;
  for (uint64_t a : first) code.store(static_cast<uint32_t>(a), 1);
  code.wait_mailbox();
  for (uint64_t a : second) code.store(static_cast<uint32_t>(a), 2);
  code.exit(7);
  std::unique_ptr<Vm> vm = make_vm(GetParam(), code);
  ASSERT_TRUE(vm);
  EXPECT_EQ(vm->dirty_pages().mode(), GetParam());
  ASSERT_TRUE(vm->set_dirty_logging(true).ok());
  EXPECT_TRUE(fetch_pages(*vm).empty()) << "nothing is dirty before the guest runs";
  vm->start();

  // Fetched while the vCPU runs (it spins reading the mailbox once the first stores are done).
  std::set<uint64_t> seen;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (seen.size() < first.size() && std::chrono::steady_clock::now() < deadline) {
    std::set<uint64_t> more = fetch_pages(*vm);
    seen.insert(more.begin(), more.end());
    std::this_thread::sleep_for(5ms);
  }
  std::this_thread::sleep_for(50ms);
  std::set<uint64_t> late = fetch_pages(*vm);
  seen.insert(late.begin(), late.end());
  EXPECT_EQ(seen, first);

  *reinterpret_cast<volatile uint32_t*>(vm->memory().host_address(kMailbox, 4)) = 1;
  VmExit exit = vm->wait();
  ASSERT_EQ(exit.kind, VmExit::Kind::kDebugExit) << exit.describe();
  EXPECT_EQ(exit.status, 7u);
  // The page written in both phases shows up again: fetching re-protected it.
  EXPECT_EQ(fetch_pages(*vm), second);
  EXPECT_TRUE(fetch_pages(*vm).empty());
}

// The writes come from guest kernel code (CPL 0), which some hosts emulate. Nobody fetches while
// the guest runs: the vCPU empties its own ring whenever it fills. A KVM that overruns the ring
// while emulating (PVM) must be caught: every page then counts as dirty, or the VM ends with an
// error naming the cause; it must never lose a page silently or hang.
TEST_P(DirtyPagesTest, ManyPagesThroughATinyRingAreAllFetched) {
  constexpr uint32_t kPages = 2000;  // ~8 laps of a 256-entry ring
  Code code;
  code.store_pages(0x100000, kPages).exit(0);
  std::unique_ptr<Vm> vm = make_vm(GetParam(), code, 256);
  ASSERT_TRUE(vm);
  ASSERT_TRUE(vm->set_dirty_logging(true).ok());
  (void)fetch_pages(*vm);
  vm->start();
  VmExit exit = vm->wait();
  DirtyPages::Stats stats = vm->dirty_pages().stats();
  if (exit.kind == VmExit::Kind::kError && GetParam() == DirtyTracking::kRing) {
    EXPECT_NE(exit.message.find("overran the ring"), std::string::npos) << exit.message;
    EXPECT_GT(stats.overruns, 0u);
    return;
  }
  ASSERT_EQ(exit.kind, VmExit::Kind::kDebugExit) << exit.describe();
  std::set<uint64_t> expected;
  for (uint64_t i = 0; i < kPages; ++i) expected.insert(0x100000 + i * kPageSize);
  std::set<uint64_t> fetched = fetch_pages(*vm);
  if (stats.overruns > 0) {
    // Reported, and covered by counting every page dirty.
    EXPECT_EQ(GetParam(), DirtyTracking::kRing);
    EXPECT_EQ(fetched.size(), vm->memory().ram_size() / kPageSize);
    return;
  }
  EXPECT_EQ(fetched, expected);
  if (GetParam() == DirtyTracking::kRing) {
    EXPECT_GE(stats.ring_full_exits, kPages / 256);
    EXPECT_EQ(stats.harvested, kPages);
    EXPECT_EQ(stats.stray, 0u);
  } else {
    EXPECT_EQ(stats.ring_full_exits, 0u);
  }
}

TEST_P(DirtyPagesTest, NothingIsLoggedWhileDirtyLoggingIsOff) {
  Code code;
  code.store_pages(0x100000, 1000).exit(0);
  std::unique_ptr<Vm> vm = make_vm(GetParam(), code, 256);
  ASSERT_TRUE(vm);
  vm->start();
  VmExit exit = vm->wait();
  ASSERT_EQ(exit.kind, VmExit::Kind::kDebugExit) << exit.describe();
  EXPECT_TRUE(fetch_pages(*vm).empty());
  EXPECT_EQ(vm->dirty_pages().stats().harvested, 0u);
  EXPECT_EQ(vm->dirty_pages().stats().ring_full_exits, 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, DirtyPagesTest,
                         ::testing::Values(DirtyTracking::kBitmap, DirtyTracking::kRing),
                         [](const auto& info) { return dirty_tracking_name(info.param); });

TEST(DirtyTrackingChoice, AutoTakesTheRingWhereTheHostHasItAndKeepsIt) {
  VmConfig config;
  config.memory_size = 32ull << 20;
  config.for_restore = true;
  Result<std::unique_ptr<Vm>> vm = Vm::create(config);
  ASSERT_TRUE(vm.ok()) << vm.error().message();
  EXPECT_EQ((*vm)->dirty_pages().mode(), host_has_ring() && !host_overruns_dirty_rings()
                                             ? DirtyTracking::kRing
                                             : DirtyTracking::kBitmap);
  EXPECT_EQ((*vm)->config().dirty_tracking, DirtyTracking::kAuto) << "the request is kept";
}

TEST(DirtyTrackingChoice, BadRingSizesAreOneLineUserErrors) {
  if (!host_has_ring()) GTEST_SKIP() << "this host's KVM has no dirty ring";
  for (uint32_t entries : {1000u, 1u << 24}) {
    VmConfig config;
    config.memory_size = 32ull << 20;
    config.for_restore = true;
    config.dirty_tracking = DirtyTracking::kRing;
    config.dirty_ring_entries = entries;
    Result<std::unique_ptr<Vm>> vm = Vm::create(config);
    ASSERT_FALSE(vm.ok()) << entries;
    EXPECT_EQ(vm.error().exit_code(), 2) << vm.error().message();
    EXPECT_NE(vm.error().message().find("--dirty-ring-entries"), std::string::npos)
        << vm.error().message();
    EXPECT_EQ(vm.error().message().find('\n'), std::string::npos);
  }
}

TEST(DirtyTrackingChoice, ParsesTheThreeNames) {
  EXPECT_EQ(parse_dirty_tracking("ring").value(), DirtyTracking::kRing);
  EXPECT_EQ(parse_dirty_tracking("bitmap").value(), DirtyTracking::kBitmap);
  EXPECT_EQ(parse_dirty_tracking("auto").value(), DirtyTracking::kAuto);
  Result<DirtyTracking> bad = parse_dirty_tracking("pml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("auto, bitmap, ring"), std::string::npos);
}

}  // namespace
}  // namespace vmctl::vmm
