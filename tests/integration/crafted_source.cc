#include "tests/integration/crafted_source.h"

#include <xxhash.h>

#include <cstring>
#include <random>

#include <capnp/any.h>
#include <capnp/message.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

namespace vmctl::testing {

CraftedOutcome send_crafted(Daemon& to, const CraftedMigration& how, const std::string& bytes) {
  CraftedOutcome out;
  auto stub = v1::MigrationReceiver::NewStub(to.channel());
  grpc::ClientContext control_context;
  auto control = stub->Control(&control_context);
  std::random_device rd;
  std::string id = fmt::format("{:08x}{:08x}{:08x}{:08x}", rd(), rd(), rd(), rd());
  v1::MigrationControl offer;
  v1::MigrationOffer* o = offer.mutable_offer();
  o->set_vm_name(how.vm);
  o->set_source("crafted-test");
  o->set_format_major(how.format_major ? how.format_major : state::format_major());
  o->set_format_minor(state::format_minor());
  o->set_migration_id(id);
  o->set_stream_count(how.streams);
  o->set_memory_bytes(how.memory_bytes);
  o->set_vcpus(how.vcpus);
  v1::MigrationEvent event;
  if (!control->Write(offer) || !control->Read(&event)) {
    out.refused = control->Finish().error_message();
    return out;
  }
  if (event.kind() != v1::MigrationEvent::ACCEPTED) {
    out.refused = event.error();
    control->WritesDone();
    control->Finish();
    return out;
  }
  std::string secret = how.wrong_secret ? std::string(event.secret().size(), 'x') : event.secret();
  struct Lane {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::MigrationChunk, v1::MigrationEvent>> stream;
  };
  std::vector<std::unique_ptr<Lane>> lanes;
  for (unsigned i = 0; i < how.streams; ++i) {
    auto lane = std::make_unique<Lane>();
    lane->stream = stub->Receive(&lane->context);
    v1::MigrationChunk join;
    join.mutable_join()->set_migration_id(how.join_id.empty() ? id : how.join_id);
    join.mutable_join()->set_secret(secret);
    join.mutable_join()->set_stream_index(i);
    join.mutable_join()->set_stream_count(how.streams);
    v1::MigrationEvent answer;
    if (!lane->stream->Write(join) || !lane->stream->Read(&answer) ||
        answer.kind() != v1::MigrationEvent::ACCEPTED) {
      out.refused =
          answer.error().empty() ? lane->stream->Finish().error_message() : answer.error();
      control_context.TryCancel();
      control->Finish();
      return out;
    }
    lanes.push_back(std::move(lane));
  }
  uint64_t sequence = 0;
  for (size_t off = 0; off < bytes.size(); off += 1 << 20, ++sequence) {
    v1::MigrationChunk chunk;
    chunk.set_sequence(sequence);
    chunk.set_records(bytes.substr(off, 1 << 20));
    if (!lanes[sequence % lanes.size()]->stream->Write(chunk)) break;
  }
  for (auto& lane : lanes) {
    lane->stream->WritesDone();
    lane->stream->Finish();
  }
  while (control->Read(&event)) {
    if (event.kind() == v1::MigrationEvent::FAILED) {
      out.failed = event.error();
      break;
    }
    if (event.kind() == v1::MigrationEvent::RESTORED) {
      out.ready = true;
      if (!how.switchover) break;
      v1::MigrationControl switchover;
      switchover.mutable_switchover();
      control->Write(switchover);
    }
    if (event.kind() == v1::MigrationEvent::RESUMED) {
      out.resumed = true;
      break;
    }
  }
  control->WritesDone();
  control_context.TryCancel();
  control->Finish();
  return out;
}

void copy_record(state::Record& record, state::RecordWriter& writer) {
  auto msg = record.message();
  capnp::MallocMessageBuilder b;
  b.setRoot(msg->getRoot<capnp::AnyStruct>());
  ASSERT_TRUE(writer.write(record.type, b).ok());
}

std::string golden_stream(const std::function<void(state::Record&, state::RecordWriter&)>& edit) {
  auto source = state::FileSource::open(VMCTL_SOURCE_DIR "/tests/data/heartbeat-v1.0.snap");
  EXPECT_TRUE(source.ok());
  state::RecordReader reader(**source, "golden");
  state::MemorySink sink;
  state::RecordWriter writer(sink, state::WriterOptions{0});
  while (true) {
    auto record = reader.next();
    EXPECT_TRUE(record.ok());
    if (!record.ok() || !*record) break;
    edit(**record, writer);
  }
  return std::string(sink.bytes().begin(), sink.bytes().end());
}

std::string reframe(const std::string& stream,
                    const std::function<void(state::FrameHeader&)>& edit) {
  std::string out = stream;
  size_t at = 0;
  while (at + sizeof(state::FrameHeader) <= out.size()) {
    state::FrameHeader h;
    std::memcpy(&h, out.data() + at, sizeof h);
    size_t payload = at + sizeof h;
    edit(h);
    XXH3_state_t* sum = XXH3_createState();
    XXH3_64bits_reset(sum);
    XXH3_64bits_update(sum, &h, offsetof(state::FrameHeader, checksum));
    XXH3_64bits_update(sum, out.data() + payload, h.stored_size);
    h.checksum = XXH3_64bits_digest(sum);
    XXH3_freeState(sum);
    std::memcpy(out.data() + at, &h, sizeof h);
    at = payload + h.stored_size;
  }
  return out;
}

}  // namespace vmctl::testing
