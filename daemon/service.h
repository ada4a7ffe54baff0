// The gRPC services vmctld serves: Vmctl (what vmctl and orchestrators call) and
// MigrationReceiver (what a source daemon's VM calls to send a VM here).
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "base/error.h"
#include "daemon/vm_manager.h"
#include "proto/vmctl.grpc.pb.h"

namespace vmctl::daemon {

// TLS files for connections to other daemons (migration) and for TCP listeners.
struct TlsFiles {
  std::string ca, cert, key;
  bool empty() const { return ca.empty() && cert.empty() && key.empty(); }
};

// Maps an Error onto a gRPC status: operator mistakes are INVALID_ARGUMENT, unknown VMs
// NOT_FOUND, wrong states FAILED_PRECONDITION, everything else INTERNAL.
grpc::Status to_grpc(const Error& error);

class VmctlService final : public v1::Vmctl::Service {
 public:
  VmctlService(VmManager& manager, TlsFiles tls) : manager_(manager), tls_(std::move(tls)) {}

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
  grpc::Status GetHostInfo(grpc::ServerContext*, const v1::HostInfoRequest*,
                           v1::HostInfo*) override;

 private:
  VmManager& manager_;
  TlsFiles tls_;
};

class MigrationReceiverService final : public v1::MigrationReceiver::Service {
 public:
  explicit MigrationReceiverService(VmManager& manager) : manager_(manager) {}
  grpc::Status Receive(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::MigrationEvent, v1::MigrationChunk>* stream) override;

  // The chunks of a parallel migration, put back in order on their way to the VM process.
  class Reassembly {
   public:
    explicit Reassembly(int fd) : fd_(fd) {}
    // Takes chunk `sequence` and writes it, and every chunk after it that is already here, to
    // the VM process in order. False once the stream is closed or the VM process is gone.
    bool push(uint64_t sequence, std::string bytes);
    void close();

   private:
    // 1 MiB chunks: the source queues at most 4 per stream, so this is far beyond any honest lag.
    static constexpr size_t kMaxPendingChunks = 256;
    std::mutex mu_;
    int fd_;
    uint64_t next_ = 0;
    std::map<uint64_t, std::string> pending_;
    bool closed_ = false;
  };

 private:
  grpc::Status receive_secondary(
      const v1::MigrationOffer& offer,
      grpc::ServerReaderWriter<v1::MigrationEvent, v1::MigrationChunk>* stream);

  VmManager& manager_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<Reassembly>> parallel_;  // by migration id
};

}  // namespace vmctl::daemon
