// The gRPC services vmctld serves: Vmctl (what vmctl and orchestrators call) and
// MigrationReceiver (what a source daemon and its VM process call to send a VM here). Thin: the
// VM registry and the two sides of migration do the work.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "base/error.h"
#include "daemon/authorization.h"
#include "daemon/incoming_migration.h"
#include "daemon/outgoing_migration.h"
#include "daemon/path_policy.h"
#include "daemon/vm_manager.h"
#include "proto/vmctl.grpc.pb.h"

namespace vmctl::daemon {

// TLS files for connections to other daemons (migration) and for TCP listeners.
struct TlsFiles {
  std::string ca, cert, key;
  bool empty() const { return ca.empty() && cert.empty() && key.empty(); }
};

// What callers may do (daemon/config.h): the roles of each caller, and the files they may name.
struct AccessPolicy {
  Authorizer authorizer = Authorizer::defaults();
  PathPolicy paths;              // kernels, initrds, snapshots, memory files, restore files
  PathPolicy migration_sockets;  // local migration destinations (unix:PATH)
};

// Maps an Error onto a gRPC status: operator mistakes are INVALID_ARGUMENT, unknown VMs
// NOT_FOUND, wrong states FAILED_PRECONDITION, everything else INTERNAL.
grpc::Status to_grpc(const Error& error);

class VmctlService final : public v1::Vmctl::Service {
 public:
  VmctlService(VmManager& manager, OutgoingMigrations& outgoing, const AccessPolicy& access)
      : manager_(manager), outgoing_(outgoing), access_(access) {}

  grpc::Status CreateVm(grpc::ServerContext*, const v1::CreateVmRequest*, v1::VmInfo*) override;
  grpc::Status StartVm(grpc::ServerContext*, const v1::VmRef*, v1::VmInfo*) override;
  grpc::Status PauseVm(grpc::ServerContext*, const v1::VmRef*, v1::VmInfo*) override;
  grpc::Status ResumeVm(grpc::ServerContext*, const v1::VmRef*, v1::VmInfo*) override;
  grpc::Status StopVm(grpc::ServerContext*, const v1::VmRef*, v1::VmInfo*) override;
  grpc::Status DeleteVm(grpc::ServerContext*, const v1::VmRef*, v1::VmInfo*) override;
  grpc::Status ListVms(grpc::ServerContext*, const v1::ListVmsRequest*,
                       v1::ListVmsResponse*) override;
  grpc::Status GetVm(grpc::ServerContext*, const v1::VmRef*, v1::VmInfo*) override;
  grpc::Status WatchVm(grpc::ServerContext*, const v1::WatchVmRequest*,
                       grpc::ServerWriter<v1::VmEvent>*) override;
  grpc::Status SendConsole(grpc::ServerContext*, const v1::ConsoleInput*, v1::VmInfo*) override;
  grpc::Status Snapshot(grpc::ServerContext*, const v1::SnapshotRequest*,
                        v1::SnapshotResponse*) override;
  grpc::Status Restore(grpc::ServerContext*, const v1::RestoreRequest*, v1::VmInfo*) override;
  grpc::Status Migrate(grpc::ServerContext*, const v1::MigrateRequest*,
                       grpc::ServerWriter<v1::MigrationProgress>*) override;
  grpc::Status CancelMigration(grpc::ServerContext*, const v1::VmRef*, v1::VmInfo*) override;
  grpc::Status RecoverMigration(grpc::ServerContext*, const v1::VmRef*, v1::VmInfo*) override;
  grpc::Status GetHostInfo(grpc::ServerContext*, const v1::HostInfoRequest*,
                           v1::HostInfo*) override;

 private:
  Status resolve_paths(v1::VmConfig& config) const;
  grpc::Status watch(grpc::ServerContext* context, const v1::WatchVmRequest& request,
                     grpc::ServerWriter<v1::VmEvent>* writer);
  // Runs `call` if the caller may call `rpc`.
  template <typename Call>
  grpc::Status guarded(grpc::ServerContext* context, const char* rpc, Call&& call) {
    grpc::Status allowed = access_.authorizer.check(context, rpc);
    return allowed.ok() ? call() : allowed;
  }

  VmManager& manager_;
  OutgoingMigrations& outgoing_;
  const AccessPolicy& access_;
};

class MigrationReceiverService final : public v1::MigrationReceiver::Service {
 public:
  MigrationReceiverService(IncomingMigrations& incoming, const Authorizer& authorizer)
      : incoming_(incoming), authorizer_(authorizer) {}
  grpc::Status Control(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::MigrationEvent, v1::MigrationControl>* stream) override {
    grpc::Status allowed = authorizer_.check(context, "Control");
    return allowed.ok() ? incoming_.control(context, stream) : allowed;
  }
  grpc::Status Receive(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::MigrationEvent, v1::MigrationChunk>* stream) override {
    grpc::Status allowed = authorizer_.check(context, "Receive");
    return allowed.ok() ? incoming_.receive(context, stream) : allowed;
  }
  grpc::Status Resolve(grpc::ServerContext* context, const v1::ResolveRequest* request,
                       v1::ResolveResponse* response) override {
    grpc::Status allowed = authorizer_.check(context, "Resolve");
    return allowed.ok() ? incoming_.resolve(*request, response) : allowed;
  }

 private:
  IncomingMigrations& incoming_;
  const Authorizer& authorizer_;
};

}  // namespace vmctl::daemon
