// The sending end of a live migration, inside the source VM process: the pre-copy rounds and the
// stop-and-copy over the data streams, then the wait for the switchover's verdict (the
// "source VM process" of migrate/protocol.md).
//
// Stages: idle -> sending (rounds; progress lines on the daemon's connection) -> sent (the VM is
// paused with everything sent; the connection is closed) -> a decision from vmctld: commit (the
// VM ends here: the destination runs it) or rollback (the VM runs on here). A daemon that goes
// away while the VM is still sending cancels it (no SWITCHOVER can have been sent, rule 6); once
// sent, the VM stays paused until a daemon decides.
#pragma once

#include <atomic>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fd.h"
#include "migrate/data_lanes.h"
#include "vmm/vm.h"
#include "vmprocess/control_protocol.h"

namespace vmctl::vmprocess {

class MigrationSender {
 public:
  enum class Stage { kIdle, kSending, kSent };

  explicit MigrationSender(vmm::Vm& vm) : vm_(vm) {}
  ~MigrationSender();

  // Starts sending on a thread of its own; progress lines go to `conn`, the last one with phase
  // sent, failed or cancelled.
  Status start(const MigrateArgs& args, Fd conn);
  // Before "sent": stop sending and resume the VM.
  Status cancel();
  // After "sent": the daemon's verdict for migration `id`.
  Status decide(const std::string& id, bool commit);

  Stage stage() const;
  std::string migration_id() const;
  // Counts migrations started: each one clears KVM's dirty log, which diff snapshots rely on.
  uint64_t generation() const { return generation_; }
  const char* stage_name() const;

 private:
  void run(MigrateArgs args, Fd conn);
  void watch_daemon(int conn);

  vmm::Vm& vm_;
  mutable std::mutex mu_;
  Stage stage_ = Stage::kIdle;
  std::string id_;
  std::atomic<bool> cancel_{false};
  std::atomic<uint64_t> generation_{0};
  migrate::DataLanes* streams_ = nullptr;  // while sending, under mu_ (for cancel)
  std::thread thread_;
};

}  // namespace vmctl::vmprocess
