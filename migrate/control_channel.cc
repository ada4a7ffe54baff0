#include "migrate/control_channel.h"

#include <fmt/format.h>

#include "base/text.h"

namespace vmctl::migrate {

Result<std::unique_ptr<ControlChannel>> ControlChannel::open(const std::string& destination,
                                                             const TlsConfig& tls,
                                                             const v1::MigrationOffer& offer,
                                                             std::chrono::milliseconds timeout,
                                                             ControlEvent* accepted) {
  std::unique_ptr<ControlChannel> c(new ControlChannel());
  c->destination_ = destination;
  c->channel_ = TRY(make_channel(destination, tls));
  c->stub_ = v1::MigrationReceiver::NewStub(c->channel_);
  c->stream_ = c->stub_->Control(&c->context_);
  v1::MigrationControl message;
  *message.mutable_offer() = offer;
  bool sent = c->stream_->Write(message);
  c->reader_ = std::thread([p = c.get()] { p->read_events(); });
  std::optional<ControlEvent> answer = c->wait(timeout);
  if (!answer) {
    return Error::failure(
        fmt::format("the destination vmctld at {} did not answer the offer "
                    "within {} s",
                    destination, timeout.count() / 1000));
  }
  if (answer->kind == ControlEvent::Kind::kClosed) {
    return Error::user(
        fmt::format("cannot reach the destination vmctld at {}: {}", destination,
                    sent || !answer->error.empty() ? answer->error : "the connection failed"));
  }
  if (answer->kind != ControlEvent::Kind::kAccepted) {
    return Error::user(
        fmt::format("the destination {} refused the VM: {}", destination, answer->error));
  }
  *accepted = std::move(*answer);
  return c;
}

ControlChannel::~ControlChannel() {
  context_.TryCancel();
  if (reader_.joinable()) reader_.join();
}

void ControlChannel::read_events() {
  v1::MigrationEvent event;
  while (stream_->Read(&event)) {
    ControlEvent e;
    switch (event.kind()) {
      case v1::MigrationEvent::ACCEPTED:
        e.kind = ControlEvent::Kind::kAccepted;
        e.secret = event.secret();
        e.host_report_json = event.host_report_json();
        e.data_endpoint = event.data_endpoint();
        e.data_plaintext = event.data_plaintext();
        break;
      case v1::MigrationEvent::RESTORED:
        e.kind = ControlEvent::Kind::kReady;
        e.restore_ms = event.restore_ms();
        break;
      case v1::MigrationEvent::RESUMED:
        e.kind = ControlEvent::Kind::kResumed;
        break;
      case v1::MigrationEvent::FAILED:
        e.kind = ControlEvent::Kind::kFailed;
        e.error = sanitize_text(event.error(), 2048);  // the peer's words, into logs and RPCs
        e.after_switchover = event.after_switchover();
        break;
      default:
        continue;  // a newer peer's event this version does not know
    }
    std::lock_guard lock(mu_);
    events_.push_back(std::move(e));
    cv_.notify_all();
  }
  grpc::Status status = stream_->Finish();
  ControlEvent closed;
  closed.kind = ControlEvent::Kind::kClosed;
  if (status.ok()) {
    closed.error = "the destination closed the control stream";
  } else if (status.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
    closed.error = "it refused this daemon: " + sanitize_text(status.error_message());
  } else {
    closed.error = fmt::format("the control stream broke: {}", status.error_message());
  }
  std::lock_guard lock(mu_);
  events_.push_back(std::move(closed));
  cv_.notify_all();
}

std::optional<ControlEvent> ControlChannel::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return std::nullopt;
  ControlEvent e = std::move(events_.front());
  // A closed stream stays closed: every later wait sees it too.
  if (e.kind != ControlEvent::Kind::kClosed) events_.pop_front();
  return e;
}

bool ControlChannel::switchover() {
  v1::MigrationControl message;
  message.mutable_switchover();
  return stream_->Write(message);
}

void ControlChannel::abort(const std::string& reason) {
  v1::MigrationControl message;
  message.mutable_abort()->set_reason(reason);
  (void)stream_->Write(message);
  {
    std::lock_guard lock(mu_);
    if (writes_done_) return;
    writes_done_ = true;
  }
  (void)stream_->WritesDone();
  context_.TryCancel();
}

Result<v1::ResolveResponse> resolve_migration(const std::string& destination, const TlsConfig& tls,
                                              const std::string& id,
                                              std::chrono::milliseconds timeout) {
  std::shared_ptr<grpc::Channel> channel = TRY(make_channel(destination, tls));
  auto stub = v1::MigrationReceiver::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  v1::ResolveRequest request;
  request.set_migration_id(id);
  v1::ResolveResponse response;
  grpc::Status status = stub->Resolve(&context, request, &response);
  if (!status.ok()) {
    return Error::failure(
        fmt::format("asking {} about migration {}: {}", destination, id, status.error_message()));
  }
  return response;
}

}  // namespace vmctl::migrate
