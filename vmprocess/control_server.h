// The server side of a VM process's control socket (the protocol is in control_protocol.h).
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fd.h"
#include "state/dirty_tracker.h"
#include "vmm/vm.h"
#include "vmprocess/control_protocol.h"
#include "vmprocess/migration_sender.h"

namespace vmctl::vmprocess {

// The destination side of a migration whose switchover is pending in this process.
struct IncomingMigration {
  std::string id;
  bool stay_paused = false;  // the VM was paused at the source: it stays paused here
};

class ControlServer {
 public:
  // `vm_paused`: the VM starts paused on the caller's behalf; a "resume" request releases it.
  // `incoming`: the VM was restored from a migration and waits (paused) for its switchover.
  static Result<std::unique_ptr<ControlServer>> start(
      vmm::Vm& vm, const std::string& path, bool vm_paused = false,
      std::optional<IncomingMigration> incoming = std::nullopt);
  ~ControlServer();

  // Exposed for the fuzzer and tests: one request line in, one answer out.
  nlohmann::json handle_line(const std::string& line);

 private:
  ControlServer(vmm::Vm& vm, std::string path, Fd listener)
      : vm_(vm), path_(std::move(path)), listener_(std::move(listener)), sender_(vm) {}
  void serve();
  nlohmann::json handle(const ControlRequest& request);
  // Why `op` may not run now (a switchover is pending), or empty.
  std::string refusal(ControlOp op);
  nlohmann::json status();
  nlohmann::json snapshot(const SnapshotArgs& args);
  nlohmann::json switchover(const std::string& id);
  nlohmann::json discard(const std::string& id);

  vmm::Vm& vm_;
  std::string path_;
  Fd listener_;
  Fd wake_;  // eventfd that ends serve()
  std::thread thread_;
  std::mutex mu_;  // the fields below
  bool paused_by_us_ = false;
  std::optional<IncomingMigration> incoming_;
  std::string switched_over_;      // the incoming migration that was switched over (idempotence)
  state::DirtyTracker dirty_;      // for --diff snapshots
  uint64_t dirty_generation_ = 0;  // the sender's generation dirty_ tracks from
  MigrationSender sender_;
};

}  // namespace vmctl::vmprocess
