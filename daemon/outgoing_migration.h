// The source daemon's side of live migration (migrate/protocol.md): it offers the VM, checks the
// destination, lets the VM process send, waits for READY, sends SWITCHOVER (after writing it
// down), and follows the destination's verdict. It never resumes the VM on its own after
// SWITCHOVER: without a verdict the VM is in doubt until Resolve settles it.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "base/error.h"
#include "daemon/trusted_networks.h"
#include "daemon/vm_manager.h"
#include "migrate/channel.h"
#include "migrate/journal.h"
#include "proto/vmctl.grpc.pb.h"

namespace vmctl::daemon {

class OutgoingMigrations {
 public:
  // `trusted`: destinations on these networks are asked for plaintext data connections.
  OutgoingMigrations(VmManager& vms, migrate::MigrationJournal& journal, migrate::TlsConfig tls,
                     TrustedNetworks trusted = {});
  ~OutgoingMigrations();

  // At start, before serving: rolls back what had not reached SWITCHOVER when the daemon
  // stopped, and settles (in the background) what had (rule 5).
  void recover();

  grpc::Status migrate(grpc::ServerContext* context, const v1::MigrateRequest& request,
                       grpc::ServerWriter<v1::MigrationProgress>* writer);
  // Before SWITCHOVER only.
  Result<v1::VmInfo> cancel(const std::string& vm);
  // Settles a VM in doubt now (one Resolve).
  Result<v1::VmInfo> recover_vm(const std::string& vm);

 private:
  struct Job;
  class Run;

  std::shared_ptr<Job> start_job(const std::string& vm, Status* refused);
  void end_job(const std::shared_ptr<Job>& job);
  // One Resolve for an in-doubt record; true once it is settled.
  Result<bool> settle(migrate::MigrationRecord& record);
  void settle_in_doubt();  // the background loop
  void wake_settler();

  VmManager& vms_;
  migrate::MigrationJournal& journal_;
  migrate::TlsConfig tls_;
  TrustedNetworks trusted_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;  // by VM name, while Migrate runs
  bool stopping_ = false;
  std::thread settler_;
};

}  // namespace vmctl::daemon
