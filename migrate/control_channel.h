// The control plane of a migration on the source daemon's side (migrate/protocol.md): the
// MigrationReceiver.Control stream to the destination daemon, every wait on it with a deadline,
// and Resolve for a migration whose outcome was lost.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "base/error.h"
#include "migrate/channel.h"
#include "proto/vmctl.grpc.pb.h"

namespace vmctl::migrate {

namespace v1 = ::vmctl::v1;

// What the destination said on the control stream.
struct ControlEvent {
  enum class Kind {
    kAccepted,  // secret, host report
    kReady,     // restored and paused: restore_ms
    kResumed,   // after SWITCHOVER
    kFailed,    // the destination discarded its copy (after_switchover: it had taken it over)
    kClosed,    // the stream ended without a verdict (peer gone, link cut): error says how
  };
  Kind kind = Kind::kClosed;
  std::string error;
  double restore_ms = 0;
  bool after_switchover = false;
  std::string secret;
  std::string host_report_json;
  std::string data_endpoint;  // ACCEPTED: "tcp PORT" or "unix PATH" (data_plane.md)
  bool data_plaintext = false;  // ACCEPTED: without TLS (a trusted network)
};

class ControlChannel {
 public:
  // Connects and sends the offer; returns once the destination accepted (kAccepted in
  // `accepted`), refused, or `timeout` passed.
  static Result<std::unique_ptr<ControlChannel>> open(const std::string& destination,
                                                      const TlsConfig& tls,
                                                      const v1::MigrationOffer& offer,
                                                      std::chrono::milliseconds timeout,
                                                      ControlEvent* accepted);
  ~ControlChannel();

  // The next event, or nullopt if none came within `timeout`.
  std::optional<ControlEvent> wait(std::chrono::milliseconds timeout);
  // SWITCHOVER. False if it certainly did not leave (the stream is already broken); true only
  // means it was handed to the transport: whether it arrived is what the answer says.
  bool switchover();
  // Tells the destination the source gives up (before SWITCHOVER only), then closes.
  void abort(const std::string& reason);
  const std::string& destination() const { return destination_; }

 private:
  ControlChannel() = default;
  void read_events();

  std::string destination_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::MigrationReceiver::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::MigrationControl, v1::MigrationEvent>> stream_;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ControlEvent> events_;
  bool writes_done_ = false;
};

// Asks the destination what became of migration `id` (protocol.md, rule 4).
Result<v1::ResolveResponse> resolve_migration(const std::string& destination, const TlsConfig& tls,
                                              const std::string& id,
                                              std::chrono::milliseconds timeout);

}  // namespace vmctl::migrate
