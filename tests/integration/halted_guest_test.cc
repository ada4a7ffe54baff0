// Guests whose vCPU is halted for good: `cli; hlt` (a panicked kernel) and `hlt` with no timer
// armed (a tickless kernel idling). KVM_RUN holds the vCPU's mutex while the vCPU halts, so any
// vCPU ioctl from another thread would wait until the guest wakes, which for these guests is
// never: migrate, snapshot and cancel must all go through the pause path and finish.
#include <gtest/gtest.h>

#include <future>
#include <map>

#include <xxhash.h>

#include "state/stream.h"
#include "tests/integration/cross_host.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;
namespace ps = proto::state;
constexpr uint64_t kMiB = 1 << 20;

// Guest page -> XXH3 of its contents, from a snapshot's memory records (zero pages are absent).
std::map<uint64_t, uint64_t> memory_digest(const std::string& path) {
  std::map<uint64_t, uint64_t> pages;
  auto source = state::FileSource::open(path);
  EXPECT_TRUE(source.ok()) << path;
  if (!source.ok()) return pages;
  state::RecordReader reader(**source, path);
  while (true) {
    auto record = reader.next();
    EXPECT_TRUE(record.ok()) << record.error().message();
    if (!record.ok() || !*record) break;
    if ((*record)->type != ps::RecordType::MEMORY_PAGES) continue;
    auto msg = (*record)->message();
    auto m = msg->getRoot<ps::MemoryPages>();
    const uint8_t* data = m.getData().begin();
    for (auto run : m.getRuns()) {
      for (uint32_t i = 0; i < run.getCount(); ++i, data += 4096) {
        pages[run.getFirstPage() + i] = XXH3_64bits(data, 4096);
      }
    }
  }
  return pages;
}

struct HaltMode {
  const char* name;
  const char* kernel;
  const char* cmdline;
};

class HaltedGuest : public CrossHost, public ::testing::WithParamInterface<HaltMode> {
 protected:
  const std::string name = "halted";
  void start() {
    v1::VmInfo info;
    grpc::Status s =
        A().create(name, guest_path(GetParam().kernel), GetParam().cmdline, 128 * kMiB, 1, &info);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_TRUE(A().wait_console(name, "^HALT ", 60s)) << A().console(name);
    std::this_thread::sleep_for(200ms);  // in HLT for good now
  }
  grpc::Status snapshot(Daemon& d, const std::string& path) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 60s);
    v1::SnapshotRequest r;
    r.set_name(name);
    r.set_path(path);
    r.set_compression(0);
    v1::SnapshotResponse out;
    return d.stub().Snapshot(&context, r, &out);
  }
  // A migration that must end: the RPC's deadline catches one that hangs.
  MigrationResult migrate_to_b() {
    auto done =
        std::async(std::launch::async, [&] { return migrate(A(), request(name, hosts->addr_b)); });
    EXPECT_EQ(done.wait_for(60s), std::future_status::ready) << "the migration hangs";
    return done.get();
  }
};

TEST_P(HaltedGuest, SnapshotMigrateAndCancelEnd) {
  ASSERT_NO_FATAL_FAILURE(start());
  std::string before = hosts->dir->path() + "/halted-a.snap";
  std::string after = hosts->dir->path() + "/halted-b.snap";
  grpc::Status s = snapshot(A(), before);
  ASSERT_TRUE(s.ok()) << s.error_message();

  // Cancel, while the migration waits at its last step before the switchover.
  with_faults(A(), {"VMCTL_FAULT_HOLD=source-before-switchover:2000"});
  {
    auto m =
        std::async(std::launch::async, [&] { return migrate(A(), request(name, hosts->addr_b)); });
    auto deadline = std::chrono::steady_clock::now() + 30s;
    while (A().log().find("fault: holding at source-before-switchover") == std::string::npos &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
    }
    grpc::Status cancel = A().call(&v1::Vmctl::Stub::CancelMigration, name);
    EXPECT_TRUE(cancel.ok()) << cancel.error_message();
    ASSERT_EQ(m.wait_for(60s), std::future_status::ready) << "the cancelled migration hangs";
    EXPECT_EQ(m.get().status.error_code(), grpc::StatusCode::CANCELLED);
  }
  // The destination throws its paused copy away once it hears of the cancel (asynchronously).
  std::vector<GuestCopy> copies = guest_copies(roots(), name);
  for (auto until = std::chrono::steady_clock::now() + 20s;
       copies.size() != 1 && std::chrono::steady_clock::now() < until;
       copies = guest_copies(roots(), name)) {
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(copies.size(), 1u) << describe(copies);
  EXPECT_EQ(copies[0].root, hosts->root_a());
  EXPECT_TRUE(copies[0].answers && !copies[0].paused) << copies[0].describe();

  // And the migration itself.
  with_faults(A(), {});
  MigrationResult r = migrate_to_b();
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_TRUE(A().wait_state(name, v1::VM_STATE_MIGRATED, 10s));
  copies = guest_copies(roots(), name);
  ASSERT_EQ(copies.size(), 1u) << describe(copies);
  EXPECT_EQ(copies[0].root, hosts->root_b());
  EXPECT_TRUE(copies[0].answers && !copies[0].paused) << copies[0].describe();
  s = snapshot(B(), after);
  ASSERT_TRUE(s.ok()) << s.error_message();
  // Nothing ran in between: the memory there is the memory here, page for page.
  std::map<uint64_t, uint64_t> a = memory_digest(before), b = memory_digest(after);
  EXPECT_GT(a.size(), 64 * 256u) << "the guest wrote 64 MiB";
  EXPECT_TRUE(a == b) << a.size() << " pages before, " << b.size() << " after";
  stop_vm(name);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, HaltedGuest,
    ::testing::Values(HaltMode{"CliHlt", "dirtier-multiboot.elf", "mib=64 rate=0 halt=cli"},
                      HaltMode{"HltWithoutTimer", "dirtier.elf", "mib=64 rate=0 halt=idle"}),
    [](const ::testing::TestParamInfo<HaltMode>& info) { return info.param.name; });

}  // namespace
}  // namespace vmctl::testing
