#include "migrate/grpc_target.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>

#include <fmt/format.h>

#include "state/stream.h"

namespace vmctl::migrate {
namespace {
constexpr size_t kChunkBytes = 1 << 20;
namespace v1 = ::vmctl::v1;

// Fault injection for the migration test suite, read from the environment of the VM process
// (inherited from vmctld). Never set in production: they corrupt what they touch.
//   VMCTL_FAULT_CORRUPT_STREAM_AT=N  flip the stream's byte at offset N
//   VMCTL_FAULT_OFFER_MAJOR=M        offer the stream as state format M.x
int64_t fault(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : -1;
}
}  // namespace

Result<std::string> GrpcMigrationTarget::destination_report() {
  auto stub = v1::Vmctl::NewStub(channel_);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::HostInfo info;
  grpc::Status s = stub->GetHostInfo(&context, v1::HostInfoRequest(), &info);
  if (!s.ok()) {
    return Error::failure(fmt::format("asking the destination {} about its host: {}", destination_,
                                      s.error_message()));
  }
  return info.report_json();
}

Result<std::unique_ptr<GrpcMigrationTarget>> GrpcMigrationTarget::connect(
    const std::string& destination, const TlsConfig& tls, const std::string& vm_name) {
  std::unique_ptr<GrpcMigrationTarget> t(new GrpcMigrationTarget());
  t->destination_ = destination;
  t->channel_ = TRY(make_channel(destination, tls));
  t->stub_ = v1::MigrationReceiver::NewStub(t->channel_);
  t->context_.set_wait_for_ready(false);
  t->stream_ = t->stub_->Receive(&t->context_);
  v1::MigrationChunk offer;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  offer.mutable_offer()->set_vm_name(vm_name);
  offer.mutable_offer()->set_source(host);
  int64_t fake_major = fault("VMCTL_FAULT_OFFER_MAJOR");
  offer.mutable_offer()->set_format_major(fake_major >= 0 ? static_cast<uint32_t>(fake_major)
                                                          : state::format_major());
  offer.mutable_offer()->set_format_minor(state::format_minor());
  v1::MigrationEvent answer;
  if (!t->stream_->Write(offer) || !t->stream_->Read(&answer)) {
    grpc::Status status = t->stream_->Finish();
    return Error::user(fmt::format("cannot reach the destination vmctld at {}: {}", destination,
                                   status.error_message()));
  }
  if (answer.kind() != v1::MigrationEvent::ACCEPTED) {
    t->stream_->WritesDone();
    (void)t->stream_->Finish();
    return Error::user(
        fmt::format("the destination {} refused the VM: {}", destination, answer.error()));
  }
  t->corrupt_at_ = fault("VMCTL_FAULT_CORRUPT_STREAM_AT");
  t->reader_ = std::thread([p = t.get()] { p->read_events(); });
  return t;
}

GrpcMigrationTarget::~GrpcMigrationTarget() {
  if (!committed_) context_.TryCancel();
  if (reader_.joinable()) reader_.join();
}

void GrpcMigrationTarget::read_events() {
  v1::MigrationEvent event;
  while (stream_->Read(&event)) {
    std::lock_guard lock(mu_);
    if (event.kind() == v1::MigrationEvent::RESTORED) restored_ms_ = event.restore_ms();
    if (event.kind() == v1::MigrationEvent::FAILED) failed_ = event.error();
    cv_.notify_all();
  }
  std::lock_guard lock(mu_);
  ended_ = true;
  cv_.notify_all();
}

Error GrpcMigrationTarget::failure(const std::string& what) {
  std::lock_guard lock(mu_);
  if (failed_)
    return Error::user(fmt::format("the destination {} failed: {}", destination_, *failed_));
  return Error::failure(fmt::format("{} (destination {})", what, destination_));
}

Status GrpcMigrationTarget::write(const void* data, size_t len) {
  const auto* p = static_cast<const char*>(data);
  while (len > 0) {
    size_t n = std::min(len, kChunkBytes - buffer_.size());
    size_t at = buffer_.size();
    buffer_.append(p, n);
    if (corrupt_at_ >= 0 && static_cast<uint64_t>(corrupt_at_) >= streamed_ &&
        static_cast<uint64_t>(corrupt_at_) < streamed_ + n) {
      buffer_[at + (corrupt_at_ - streamed_)] ^= 0x5a;
    }
    streamed_ += n;
    p += n;
    len -= n;
    if (buffer_.size() == kChunkBytes) TRY(send_chunk());
  }
  return ok_status();
}

Status GrpcMigrationTarget::send_chunk() {
  bool gone;
  {
    std::lock_guard lock(mu_);
    gone = failed_.has_value() || ended_;
  }
  // Stop sending at once when the destination has given up.
  if (gone) return failure("the destination ended the stream");
  v1::MigrationChunk chunk;
  chunk.set_records(std::move(buffer_));
  buffer_.clear();
  if (!stream_->Write(chunk)) return failure("the migration stream broke");
  return ok_status();
}

Status GrpcMigrationTarget::flush() {
  if (buffer_.empty()) return ok_status();
  return send_chunk();
}

Result<double> GrpcMigrationTarget::restored(double timeout_seconds) {
  std::unique_lock lock(mu_);
  bool answered = cv_.wait_for(lock, std::chrono::duration<double>(timeout_seconds),
                               [&] { return restored_ms_ || failed_ || ended_; });
  if (restored_ms_) return *restored_ms_;
  if (failed_) {
    return Error::user(fmt::format("the destination {} failed: {}", destination_, *failed_));
  }
  if (!answered) {
    return Error::failure(fmt::format("the destination {} did not confirm within {:.0f} s",
                                      destination_, timeout_seconds));
  }
  return Error::failure(
      fmt::format("the destination {} ended the stream before confirming", destination_));
}

void GrpcMigrationTarget::commit() {
  committed_ = true;
  v1::MigrationChunk chunk;
  chunk.set_commit(true);
  stream_->Write(chunk);
  stream_->WritesDone();
  if (reader_.joinable()) reader_.join();
  (void)stream_->Finish();
}

}  // namespace vmctl::migrate
