// Hostile and broken input to a migration, and the refusals before it starts: crafted streams
// from a source the test writes itself (crafted_source.h), a real source made to misbehave by
// fault injection, policies that refuse (CPU features, names, limits), and TLS. Each case checks
// the processes on both hosts: the source copy runs on, intact, and the destination holds none.
#include <signal.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <fstream>
#include <future>
#include <thread>

#include <capnp/message.h>
#include <fmt/format.h>

#include "migrate/channel.h"
#include "migrate/data_connection.h"
#include "migrate/data_hello.h"
#include "proto/names.h"
#include "tests/integration/crafted_source.h"
#include "tests/integration/cross_host.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;
namespace ps = proto::state;
constexpr uint64_t kMiB = 1 << 20;

class CraftedStream : public CrossHost {
 protected:
  const std::string vm = "crafted";
  CraftedMigration how() {
    CraftedMigration h;
    h.vm = vm;
    return h;
  }
  // Exactly one copy, on B, running (the golden guest is a heartbeat, not a dirtier).
  void expect_runs_on_b() {
    std::vector<GuestCopy> c;
    for (int i = 0; i < 200; ++i) {
      c = guest_copies(roots(), vm);
      if (c.size() == 1 && c[0].answers && !c[0].paused) break;
      std::this_thread::sleep_for(50ms);
    }
    ASSERT_EQ(c.size(), 1u) << describe(c);
    EXPECT_EQ(c[0].root, hosts->root_b());
    EXPECT_TRUE(c[0].answers && !c[0].paused) << c[0].describe();
    EXPECT_TRUE(B().wait_state(vm, v1::VM_STATE_RUNNING, 10s));
    EXPECT_TRUE(B().wait_console(vm, "^HB [0-9]+", 30s)) << B().console(vm);
  }
};

TEST_F(CraftedStream, UnmodifiedStreamRunsOnlyAfterTheSwitchover) {
  CraftedMigration h = how();
  h.switchover = false;
  CraftedOutcome o = send_crafted(B(), h, golden_stream(copy_record));
  EXPECT_TRUE(o.ready) << o.refused << o.failed;
  // READY without SWITCHOVER: the copy waited paused, and went when the source went away.
  expect_no_copy(vm);
  EXPECT_TRUE(B().wait_state(vm, v1::VM_STATE_UNSPECIFIED, 10s)) << "B still holds the name";
  o = send_crafted(B(), how(), golden_stream(copy_record));
  EXPECT_TRUE(o.resumed) << o.refused << o.failed;
  expect_runs_on_b();
  stop_vm(vm);
}

TEST_F(CraftedStream, NewerMinorRecordsAreRead) {
  std::string bytes = reframe(golden_stream(copy_record), [](state::FrameHeader& f) {
    f.minor = static_cast<uint8_t>(state::format_minor() + 1);
  });
  CraftedOutcome o = send_crafted(B(), how(), bytes);
  EXPECT_TRUE(o.resumed) << o.refused << o.failed;
  expect_runs_on_b();
  stop_vm(vm);
}

TEST_F(CraftedStream, NewerMajorRecordsAreRefused) {
  std::string bytes = reframe(golden_stream(copy_record), [](state::FrameHeader& f) {
    f.major = static_cast<uint8_t>(state::format_major() + 1);
  });
  CraftedOutcome o = send_crafted(B(), how(), bytes);
  EXPECT_NE(o.failed.find("upgrade vmctl"), std::string::npos) << o.failed;
  expect_no_copy(vm);
}

TEST_F(CraftedStream, OlderMajorRecordsAreRefused) {
  std::string bytes = reframe(golden_stream(copy_record), [](state::FrameHeader& f) {
    f.major = static_cast<uint8_t>(state::format_major() - 1);
  });
  CraftedOutcome o = send_crafted(B(), how(), bytes);
  EXPECT_NE(o.failed.find("no longer reads"), std::string::npos) << o.failed;
  expect_no_copy(vm);
}

TEST_F(CraftedStream, NewerMajorOfferIsRefusedBeforeAnyData) {
  CraftedMigration h = how();
  h.format_major = state::format_major() + 1;
  CraftedOutcome o = send_crafted(B(), h, golden_stream(copy_record));
  EXPECT_NE(o.refused.find("matching vmctl versions"), std::string::npos) << o.refused;
  expect_no_copy(vm);
}

TEST_F(CraftedStream, TruncatedStreamIsRefused) {
  std::string bytes = golden_stream(copy_record);
  CraftedOutcome o = send_crafted(B(), how(), bytes.substr(0, bytes.size() / 2));
  EXPECT_NE(o.failed.find("truncated"), std::string::npos) << o.failed;
  expect_no_copy(vm);
}

TEST_F(CraftedStream, PageOutsideGuestRamIsRefused) {
  std::string bytes = golden_stream([](state::Record& record, state::RecordWriter& writer) {
    copy_record(record, writer);
    if (record.type != ps::RecordType::HEADER) return;
    capnp::MallocMessageBuilder b;
    auto pages = b.initRoot<ps::MemoryPages>();
    auto run = pages.initRuns(1)[0];
    run.setFirstPage((64ull << 30) / 4096);  // 64 GiB: far outside a 32 MiB guest
    run.setCount(1);
    pages.initData(4096);
    ASSERT_TRUE(writer.write(ps::RecordType::MEMORY_PAGES, b).ok());
  });
  CraftedOutcome o = send_crafted(B(), how(), bytes);
  EXPECT_NE(o.failed.find("outside guest RAM"), std::string::npos) << o.failed;
  expect_no_copy(vm);
}

TEST_F(CraftedStream, MissingCpuFeatureIsRefused) {
  // A feature this host's CPU lacks, named as restore names it.
  struct Candidate {
    const char* cpuinfo;
    unsigned leaf, subleaf, bit;
    char reg;
  };
  std::string flags;
  {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("flags", 0) == 0) {
        flags = line + " ";
        break;
      }
    }
  }
  std::optional<Candidate> absent;
  for (Candidate c :
       {Candidate{"amx_tile", 7, 0, 24, 'd'}, Candidate{"avx512_fp16", 7, 0, 23, 'd'},
        Candidate{"avx512_vp2intersect", 7, 0, 8, 'd'}, Candidate{"avx512f", 7, 0, 16, 'b'}}) {
    if (flags.find(std::string(" ") + c.cpuinfo + " ") == std::string::npos) {
      absent = c;
      break;
    }
  }
  ASSERT_TRUE(absent) << "this host has every candidate feature; extend the list";
  std::string bytes = golden_stream([&](state::Record& record, state::RecordWriter& writer) {
    if (record.type != ps::RecordType::VCPU) return copy_record(record, writer);
    auto msg = record.message();
    capnp::MallocMessageBuilder b;
    b.setRoot(msg->getRoot<ps::Vcpu>());
    for (auto e : b.getRoot<ps::Vcpu>().getCpuid()) {
      if (e.getFunction() != absent->leaf || e.getIndex() != absent->subleaf) continue;
      uint32_t bit = 1u << absent->bit;
      if (absent->reg == 'b') e.setEbx(e.getEbx() | bit);
      if (absent->reg == 'd') e.setEdx(e.getEdx() | bit);
    }
    ASSERT_TRUE(writer.write(record.type, b).ok());
  });
  CraftedOutcome o = send_crafted(B(), how(), bytes);
  EXPECT_NE(o.failed.find("lacks features"), std::string::npos) << o.failed;
  EXPECT_NE(o.failed.find(absent->cpuinfo), std::string::npos) << o.failed;
  expect_no_copy(vm);
}

TEST_F(CraftedStream, DataStreamWithAForeignMigrationIdIsRefused) {
  CraftedMigration h = how();
  h.join_id = "0123456789abcdef0123456789abcdef";
  CraftedOutcome o = send_crafted(B(), h, golden_stream(copy_record));
  EXPECT_NE(o.refused.find("no such migration here, or the wrong secret"), std::string::npos)
      << o.refused;
  expect_no_copy(vm);
}

TEST_F(CraftedStream, DataStreamWithTheWrongSecretIsRefused) {
  CraftedMigration h = how();
  h.wrong_secret = true;
  h.streams = 2;
  CraftedOutcome o = send_crafted(B(), h, golden_stream(copy_record));
  EXPECT_NE(o.refused.find("no such migration here, or the wrong secret"), std::string::npos)
      << o.refused;
  expect_no_copy(vm);
}

// The stream must describe the machine the offer announced (the destination built that one).
TEST_F(CraftedStream, StreamOfAnotherMachineThanOfferedIsRefused) {
  CraftedMigration h = how();
  h.memory_bytes = 64ull << 20;
  CraftedOutcome o = send_crafted(B(), h, golden_stream(copy_record));
  EXPECT_NE(o.failed.find("but 64 MiB and 1 vCPUs were offered"), std::string::npos) << o.failed;
  expect_no_copy(vm);
}

TEST_F(CraftedStream, GuestLargerThanTheHostIsRefused) {
  CraftedMigration h = how();
  h.memory_bytes = 1ull << 50;  // 1 PiB
  CraftedOutcome o = send_crafted(B(), h, "");
  EXPECT_NE(o.refused.find("this host takes at most"), std::string::npos) << o.refused;
  expect_no_copy(vm);
}

// More incoming migrations than the daemon takes at once: the next offer is refused, with the
// limit named, until one ends.
TEST_F(CraftedStream, IncomingMigrationsAreLimited) {
  auto stub = v1::MigrationReceiver::NewStub(B().channel());
  struct Open {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::MigrationControl, v1::MigrationEvent>> stream;
  };
  std::vector<std::unique_ptr<Open>> open;
  std::string refusal;
  for (int i = 0; i < 6 && refusal.empty(); ++i) {
    auto o = std::make_unique<Open>();
    o->stream = stub->Control(&o->context);
    v1::MigrationControl offer;
    offer.mutable_offer()->set_vm_name("limit" + std::to_string(i));
    offer.mutable_offer()->set_format_major(state::format_major());
    offer.mutable_offer()->set_migration_id(fmt::format("{:032x}", 0xabc000 + i));
    offer.mutable_offer()->set_stream_count(1);
    offer.mutable_offer()->set_memory_bytes(32 << 20);
    offer.mutable_offer()->set_vcpus(1);
    v1::MigrationEvent e;
    ASSERT_TRUE(o->stream->Write(offer) && o->stream->Read(&e));
    if (e.kind() == v1::MigrationEvent::FAILED) refusal = e.error();
    open.push_back(std::move(o));
  }
  EXPECT_NE(refusal.find("its limit"), std::string::npos) << refusal;
  EXPECT_EQ(open.size(), 5u);
  for (auto& o : open) o->context.TryCancel();
  for (auto& o : open) o->stream->Finish();
  for (int i = 0; i < 5; ++i) expect_no_copy("limit" + std::to_string(i));
}

// Two data connections that both claim to be connection 0: the second is refused, with why.
TEST_F(CraftedStream, RepeatedDataConnectionIndexIsRefused) {
  CraftedMigration h = how();
  h.streams = 2;
  h.data_index = 0;
  CraftedOutcome o = send_crafted(B(), h, golden_stream(copy_record));
  EXPECT_NE(o.refused.find("data connection 0 has joined already"), std::string::npos) << o.refused;
  expect_no_copy(vm);
}

// Whoever reaches the data socket without a hello (a port scanner, a confused client) is refused
// with a reason, and the migration's own connections still join after it.
TEST_F(CraftedStream, StrangerOnTheDataSocketIsRefusedAndTheMigrationGoesOn) {
  CraftedMigration h = how();
  std::string stranger_heard;
  h.before_data = [&](const std::string& endpoint) {
    auto conn = migrate::DataConnection::connect(endpoint, nullptr, std::chrono::seconds(10));
    ASSERT_TRUE(conn.ok()) << conn.error().message();
    ASSERT_TRUE((*conn)->write_line("GET / HTTP/1.1").ok());
    auto line = (*conn)->read_line(migrate::kHelloMaxBytes);
    stranger_heard = line.ok() ? *line : line.error().message();
  };
  CraftedOutcome o = send_crafted(B(), h, golden_stream(copy_record));
  EXPECT_EQ(stranger_heard.rfind("REFUSED ", 0), 0u) << stranger_heard;
  EXPECT_TRUE(o.resumed) << o.refused << o.failed;
  expect_runs_on_b();
  stop_vm(vm);
}

// ------------------------------------------------------------------ a real source misbehaves

class BrokenSource : public CrossHost {
 protected:
  const std::string name = "broken";
  void start() {
    ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 128 * kMiB, "mib=32 rate=16 hb_ms=50"));
  }
  MigrationResult migrate_to_b(unsigned streams = 3) {
    v1::MigrateRequest r = request(name, hosts->addr_b);
    r.set_streams(streams);
    return migrate(A(), r);
  }
  void expect_refused(const MigrationResult& r, const std::string& why) {
    ASSERT_FALSE(r.status.ok());
    EXPECT_NE(r.status.error_message().find(why), std::string::npos) << r.status.error_message();
    expect_one_copy(name, hosts->root_a());
    stop_vm(name);
  }
};

// The byte lies inside every stream of this guest: the migration starts once the dirtier has
// written 1 MiB.
TEST_F(BrokenSource, CorruptChunkOnOneOfSeveralStreams) {
  with_faults(A(), {"VMCTL_FAULT_CORRUPT_STREAM_AT=1000000"});
  start();
  expect_refused(migrate_to_b(), "checksum mismatch");
}

TEST_F(BrokenSource, DuplicatedChunk) {
  with_faults(A(), {"VMCTL_FAULT_DUPLICATE_CHUNK=2"});
  start();
  expect_refused(migrate_to_b(), "a record is duplicated");
}

TEST_F(BrokenSource, MissingChunk) {
  with_faults(A(), {"VMCTL_FAULT_DROP_CHUNK=1"});
  start();
  expect_refused(migrate_to_b(), "missing");
}

TEST_F(BrokenSource, ParallelStreamJoinsAForeignMigration) {
  with_faults(A(), {"VMCTL_FAULT_JOIN_ID=0123456789abcdef0123456789abcdef"});
  start();
  expect_refused(migrate_to_b(), "no such migration here, or the wrong secret");
}

TEST_F(BrokenSource, NewerMajorOfferIsRefused) {
  with_faults(A(), {"VMCTL_FAULT_OFFER_MAJOR=99"});
  start();
  expect_refused(migrate_to_b(1), "99.");
}

// ------------------------------------------------------------------ refused before it starts

class Refusals : public CrossHost {
 protected:
  const std::string name = "refused";
};

TEST_F(Refusals, CpuFeatureTheDestinationLacks) {
  // B's KVM "lacks" SSE2, which every x86-64 guest has: the source's own check says so.
  with_faults(B(), {"VMCTL_FAULT_HOST_REPORT_WITHOUT=sse2"});
  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 128 * kMiB, "mib=32 rate=16 hb_ms=50"));
  MigrationResult r = migrate(A(), request(name, hosts->addr_b));
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.error_message().find("lacks sse2"), std::string::npos)
      << r.status.error_message();
  EXPECT_NE(r.status.error_message().find("before any memory was sent"), std::string::npos);
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(Refusals, GuestThatDoesNotConverge) {
  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 256 * kMiB, "mib=192 rate=0 hb_ms=50"));
  v1::MigrateRequest req = request(name, hosts->addr_b);
  req.set_downtime_ms(1);
  // One round: the decision comes after round 0 (192 MiB), long enough that the guest dirties
  // more than 1 ms of link even when a busy machine starves its vCPU for part of it.
  req.set_max_rounds(1);
  MigrationResult r = migrate(A(), req);
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.error_message().find("did not converge"), std::string::npos)
      << r.status.error_message();
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

TEST_F(Refusals, NameTakenAtTheDestination) {
  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 128 * kMiB, "mib=32 rate=16 hb_ms=50"));
  ASSERT_TRUE(B().create(name, guest_path("heartbeat.elf"), "hb_ms=100", 64 * kMiB, 1).ok());
  MigrationResult r = migrate(A(), request(name, hosts->addr_b));
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.error_message().find("exists on this host already"), std::string::npos)
      << r.status.error_message();
  // The dirtier runs on A, B's own VM of that name runs on B, untouched.
  std::vector<GuestCopy> a = guest_copies({hosts->root_a()}, name);
  ASSERT_EQ(a.size(), 1u) << describe(a);
  EXPECT_EQ(verify_dirtier(a[0], 60s), "");
  std::vector<GuestCopy> b = guest_copies({hosts->root_b()}, name);
  ASSERT_EQ(b.size(), 1u) << describe(b);
  EXPECT_TRUE(b[0].answers && !b[0].paused);
  EXPECT_TRUE(B().wait_console(name, "^HB [0-9]+", 30s));
  stop_vm(name);
}

TEST_F(Refusals, TwoMigrationsOfOneVmAtOnce) {
  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 512 * kMiB, "mib=448 rate=0 hb_ms=50"));
  v1::MigrateRequest slow = request(name, hosts->addr_b);
  slow.set_downtime_ms(1);
  slow.set_max_rounds(100000);
  std::promise<void> started;
  bool signalled = false;
  auto first = std::async(std::launch::async, [&] {
    return migrate(A(), slow, [&](const auto&) {
      if (!signalled) {
        signalled = true;
        started.set_value();
      }
    });
  });
  started.get_future().wait();
  MigrationResult second = migrate(A(), request(name, hosts->addr_b));
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << second.status.error_message();
  EXPECT_NE(second.status.error_message().find("being migrated already"), std::string::npos);
  EXPECT_TRUE(A().call(&v1::Vmctl::Stub::CancelMigration, name).ok());
  EXPECT_EQ(first.get().status.error_code(), grpc::StatusCode::CANCELLED);
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

// Only peers with a certificate of the daemons' CA get in: without one, with one from another
// CA, or in plaintext, the destination sends nothing back (not even HTTP/2's SETTINGS), and a
// migration from a daemon holding such a certificate goes nowhere.
TEST_F(Refusals, TlsWithoutTheRightCertificateIsRefused) {
  std::string other = hosts->dir->path() + "/other-ca";
  ASSERT_EQ(shell("bash " VMCTL_SOURCE_DIR "/scripts/make-test-certs.sh '" + other + "' " +
                  hosts->addr_a + " " + hosts->addr_b),
            0);
  const std::string preface = "printf 'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'; sleep 1";
  // Bytes B's TLS port sends back to an HTTP/2 client in A's namespace.
  auto answer_bytes = [&](const std::string& client_cert) {
    std::string out = hosts->dir->path() + "/tls-answer";
    std::string cmd = "ip netns exec " + hosts->ns_a + " bash -c \"(" + preface +
                      ") | timeout 5 openssl s_client -quiet -connect " +
                      hosts->tcp(hosts->addr_b) + " -CAfile " + hosts->tls_dir +
                      "/ca.pem -alpn h2 " + client_cert + " 2>/dev/null | wc -c > " + out + "\"";
    shell(cmd);
    std::ifstream in(out);
    long n = -1;
    in >> n;
    return n;
  };
  EXPECT_GT(
      answer_bytes("-cert " + hosts->tls_dir + "/node.pem -key " + hosts->tls_dir + "/node.key"), 0)
      << "the right certificate must get an answer (or this test proves nothing)";
  EXPECT_EQ(answer_bytes(""), 0) << "a client without a certificate got an answer";
  EXPECT_EQ(answer_bytes("-cert " + other + "/node.pem -key " + other + "/node.key"), 0)
      << "a certificate of another CA got an answer";
  std::string plain = hosts->dir->path() + "/plain-answer";
  shell("ip netns exec " + hosts->ns_a + " bash -c \"exec 3<>/dev/tcp/" + hosts->addr_b +
        "/7443; (" + preface + ") >&3; timeout 2 cat <&3 | wc -c > " + plain + "\"");
  std::ifstream plain_in(plain);
  long plain_bytes = -1;
  plain_in >> plain_bytes;
  EXPECT_EQ(plain_bytes, 0) << "the TLS port answered plaintext HTTP/2";

  // A source daemon whose certificate comes from another CA.
  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 128 * kMiB, "mib=32 rate=16 hb_ms=50"));
  A().stop();
  std::vector<std::string> flags = {
      "--listen",   hosts->tcp(hosts->addr_a), "--tls-ca",  other + "/ca.pem",
      "--tls-cert", other + "/node.pem",       "--tls-key", other + "/node.key"};
  {
    Daemon foreign_source(hosts->dir->path() + "/a", flags, hosts->in_ns(hosts->ns_a));
    MigrationResult r = migrate(foreign_source, request(name, hosts->addr_b));
    ASSERT_FALSE(r.status.ok());
    EXPECT_NE(r.status.error_message().find("cannot reach the destination"), std::string::npos)
        << r.status.error_message();
    EXPECT_EQ(guest_copies({hosts->root_b()}, name).size(), 0u);
    foreign_source.stop();
  }
  A().start();
  expect_one_copy(name, hosts->root_a());
  stop_vm(name);
}

}  // namespace
}  // namespace vmctl::testing
