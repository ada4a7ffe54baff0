#include "tests/integration/crafted_source.h"

#include <xxhash.h>

#include <cstring>
#include <random>

#include <capnp/any.h>
#include <capnp/message.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "migrate/data_connection.h"
#include "migrate/data_hello.h"

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
  // The data connections go straight to the receiving VM process (migrate/data_plane.md): this
  // test talks to the daemon over its unix socket, so the process listens on a unix socket too.
  auto endpoint = migrate::data_endpoint_for(to.address(), event.data_endpoint());
  if (!endpoint.ok()) {
    out.refused = endpoint.error().message();
    control_context.TryCancel();
    control->Finish();
    return out;
  }
  if (how.before_data) how.before_data(*endpoint);
  std::vector<std::unique_ptr<migrate::DataConnection>> lanes;
  for (unsigned i = 0; i < how.streams; ++i) {
    auto conn = migrate::DataConnection::connect(*endpoint, nullptr, std::chrono::seconds(30));
    std::string answer;
    if (conn.ok()) {
      migrate::DataHello hello;
      hello.migration_id = how.join_id.empty() ? id : how.join_id;
      hello.secret = secret;
      hello.index = i;
      hello.count = how.streams;
      hello.index = how.data_index.value_or(i);
      Status sent = (*conn)->write_line(migrate::format_hello(hello));
      auto line = sent.ok() ? (*conn)->read_line(migrate::kHelloMaxBytes)
                            : Result<std::string>(std::move(sent).error());
      answer = line.ok() ? *line : line.error().message();
    } else {
      answer = conn.error().message();
    }
    if (answer != "OK") {
      out.refused = answer;
      control_context.TryCancel();
      control->Finish();
      return out;
    }
    lanes.push_back(std::move(conn).value());
  }
  // Connection 0 carries the stream; the others (pages only) end with an empty lane trailer.
  if (!lanes.empty()) (void)lanes[0]->write(bytes.data(), bytes.size());
  for (size_t i = 1; i < lanes.size(); ++i) {
    state::MemorySink sink;
    state::RecordWriter writer(sink, state::WriterOptions{0});
    capnp::MallocMessageBuilder message;
    message.initRoot<proto::state::Trailer>();
    EXPECT_TRUE(writer.write(proto::state::RecordType::TRAILER, message).ok());
    (void)lanes[i]->write(sink.bytes().data(), sink.bytes().size());
  }
  // All is sent: the end of each connection tells the receiver a short stream is short.
  for (auto& lane : lanes) lane->shut_down();
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
