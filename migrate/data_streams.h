// The data plane of a migration, on the source VM process's side: the record stream in numbered
// 1 MiB chunks over `streams` gRPC streams (MigrationReceiver.Receive), each on its own connection
// and sender thread so TLS and framing run on several cores, each joined to the migration with
// its id and the one-time secret the destination gave in ACCEPTED (migrate/protocol.md). The
// destination puts the chunks back in order.
#pragma once

#include <atomic>
#include <chrono>
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

struct DataStreamOptions {
  std::string destination;  // the destination vmctld: unix:/path or host:port (mutual TLS)
  TlsConfig tls;
  std::string migration_id;
  std::string secret;
  unsigned streams = 1;
  // A destination that takes no data for this long (it stopped reading, the link is gone
  // without a reset) ends the migration: a stalled peer must not keep the VM paused.
  std::chrono::milliseconds stall_timeout{15000};
};

class GrpcDataStreams final : public MigrationTarget, private state::ByteSink {
 public:
  // Opens every stream and joins it; fails unless the destination accepts all of them.
  static Result<std::unique_ptr<GrpcDataStreams>> connect(const DataStreamOptions& options);
  ~GrpcDataStreams() override;

  state::ByteSink& sink() override { return *this; }
  // Everything written so far has been handed to the connections.
  Status flush() override;
  // Ends every stream and waits until the destination daemon has taken all of it.
  Status finish();
  // Cancels every stream at once (a cancel, a failure elsewhere): writes fail from now on.
  void abort(const std::string& why) override;

 private:
  struct Lane {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::MigrationReceiver::Stub> stub;
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::MigrationChunk, v1::MigrationEvent>> stream;
    std::deque<v1::MigrationChunk> queue;
    std::thread sender, reader;
    bool writing = false;  // a Write is in progress (the stall watchdog's concern) ...
    std::chrono::steady_clock::time_point write_started;  // ... since then
  };

  explicit GrpcDataStreams(DataStreamOptions options) : options_(std::move(options)) {}
  Status open_lane(unsigned index);
  Status write(const void* data, size_t len) override;
  Status send_chunk();
  void send_lane(size_t index);
  void read_lane(size_t index);
  void watch_stalls();
  Error failure(const std::string& what);
  void fail(const std::string& why);  // with mu_ held

  DataStreamOptions options_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::string buffer_;
  uint64_t sequence_ = 0;  // next chunk number
  uint64_t streamed_ = 0;  // bytes of the record stream so far

  std::mutex mu_;
  std::condition_variable cv_;
  size_t in_flight_ = 0;  // chunks queued or being written
  bool stopping_ = false;
  std::optional<std::string> error_;  // the first failure: every later write fails with it
  std::thread watchdog_;

  // Fault injection for the test suite (read from the environment; see data_streams.cc).
  int64_t corrupt_at_ = -1, drop_chunk_ = -1, duplicate_chunk_ = -1;
};

}  // namespace vmctl::migrate
