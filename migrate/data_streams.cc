#include "migrate/data_streams.h"

#include <cstdlib>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace vmctl::migrate {
namespace {

constexpr size_t kChunkBytes = 1 << 20;
// Chunks queued per stream: enough to keep every connection busy, not enough to buffer a round.
constexpr size_t kQueuedPerLane = 4;
using Clock = std::chrono::steady_clock;

// Fault injection for the migration test suite, read from the environment of the VM process
// (inherited from vmctld). Never set in production: they corrupt what they touch.
//   VMCTL_FAULT_CORRUPT_STREAM_AT=N   flip the record stream's byte at offset N
//   VMCTL_FAULT_DROP_CHUNK=K          never send chunk K
//   VMCTL_FAULT_DUPLICATE_CHUNK=K     send chunk K twice
//   VMCTL_FAULT_JOIN_ID=ID            join the last stream to migration ID instead
int64_t fault(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : -1;
}

}  // namespace

Result<std::unique_ptr<GrpcDataStreams>> GrpcDataStreams::connect(const DataStreamOptions& o) {
  if (o.streams == 0 || o.streams > 16) {
    return Error::user(fmt::format("{} data streams: use 1 to 16", o.streams));
  }
  std::unique_ptr<GrpcDataStreams> d(new GrpcDataStreams(o));
  d->corrupt_at_ = fault("VMCTL_FAULT_CORRUPT_STREAM_AT");
  d->drop_chunk_ = fault("VMCTL_FAULT_DROP_CHUNK");
  d->duplicate_chunk_ = fault("VMCTL_FAULT_DUPLICATE_CHUNK");
  d->buffer_.reserve(kChunkBytes);
  for (unsigned i = 0; i < o.streams; ++i) TRY(d->open_lane(i));
  for (size_t i = 0; i < d->lanes_.size(); ++i) {
    d->lanes_[i]->sender = std::thread([p = d.get(), i] { p->send_lane(i); });
    d->lanes_[i]->reader = std::thread([p = d.get(), i] { p->read_lane(i); });
  }
  d->watchdog_ = std::thread([p = d.get()] { p->watch_stalls(); });
  return d;
}

Status GrpcDataStreams::open_lane(unsigned index) {
  auto lane = std::make_unique<Lane>();
  // A channel argument of its own gives each stream its own connection (gRPC would otherwise
  // share one subchannel, and with it one TLS session and one thread).
  lane->channel =
      TRY(make_channel(options_.destination, options_.tls, static_cast<int>(index) + 1));
  lane->stub = v1::MigrationReceiver::NewStub(lane->channel);
  lane->stream = lane->stub->Receive(&lane->context);
  v1::MigrationChunk join;
  join.mutable_join()->set_migration_id(options_.migration_id);
  const char* foreign = std::getenv("VMCTL_FAULT_JOIN_ID");
  if (foreign && *foreign && index + 1 == options_.streams) {
    join.mutable_join()->set_migration_id(foreign);
  }
  join.mutable_join()->set_secret(options_.secret);
  join.mutable_join()->set_stream_index(index);
  join.mutable_join()->set_stream_count(options_.streams);
  v1::MigrationEvent answer;
  if (!lane->stream->Write(join) || !lane->stream->Read(&answer)) {
    grpc::Status status = lane->stream->Finish();
    return Error::failure(fmt::format("opening data stream {} of {} to {}: {}", index + 1,
                                      options_.streams, options_.destination,
                                      status.error_message()));
  }
  if (answer.kind() != v1::MigrationEvent::ACCEPTED) {
    lane->context.TryCancel();
    (void)lane->stream->Finish();
    return Error::user(fmt::format("the destination {} refused data stream {} of {}: {}",
                                   options_.destination, index + 1, options_.streams,
                                   answer.error()));
  }
  lanes_.push_back(std::move(lane));
  return ok_status();
}

GrpcDataStreams::~GrpcDataStreams() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    if (!error_) error_ = "the migration ended";
  }
  cv_.notify_all();
  for (auto& lane : lanes_) lane->context.TryCancel();
  for (auto& lane : lanes_) {
    if (lane->sender.joinable()) lane->sender.join();
    if (lane->reader.joinable()) lane->reader.join();
  }
  if (watchdog_.joinable()) watchdog_.join();
}

void GrpcDataStreams::fail(const std::string& why) {
  if (!error_) error_ = why;
  cv_.notify_all();
}

void GrpcDataStreams::abort(const std::string& why) {
  {
    std::lock_guard lock(mu_);
    fail(why);
  }
  for (auto& lane : lanes_) lane->context.TryCancel();
}

Error GrpcDataStreams::failure(const std::string& what) {
  return Error::failure(fmt::format("{} (destination {})", what, options_.destination));
}

void GrpcDataStreams::send_lane(size_t index) {
  Lane& lane = *lanes_[index];
  while (true) {
    v1::MigrationChunk chunk;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || error_ || !lane.queue.empty(); });
      if (lane.queue.empty() || error_) return;
      chunk = std::move(lane.queue.front());
      lane.queue.pop_front();
      lane.writing = true;
      lane.write_started = Clock::now();
    }
    bool ok = lane.stream->Write(chunk);
    std::lock_guard lock(mu_);
    lane.writing = false;
    --in_flight_;
    if (!ok) fail(fmt::format("data stream {} broke", index + 1));
    cv_.notify_all();
  }
}

void GrpcDataStreams::read_lane(size_t index) {
  Lane& lane = *lanes_[index];
  v1::MigrationEvent event;
  // The destination says nothing more on a data stream unless it gives up.
  while (lane.stream->Read(&event)) {
    if (event.kind() == v1::MigrationEvent::FAILED) {
      std::lock_guard lock(mu_);
      fail(fmt::format("the destination ended data stream {}: {}", index + 1, event.error()));
    }
  }
}

void GrpcDataStreams::watch_stalls() {
  std::unique_lock lock(mu_);
  while (!stopping_ && !error_) {
    cv_.wait_for(lock, std::chrono::milliseconds(200));
    bool stalled = false;
    for (auto& lane : lanes_) {
      stalled |= lane->writing && Clock::now() - lane->write_started > options_.stall_timeout;
    }
    if (stalled) {
      fail(fmt::format(
          "the destination took no data for {} s (a stalled peer)",
          std::chrono::duration_cast<std::chrono::seconds>(options_.stall_timeout).count()));
      lock.unlock();
      for (auto& lane : lanes_) lane->context.TryCancel();
      lock.lock();
    }
  }
}

Status GrpcDataStreams::write(const void* data, size_t len) {
  const auto* p = static_cast<const char*>(data);
  while (len > 0) {
    size_t n = std::min(len, kChunkBytes - buffer_.size());
    size_t at = buffer_.size();
    buffer_.append(p, n);
    if (corrupt_at_ >= 0 && static_cast<uint64_t>(corrupt_at_) >= streamed_ &&
        static_cast<uint64_t>(corrupt_at_) < streamed_ + n) {
      buffer_[at + (static_cast<uint64_t>(corrupt_at_) - streamed_)] ^= 0x5a;
    }
    streamed_ += n;
    p += n;
    len -= n;
    if (buffer_.size() == kChunkBytes) TRY(send_chunk());
  }
  return ok_status();
}

Status GrpcDataStreams::send_chunk() {
  v1::MigrationChunk chunk;
  chunk.set_sequence(sequence_);
  chunk.set_records(std::move(buffer_));
  buffer_.clear();
  buffer_.reserve(kChunkBytes);  // filled by appends: grown once, not by doubling
  const int64_t number = static_cast<int64_t>(sequence_);
  Lane& lane = *lanes_[sequence_ % lanes_.size()];
  ++sequence_;
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return lane.queue.size() < kQueuedPerLane || error_; });
  if (error_) return failure(*error_);
  if (number == drop_chunk_) return ok_status();
  if (number == duplicate_chunk_) {
    lane.queue.push_back(chunk);
    ++in_flight_;
  }
  lane.queue.push_back(std::move(chunk));
  ++in_flight_;
  cv_.notify_all();
  return ok_status();
}

Status GrpcDataStreams::flush() {
  if (!buffer_.empty()) TRY(send_chunk());
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return in_flight_ == 0 || error_; });
  if (error_) return failure(*error_);
  return ok_status();
}

Status GrpcDataStreams::finish() {
  TRY(flush());
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& lane : lanes_) {
    if (lane->sender.joinable()) lane->sender.join();
  }
  std::string problem;
  for (size_t i = 0; i < lanes_.size(); ++i) {
    Lane& lane = *lanes_[i];
    lane.stream->WritesDone();
    if (lane.reader.joinable()) lane.reader.join();
    grpc::Status status = lane.stream->Finish();
    if (!status.ok() && problem.empty()) {
      problem = fmt::format("data stream {}: {}", i + 1, status.error_message());
    }
  }
  {
    std::lock_guard lock(mu_);
    if (error_) return failure(*error_);
  }
  if (!problem.empty()) return failure(problem);
  return ok_status();
}

}  // namespace vmctl::migrate
