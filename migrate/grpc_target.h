// The migration stream to a destination vmctld's MigrationReceiver: records in 1 MiB chunks over
// one bidirectional gRPC stream, the destination's verdict read on a thread of its own.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "migrate/channel.h"
#include "migrate/precopy.h"
#include "proto/vmctl.grpc.pb.h"

namespace vmctl::migrate {

class GrpcMigrationTarget final : public MigrationTarget, private state::ByteSink {
 public:
  // Connects, offers the VM under `vm_name`, and waits for the destination to accept.
  static Result<std::unique_ptr<GrpcMigrationTarget>> connect(const std::string& destination,
                                                              const TlsConfig& tls,
                                                              const std::string& vm_name);
  ~GrpcMigrationTarget() override;

  // The destination daemon's host report (GetHostInfo), for the pre-migration check.
  Result<std::string> destination_report();
  state::ByteSink& sink() override { return *this; }
  Status flush() override;
  Result<double> restored(double timeout_seconds) override;
  void commit() override;

 private:
  GrpcMigrationTarget() = default;
  Status write(const void* data, size_t len) override;
  Status send_chunk();
  Error failure(const std::string& what);
  void read_events();

  std::string destination_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<::vmctl::v1::MigrationReceiver::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<
      grpc::ClientReaderWriter<::vmctl::v1::MigrationChunk, ::vmctl::v1::MigrationEvent>>
      stream_;
  std::string buffer_;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<double> restored_ms_;
  std::optional<std::string> failed_;
  bool ended_ = false;
  bool committed_ = false;
  uint64_t streamed_ = 0;    // bytes of the record stream so far
  int64_t corrupt_at_ = -1;  // fault injection (see grpc_target.cc)
};

}  // namespace vmctl::migrate
