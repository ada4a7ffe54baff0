// The control socket of a foreground VM (`vmctl run --control PATH`, `vmctl restore --control`):
// a unix socket that accepts one JSON request per connection and answers with one JSON line.
// Requests: {"op":"snapshot","path":P,"stop":bool,"diff":bool,"compression":N,"memory_file":M},
// {"op":"migrate",...,"dirty_tracking":"auto|bitmap|ring"} (the destination VM's mode; default:
// this VM's),
// {"op":"pause"}, {"op":"resume"}, {"op":"status"}, {"op":"stats"} (KVM exit statistics),
// {"op":"console","data":S} (bytes to the guest's COM1), {"op":"stop"}.
// Answers: {"ok":true,...} or {"ok":false,"error":"..."}. vmctld drives its VMs through it.
// The socket file is created with mode 0600: only its owner may drive the VM.
#pragma once

#include <atomic>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fd.h"
#include "migrate/grpc_target.h"
#include "state/dirty_tracker.h"
#include "vmm/vm.h"

namespace vmctl::vmprocess {

class ControlServer {
 public:
  // `vm_paused`: the VM starts paused on the caller's behalf; a "resume" request releases it.
  static Result<std::unique_ptr<ControlServer>> start(vmm::Vm& vm, const std::string& path,
                                                      bool vm_paused = false);
  ~ControlServer();

 private:
  ControlServer(vmm::Vm& vm, std::string path, Fd listener)
      : vm_(vm), path_(std::move(path)), listener_(std::move(listener)) {}
  void serve();
  nlohmann::json handle(const nlohmann::json& request);
  // {"op":"migrate",...}: runs the pre-copy migration, one JSON progress line per round on
  // `conn`, the last one with phase done/failed/cancelled. On success the VM ends here.
  void migrate(const nlohmann::json& request, Fd conn);
  // The destination's host report against the guest's CPU features (vmctl host-check's rules).
  Status check_destination(migrate::GrpcMigrationTarget& target);

  vmm::Vm& vm_;
  std::string path_;
  Fd listener_;
  Fd wake_;  // eventfd that ends serve()
  std::thread thread_;
  bool paused_by_us_ = false;
  state::DirtyTracker dirty_;  // for --diff snapshots
  std::thread migration_thread_;
  std::atomic<bool> migrating_{false};
  std::atomic<bool> cancel_migration_{false};
};

}  // namespace vmctl::vmprocess
