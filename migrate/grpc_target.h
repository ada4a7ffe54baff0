// The migration stream to a destination vmctld's MigrationReceiver: records in 1 MiB chunks over
// one bidirectional gRPC stream, the destination's verdict read on a thread of its own.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "migrate/channel.h"
#include "migrate/precopy.h"
#include "proto/vmctl.grpc.pb.h"

namespace vmctl::migrate {

using v1_offer_t = ::vmctl::v1::MigrationOffer;

class GrpcMigrationTarget final : public MigrationTarget, private state::ByteSink {
 public:
  // Connects, offers the VM under `vm_name`, and waits for the destination to accept.
  // With `streams` > 1 the record stream is cut into numbered 1 MiB chunks sent round-robin over
  // that many gRPC streams, each on its own connection and sender thread (so TLS and framing run
  // in parallel); the destination reassembles them in order.
  static Result<std::unique_ptr<GrpcMigrationTarget>> connect(
      const std::string& destination, const TlsConfig& tls, const std::string& vm_name,
      unsigned streams = 1, const std::string& dirty_tracking = "",
      uint32_t dirty_ring_entries = 0);
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

  // One extra stream of a parallel migration, with the thread that writes its chunks.
  struct Lane {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<::vmctl::v1::MigrationReceiver::Stub> stub;
    grpc::ClientContext context;
    std::unique_ptr<
        grpc::ClientReaderWriter<::vmctl::v1::MigrationChunk, ::vmctl::v1::MigrationEvent>>
        stream;  // null for lane 0, which is the primary stream_
    std::deque<::vmctl::v1::MigrationChunk> queue;
    std::thread sender;
  };
  Status open_lanes(unsigned streams, const TlsConfig& tls, const v1_offer_t& offer);
  void send_lane(size_t index);
  Status drain();

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
  uint64_t streamed_ = 0;                     // bytes of the record stream so far
  uint64_t sequence_ = 0;                     // next chunk number (parallel streams)
  std::vector<std::unique_ptr<Lane>> lanes_;  // empty for a single stream
  size_t in_flight_ = 0;                      // chunks queued or being written, under mu_
  bool lanes_stop_ = false;                   // under mu_
  std::string lane_error_;                    // the first failed write, under mu_
  int64_t corrupt_at_ = -1;                   // fault injection (see grpc_target.cc)
};

}  // namespace vmctl::migrate
