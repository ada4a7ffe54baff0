// The fault matrix of migrate/protocol.md: every process that holds a piece of a migration is
// killed, restarted, cut off or stalled at every phase, and each case ends with what the
// processes themselves say (guest_copies.h): exactly one copy of the guest runs, on the host the
// protocol says, and the guest finds all its memory intact. Timing comes from fault points
// (base/fault.h) that hold a daemon at an exact step while the test strikes.
#include <signal.h>

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <future>
#include <thread>

#include "tests/integration/cross_host.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;
constexpr uint64_t kMiB = 1 << 20;

// A migration on its own thread, so the test can act while it runs.
class AsyncMigration {
 public:
  AsyncMigration(Daemon& source, v1::MigrateRequest request,
                 std::function<void(const v1::MigrationProgress&)> on_progress = {}) {
    result_ = std::async(std::launch::async, [&source, request, on_progress, this] {
      return migrate(source, request, [&](const v1::MigrationProgress& p) {
        {
          std::lock_guard lock(mu_);
          phases_.push_back(p.phase());
        }
        if (on_progress) on_progress(p);
      });
    });
  }
  MigrationResult wait() { return result_.get(); }
  bool saw(const std::string& phase) {
    std::lock_guard lock(mu_);
    return std::find(phases_.begin(), phases_.end(), phase) != phases_.end();
  }

 private:
  std::mutex mu_;
  std::vector<std::string> phases_;
  std::future<MigrationResult> result_;
};

// Waits until the daemon's log shows `text` (a fault point it reached).
bool wait_log(Daemon& d, const std::string& text, std::chrono::milliseconds timeout = 60s) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (d.log().find(text) == std::string::npos) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

class FaultMatrix : public CrossHost {
 protected:
  const std::string name = "fm";

  // 512 MiB with 448 MiB dirtied as fast as the guest can: rounds take long enough to strike in.
  void big_guest() {
    ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 512 * kMiB, "mib=448 rate=0 hb_ms=50"));
  }
  // A guest that converges at once: for the switchover's phases.
  void small_guest() {
    ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 128 * kMiB, "mib=32 rate=16 hb_ms=50"));
  }
  // Rounds go on until something ends them.
  v1::MigrateRequest endless() {
    v1::MigrateRequest r = request(name, hosts->addr_b);
    r.set_downtime_ms(1);
    r.set_max_rounds(100000);
    r.set_max_seconds(300);
    return r;
  }
  // Stop-and-copy right after round 0, with ~448 MiB still to send while the VM is paused.
  v1::MigrateRequest long_stop_and_copy() {
    v1::MigrateRequest r = request(name, hosts->addr_b);
    r.set_downtime_ms(600000);
    return r;
  }
  v1::MigrateRequest to_b() { return request(name, hosts->addr_b); }

  // The receiving VM process on B (there must be exactly one).
  pid_t receiving_process() {
    for (int i = 0; i < 500; ++i) {
      std::vector<GuestCopy> c = guest_copies({hosts->root_b()}, name);
      if (c.size() == 1) return c[0].pid;
      std::this_thread::sleep_for(10ms);
    }
    ADD_FAILURE() << "no receiving VM process on B";
    return -1;
  }
  pid_t source_process() {
    std::vector<GuestCopy> c = guest_copies({hosts->root_a()}, name);
    EXPECT_EQ(c.size(), 1u) << describe(c);
    return c.empty() ? -1 : c[0].pid;
  }
  void kill_pid(pid_t pid) {
    if (pid > 0) ::kill(pid, SIGKILL);
  }

  void expect_failed(const MigrationResult& r) {
    EXPECT_FALSE(r.status.ok()) << "the migration succeeded: the fault came too late";
  }
};

// ------------------------------------------------------------------ the destination daemon dies

TEST_F(FaultMatrix, DestinationDaemonKilledInRoundZero) {
  big_guest();
  MigrationResult r = migrate(A(), to_b(), [&](const auto& p) {
    if (p.phase() == "precopy" && p.round() == 0 && B().running()) B().stop(SIGKILL);
  });
  expect_failed(r);
  B().start();
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, DestinationDaemonKilledInALaterRound) {
  big_guest();
  v1::MigrateRequest req = endless();
  req.set_streams(3);  // parallel streams roll back as cleanly as one
  // Round 1's report comes when round 1 has been sent: a guest starved of CPU during it (a busy
  // CI machine) may leave too little dirty for a round 2, so the daemon dies there.
  MigrationResult r = migrate(A(), req, [&](const auto& p) {
    if (p.round() >= 1 && B().running()) B().stop(SIGKILL);
  });
  expect_failed(r);
  ASSERT_NE(r.last(), nullptr);
  EXPECT_GE(r.last()->round(), 1u);
  B().start();
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, DestinationDaemonKilledDuringStopAndCopy) {
  big_guest();
  MigrationResult r = migrate(A(), long_stop_and_copy(), [&](const auto& p) {
    if (p.phase() == "stop-and-copy" && B().running()) B().stop(SIGKILL);
  });
  expect_failed(r);
  B().start();
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, DestinationDaemonKilledBetweenReadyAndSwitchover) {
  with_faults(A(), {"VMCTL_FAULT_HOLD=source-before-switchover:3000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(A(), "fault: holding at source-before-switchover"));
  B().stop(SIGKILL);  // the destination had the VM restored and paused
  MigrationResult r = m.wait();
  B().start();
  // Rolled back at once (the control stream was gone), or settled after B restarted.
  expect_one_copy(name, hosts->root_a(), 60s);
  EXPECT_FALSE(r.status.ok());
  stop_vm(name);
}

TEST_F(FaultMatrix, DestinationDaemonKilledBetweenSwitchoverAndResumed) {
  with_faults(B(), {"VMCTL_FAULT_HOLD=dest-after-switchover:3000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(B(), "fault: holding at dest-after-switchover"));
  B().stop(SIGKILL);  // SWITCHOVER arrived, nothing was committed
  MigrationResult r = m.wait();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
  EXPECT_EQ(A().get(name).state(), v1::VM_STATE_MIGRATION_IN_DOUBT);
  // In doubt: paused on A, paused on B; nothing runs until the daemons settle it.
  for (const GuestCopy& c : guest_copies(roots(), name)) EXPECT_FALSE(c.runs()) << c.describe();
  B().start();  // discards what it had not committed; A learns it and resumes
  expect_one_copy(name, hosts->root_a(), 60s);
  stop_vm(name);
}

TEST_F(FaultMatrix, DestinationDaemonKilledAfterItResumedTheVm) {
  with_faults(B(), {"VMCTL_FAULT_HOLD=dest-before-resumed:3000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(B(), "fault: holding at dest-before-resumed"));
  B().stop(SIGKILL);  // the VM runs on B; A never hears RESUMED
  MigrationResult r = m.wait();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
  B().start();
  expect_one_copy(name, hosts->root_b(), 60s);
  EXPECT_TRUE(A().wait_state(name, v1::VM_STATE_MIGRATED, 30s));
  stop_vm(name);
}

// ------------------------------------------------------------------ the receiving VM process dies

TEST_F(FaultMatrix, ReceivingProcessKilledInRoundZero) {
  big_guest();
  bool done = false;
  MigrationResult r = migrate(A(), to_b(), [&](const auto& p) {
    if (p.phase() == "precopy" && p.round() == 0 && !done) {
      done = true;
      kill_pid(receiving_process());
    }
  });
  expect_failed(r);
  expect_one_copy(name, hosts->root_a());
  EXPECT_NE(B().get(name).state(), v1::VM_STATE_RUNNING);
  stop_vm(name);
}

TEST_F(FaultMatrix, ReceivingProcessKilledInALaterRound) {
  big_guest();
  bool done = false;
  MigrationResult r = migrate(A(), endless(), [&](const auto& p) {
    if (p.round() >= 2 && !done) {
      done = true;
      kill_pid(receiving_process());
    }
  });
  expect_failed(r);
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, ReceivingProcessKilledDuringStopAndCopy) {
  big_guest();
  bool done = false;
  MigrationResult r = migrate(A(), long_stop_and_copy(), [&](const auto& p) {
    if (p.phase() == "stop-and-copy" && !done) {
      done = true;
      kill_pid(receiving_process());
    }
  });
  expect_failed(r);
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, ReceivingProcessKilledBetweenReadyAndSwitchover) {
  with_faults(A(), {"VMCTL_FAULT_HOLD=source-before-switchover:2000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(A(), "fault: holding at source-before-switchover"));
  kill_pid(receiving_process());
  MigrationResult r = m.wait();
  expect_failed(r);
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, ReceivingProcessKilledBetweenSwitchoverAndResumed) {
  with_faults(B(), {"VMCTL_FAULT_HOLD=dest-after-switchover:2000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(B(), "fault: holding at dest-after-switchover"));
  kill_pid(receiving_process());  // SWITCHOVER is here, the VM never resumed
  MigrationResult r = m.wait();
  expect_failed(r);
  EXPECT_NE(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << "the outcome is known";
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, ReceivingProcessKilledAfterItResumedTheVm) {
  with_faults(B(), {"VMCTL_FAULT_HOLD=dest-before-resumed:3000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(B(), "fault: holding at dest-before-resumed"));
  // The switchover is committed and the VM ran on B: its state has moved on from A's paused
  // copy, so the source must not resume. The VM is lost, and every side says so.
  kill_pid(receiving_process());
  MigrationResult r = m.wait();
  // OK (B resumed it before it died) or DATA_LOSS (B lost it before resuming): either way the
  // destination took it over, and A must not bring back its stale copy.
  EXPECT_TRUE(r.status.ok() || r.status.error_code() == grpc::StatusCode::DATA_LOSS)
      << r.status.error_message();
  EXPECT_TRUE(A().wait_state(name, v1::VM_STATE_MIGRATED, 30s)) << A().get(name).DebugString();
  EXPECT_TRUE(B().wait_state(name, v1::VM_STATE_FAILED, 30s)) << B().get(name).DebugString();
  expect_no_copy(name);
  stop_vm(name);
}

// ------------------------------------------------------------------ the source VM process dies

TEST_F(FaultMatrix, SourceProcessKilledMidRound) {
  big_guest();
  bool done = false;
  MigrationResult r = migrate(A(), endless(), [&](const auto& p) {
    if (p.round() >= 1 && !done) {
      done = true;
      kill_pid(source_process());
    }
  });
  expect_failed(r);
  // The VM's only complete copy was that process: nothing can run, and nothing may be left.
  expect_no_copy(name);
  EXPECT_TRUE(A().wait_state(name, v1::VM_STATE_FAILED, 10s)) << A().get(name).error();
  EXPECT_NE(A().get(name).error().find("signal 9"), std::string::npos) << A().get(name).error();
  stop_vm(name);
}

TEST_F(FaultMatrix, SourceProcessKilledDuringStopAndCopy) {
  big_guest();
  bool done = false;
  MigrationResult r = migrate(A(), long_stop_and_copy(), [&](const auto& p) {
    if (p.phase() == "stop-and-copy" && !done) {
      done = true;
      kill_pid(source_process());
    }
  });
  expect_failed(r);
  expect_no_copy(name);
  EXPECT_TRUE(A().wait_state(name, v1::VM_STATE_FAILED, 10s));
  stop_vm(name);
}

TEST_F(FaultMatrix, SourceProcessKilledAfterItSentEverything) {
  with_faults(A(), {"VMCTL_FAULT_HOLD=source-before-switchover:2000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(A(), "fault: holding at source-before-switchover"));
  kill_pid(source_process());
  // The destination holds the complete state: the switchover goes on and the VM lives there.
  MigrationResult r = m.wait();
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  expect_one_copy(name, hosts->root_b());
  stop_vm(name);
}

// ------------------------------------------------------------------ the source daemon restarts

TEST_F(FaultMatrix, SourceDaemonRestartedMidMigration) {
  big_guest();
  pid_t daemon = A().pid();
  std::atomic<bool> done{false};
  AsyncMigration m(A(), endless(), [&](const auto& p) {
    if (p.round() >= 1 && !done.exchange(true)) ::kill(daemon, SIGKILL);
  });
  MigrationResult r = m.wait();
  expect_failed(r);
  A().stop(SIGKILL);
  A().start();  // the VM process resumed its VM when its daemon went away
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, SourceDaemonRestartedInTheInDoubtWindow) {
  with_faults(A(), {"VMCTL_FAULT_HOLD=source-after-switchover:3000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(A(), "fault: holding at source-after-switchover"));
  ::kill(A().pid(), SIGKILL);  // SWITCHOVER is on its way; its answer will find nobody
  m.wait();
  A().stop(SIGKILL);
  A().start();  // in doubt, settled with B: the VM runs there
  expect_one_copy(name, hosts->root_b(), 60s);
  EXPECT_TRUE(A().wait_state(name, v1::VM_STATE_MIGRATED, 30s));
  stop_vm(name);
}

TEST_F(FaultMatrix, BothDaemonsRestartedInTheInDoubtWindow) {
  with_faults(A(), {"VMCTL_FAULT_HOLD=source-after-switchover:5000"});
  with_faults(B(), {"VMCTL_FAULT_HOLD=dest-after-switchover:5000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(B(), "fault: holding at dest-after-switchover"));
  ::kill(A().pid(), SIGKILL);
  B().stop(SIGKILL);  // neither committed nor knows the outcome
  m.wait();
  A().stop(SIGKILL);
  for (int i = 0; i < 2; ++i) {
    for (const GuestCopy& c : guest_copies(roots(), name)) EXPECT_FALSE(c.runs()) << c.describe();
  }
  A().start();
  B().start();
  expect_one_copy(name, hosts->root_a(), 60s);
  stop_vm(name);
}

// ------------------------------------------------------------------ the link goes down

TEST_F(FaultMatrix, LinkCutDuringPrecopy) {
  big_guest();
  auto start = std::chrono::steady_clock::now();
  MigrationResult r = migrate(A(), endless(), [&](const auto& p) {
    if (p.round() == 1) link(false);
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  expect_failed(r);
  EXPECT_LT(seconds, 30) << "a dead link must be noticed by keepalive, not the TCP timeout";
  link(true);
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, LinkCutInRoundZero) {
  big_guest();
  bool cut = false;
  MigrationResult r = migrate(A(), endless(), [&](const auto& p) {
    if (p.phase() == "precopy" && p.round() == 0 && !cut) {
      cut = true;
      link(false);
    }
  });
  expect_failed(r);
  EXPECT_TRUE(cut) << "round 0 reported no progress";
  link(true);
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, LinkCutWhileWaitingForReady) {
  with_faults(B(), {"VMCTL_FAULT_HOLD=dest-before-ready:3000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(B(), "fault: holding at dest-before-ready"));
  link(false);  // READY cannot arrive; nothing was switched over
  MigrationResult r = m.wait();
  expect_failed(r);
  std::this_thread::sleep_for(2s);
  link(true);
  expect_one_copy(name, hosts->root_a(), 60s);
  stop_vm(name);
}

TEST_F(FaultMatrix, LinkCutBetweenSwitchoverAndResumed) {
  with_faults(B(), {"VMCTL_FAULT_HOLD=dest-after-switchover:3000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(B(), "fault: holding at dest-after-switchover"));
  link(false);  // SWITCHOVER is at B, B has not committed, and no answer can reach A
  MigrationResult r = m.wait();
  EXPECT_FALSE(r.status.ok());
  EXPECT_EQ(A().get(name).state(), v1::VM_STATE_MIGRATION_IN_DOUBT)
      << "A cannot know whether B resumed";
  for (const GuestCopy& c : guest_copies({hosts->root_a()}, name)) {
    EXPECT_FALSE(c.runs()) << "in doubt, the source never resumes on its own: " << c.describe();
  }
  link(true);
  // The daemons settle it by the migration id, whichever way B went: A's answer and the
  // processes on both hosts must agree on one running copy.
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (A().get(name).state() == v1::VM_STATE_MIGRATION_IN_DOUBT &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(100ms);
  }
  v1::VmState settled = A().get(name).state();
  ASSERT_TRUE(settled == v1::VM_STATE_MIGRATED || settled == v1::VM_STATE_RUNNING)
      << A().get(name).DebugString();
  expect_one_copy(name, settled == v1::VM_STATE_MIGRATED ? hosts->root_b() : hosts->root_a(), 60s);
  stop_vm(name);
}

TEST_F(FaultMatrix, LinkCutDuringStopAndCopy) {
  big_guest();
  v1::MigrateRequest req = long_stop_and_copy();
  req.set_stall_timeout_seconds(3);
  MigrationResult r = migrate(A(), req, [&](const auto& p) {
    if (p.phase() == "stop-and-copy") link(false);
  });
  expect_failed(r);
  link(true);
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, LinkCutBetweenReadyAndSwitchover) {
  with_faults(A(), {"VMCTL_FAULT_HOLD=source-before-switchover:1500"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(A(), "fault: holding at source-before-switchover"));
  link(false);  // the SWITCHOVER that follows cannot arrive
  MigrationResult r = m.wait();
  EXPECT_FALSE(r.status.ok());
  std::this_thread::sleep_for(2s);
  link(true);
  expect_one_copy(name, hosts->root_a(), 60s);
  stop_vm(name);
}

TEST_F(FaultMatrix, LinkCutAfterTheDestinationResumed) {
  with_faults(B(), {"VMCTL_FAULT_HOLD=dest-before-resumed:1500"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(B(), "fault: holding at dest-before-resumed"));
  link(false);  // RESUMED cannot arrive
  MigrationResult r = m.wait();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
  EXPECT_EQ(A().get(name).state(), v1::VM_STATE_MIGRATION_IN_DOUBT);
  link(true);
  expect_one_copy(name, hosts->root_b(), 60s);
  EXPECT_TRUE(A().wait_state(name, v1::VM_STATE_MIGRATED, 30s));
  stop_vm(name);
}

TEST_F(FaultMatrix, StalledDestinationDuringStopAndCopy) {
  big_guest();
  v1::MigrateRequest req = long_stop_and_copy();
  req.set_stall_timeout_seconds(3);
  // The data goes straight to B's VM process (migrate/data_plane.md): it stops reading while its
  // daemon still answers (a daemon that stops is a lost destination: LinkCut tests).
  std::vector<pid_t> stopped;
  auto start = std::chrono::steady_clock::now();
  MigrationResult r = migrate(A(), req, [&](const auto& p) {
    if (p.phase() != "stop-and-copy" || !stopped.empty()) return;
    for (const GuestCopy& c : guest_copies({hosts->root_b()}, name)) stopped.push_back(c.pid);
    for (pid_t pid : stopped) ::kill(pid, SIGSTOP);
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  expect_failed(r);
  EXPECT_LT(seconds, 40) << "a stalled peer must not keep the source paused";
  EXPECT_NE(r.status.error_message().find("stalled"), std::string::npos)
      << r.status.error_message();
  // The source runs again while B is still stopped ...
  std::vector<GuestCopy> source = guest_copies({hosts->root_a()}, name);
  ASSERT_EQ(source.size(), 1u) << describe(source);
  EXPECT_TRUE(source[0].answers && !source[0].paused) << source[0].describe();
  EXPECT_FALSE(stopped.empty()) << "no VM process on B to stop";
  for (pid_t pid : stopped) ::kill(pid, SIGCONT);
  expect_one_copy(name, hosts->root_a());  // ... and B, back, throws its copy away
  stop_vm(name);
}

// ------------------------------------------------------------------ cancel, and a lost answer

TEST_F(FaultMatrix, CancelInRoundZero) {
  big_guest();
  std::thread canceller;
  MigrationResult r = migrate(A(), to_b(), [&](const auto& p) {
    if (p.phase() == "precopy" && p.round() == 0 && !canceller.joinable()) {
      canceller = std::thread([&] {
        grpc::Status s = A().call(&v1::Vmctl::Stub::CancelMigration, name);
        EXPECT_TRUE(s.ok()) << s.error_message();
      });
    }
  });
  canceller.join();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << r.status.error_message();
  ASSERT_NE(r.last(), nullptr);
  EXPECT_EQ(r.last()->round(), 0u) << "cancel waited for the round to end";
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, CancelDuringStopAndCopy) {
  big_guest();
  std::thread canceller;
  MigrationResult r = migrate(A(), long_stop_and_copy(), [&](const auto& p) {
    if (p.phase() == "stop-and-copy" && !canceller.joinable()) {
      canceller = std::thread([&] {
        grpc::Status s = A().call(&v1::Vmctl::Stub::CancelMigration, name);
        EXPECT_TRUE(s.ok()) << s.error_message();
      });
    }
  });
  canceller.join();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << r.status.error_message();
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, CancelWhileWaitingForReady) {
  with_faults(B(), {"VMCTL_FAULT_HOLD=dest-before-ready:3000"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(B(), "fault: holding at dest-before-ready"));
  ASSERT_TRUE(m.saw("awaiting-destination") ||
              (std::this_thread::sleep_for(200ms), m.saw("awaiting-destination")));
  grpc::Status cancel = A().call(&v1::Vmctl::Stub::CancelMigration, name);
  EXPECT_TRUE(cancel.ok()) << cancel.error_message();
  MigrationResult r = m.wait();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << r.status.error_message();
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(FaultMatrix, CancelAfterTheSwitchoverIsRefused) {
  with_faults(B(), {"VMCTL_FAULT_HOLD=dest-after-switchover:1500"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(B(), "fault: holding at dest-after-switchover"));
  grpc::Status cancel = A().call(&v1::Vmctl::Stub::CancelMigration, name);
  EXPECT_EQ(cancel.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << cancel.error_message();
  EXPECT_NE(cancel.error_message().find("past its switchover"), std::string::npos);
  MigrationResult r = m.wait();
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  expect_one_copy(name, hosts->root_b());
  stop_vm(name);
}

TEST_F(FaultMatrix, ResumedAnswerLost) {
  with_faults(B(), {"VMCTL_FAULT_DROP_RESUMED=1"});
  small_guest();
  MigrationResult r = migrate(A(), to_b());
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
  ASSERT_NE(r.last(), nullptr);
  EXPECT_EQ(r.last()->phase(), "in-doubt");
  // vmctld settles it by itself; `vmctl migrate --recover` would do the same at once.
  expect_one_copy(name, hosts->root_b(), 60s);
  EXPECT_TRUE(A().wait_state(name, v1::VM_STATE_MIGRATED, 30s));
  stop_vm(name);
}

TEST_F(FaultMatrix, RecoverSettlesAnInDoubtVmByHand) {
  with_faults(B(), {"VMCTL_FAULT_HOLD=dest-before-resumed:1500"});
  small_guest();
  AsyncMigration m(A(), to_b());
  ASSERT_TRUE(wait_log(B(), "fault: holding at dest-before-resumed"));
  link(false);
  MigrationResult r = m.wait();
  ASSERT_EQ(A().get(name).state(), v1::VM_STATE_MIGRATION_IN_DOUBT);
  v1::VmInfo info;
  grpc::Status early = A().call(&v1::Vmctl::Stub::RecoverMigration, name, &info);
  EXPECT_FALSE(early.ok()) << "the destination is unreachable: still in doubt";
  EXPECT_EQ(A().get(name).state(), v1::VM_STATE_MIGRATION_IN_DOUBT);
  link(true);
  // The daemon may settle it first; either way the answer is MIGRATED.
  grpc::Status settled;
  for (int i = 0; i < 100; ++i) {
    settled = A().call(&v1::Vmctl::Stub::RecoverMigration, name, &info);
    if (settled.ok() || A().get(name).state() == v1::VM_STATE_MIGRATED) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(A().get(name).state(), v1::VM_STATE_MIGRATED);
  expect_one_copy(name, hosts->root_b());
  stop_vm(name);
}

}  // namespace
}  // namespace vmctl::testing
