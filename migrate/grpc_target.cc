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
    const std::string& destination, const TlsConfig& tls, const std::string& vm_name,
    unsigned streams, const std::string& dirty_tracking, uint32_t dirty_ring_entries) {
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
  offer.mutable_offer()->set_dirty_tracking(dirty_tracking);
  offer.mutable_offer()->set_dirty_ring_entries(dirty_ring_entries);
  if (streams > 1) {
    offer.mutable_offer()->set_migration_id(fmt::format(
        "{}-{}-{}", host, getpid(), std::chrono::steady_clock::now().time_since_epoch().count()));
    offer.mutable_offer()->set_stream_index(0);
    offer.mutable_offer()->set_stream_count(streams);
  }
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
  if (streams > 1) TRY(t->open_lanes(streams, tls, offer.offer()));
  return t;
}

Status GrpcMigrationTarget::open_lanes(unsigned streams, const TlsConfig& tls,
                                       const v1_offer_t& primary_offer) {
  for (unsigned i = 0; i < streams; ++i) {
    auto lane = std::make_unique<Lane>();
    if (i > 0) {
      // A channel argument of its own gives each lane its own connection (gRPC would otherwise
      // share one subchannel, and with it one TLS session and one thread).
      lane->channel = TRY(make_channel(destination_, tls, static_cast<int>(i)));
      lane->stub = v1::MigrationReceiver::NewStub(lane->channel);
      lane->stream = lane->stub->Receive(&lane->context);
      v1::MigrationChunk offer;
      *offer.mutable_offer() = primary_offer;
      offer.mutable_offer()->set_stream_index(i);
      v1::MigrationEvent answer;
      if (!lane->stream->Write(offer) || !lane->stream->Read(&answer) ||
          answer.kind() != v1::MigrationEvent::ACCEPTED) {
        return Error::failure(fmt::format("opening parallel stream {} of {} to {}: {}", i + 1,
                                          streams, destination_,
                                          answer.error().empty() ? "refused" : answer.error()));
      }
    }
    lanes_.push_back(std::move(lane));
  }
  for (size_t i = 0; i < lanes_.size(); ++i) {
    lanes_[i]->sender = std::thread([this, i] { send_lane(i); });
  }
  return ok_status();
}

void GrpcMigrationTarget::send_lane(size_t index) {
  Lane& lane = *lanes_[index];
  auto& stream = index == 0 ? stream_ : lane.stream;
  while (true) {
    v1::MigrationChunk chunk;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return lanes_stop_ || !lane.queue.empty(); });
      if (lane.queue.empty()) return;
      chunk = std::move(lane.queue.front());
      lane.queue.pop_front();
    }
    bool ok = stream->Write(chunk);
    std::lock_guard lock(mu_);
    --in_flight_;
    if (!ok && lane_error_.empty()) {
      lane_error_ = fmt::format("parallel stream {} broke", index + 1);
    }
    cv_.notify_all();
  }
}

Status GrpcMigrationTarget::drain() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return in_flight_ == 0 || !lane_error_.empty() || failed_ || ended_; });
  if (in_flight_ != 0 || !lane_error_.empty()) {
    lock.unlock();
    return failure(lane_error_.empty() ? "the destination ended the stream" : lane_error_);
  }
  return ok_status();
}

GrpcMigrationTarget::~GrpcMigrationTarget() {
  if (!committed_) {
    context_.TryCancel();
    for (auto& lane : lanes_) {
      if (lane->stream) lane->context.TryCancel();
    }
  }
  {
    std::lock_guard lock(mu_);
    lanes_stop_ = true;
    cv_.notify_all();
  }
  for (auto& lane : lanes_) {
    if (lane->sender.joinable()) lane->sender.join();
  }
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
  buffer_.reserve(kChunkBytes);  // filled by appends: grown once, not by doubling
  if (lanes_.empty()) {
    if (!stream_->Write(chunk)) return failure("the migration stream broke");
    return ok_status();
  }
  chunk.set_sequence(sequence_);
  Lane& lane = *lanes_[sequence_ % lanes_.size()];
  ++sequence_;
  std::unique_lock lock(mu_);
  // A few chunks queued per lane keep every connection busy without buffering a round in memory.
  cv_.wait(lock,
           [&] { return lane.queue.size() < 4 || !lane_error_.empty() || failed_ || ended_; });
  if (!lane_error_.empty() || failed_ || ended_) {
    std::string why = lane_error_;
    lock.unlock();
    return failure(why.empty() ? "the destination ended the stream" : why);
  }
  lane.queue.push_back(std::move(chunk));
  ++in_flight_;
  cv_.notify_all();
  return ok_status();
}

Status GrpcMigrationTarget::flush() {
  if (!buffer_.empty()) TRY(send_chunk());
  return lanes_.empty() ? ok_status() : drain();
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
  {
    std::lock_guard lock(mu_);
    lanes_stop_ = true;
    cv_.notify_all();
  }
  for (auto& lane : lanes_) {
    if (lane->sender.joinable()) lane->sender.join();
    if (lane->stream) {
      lane->stream->WritesDone();
      (void)lane->stream->Finish();
    }
  }
  v1::MigrationChunk chunk;
  chunk.set_commit(true);
  stream_->Write(chunk);
  stream_->WritesDone();
  if (reader_.joinable()) reader_.join();
  (void)stream_->Finish();
}

}  // namespace vmctl::migrate
