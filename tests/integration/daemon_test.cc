// vmctld end to end: a real daemon on a unix socket, real VM processes, real gRPC.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/sync_stream.h>
#include <signal.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <future>

#include <fstream>

#include "tests/integration/daemon_fixture.h"
#include "tests/integration/guest_copies.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kMiB = 1 << 20;

class DaemonTest : public ::testing::Test {
 protected:
  ScratchDir dir_{"daemon"};
};

TEST_F(DaemonTest, LifecycleSnapshotAndRestoreOverGrpc) {
  Daemon d(dir_.path());
  v1::VmInfo info;
  ASSERT_TRUE(d.create("hb", "", "hb_ms=50", 64 * kMiB, 1, &info).ok()) << d.log();
  EXPECT_EQ(info.state(), v1::VM_STATE_RUNNING);
  EXPECT_GT(info.pid(), 0);
  ASSERT_TRUE(d.wait_console("hb", "^HB 3\\b", 30s)) << d.console("hb");

  EXPECT_TRUE(d.call(&v1::Vmctl::Stub::PauseVm, "hb", &info).ok());
  EXPECT_EQ(info.state(), v1::VM_STATE_PAUSED);
  EXPECT_TRUE(d.call(&v1::Vmctl::Stub::ResumeVm, "hb", &info).ok());
  EXPECT_EQ(info.state(), v1::VM_STATE_RUNNING);

  info = d.get("hb");
  ASSERT_EQ(info.vcpu_stats_size(), 1) << "GetVm carries per-vCPU exit statistics";
  EXPECT_GT(info.vcpu_stats(0).counters().at("exits"), 0u);

  std::string snap = dir_.path() + "/hb.snap";
  {
    grpc::ClientContext context;
    v1::SnapshotRequest request;
    request.set_name("hb");
    request.set_path(snap);
    request.set_compression(-1);
    v1::SnapshotResponse response;
    grpc::Status s = d.stub().Snapshot(&context, request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(response.snapshot_id().size(), 32u);
  }
  int at_snapshot = std::stoi(d.wait_console("hb", "^HB [0-9]+", 1s)->substr(3));
  EXPECT_TRUE(d.call(&v1::Vmctl::Stub::StopVm, "hb", &info).ok());
  EXPECT_EQ(info.state(), v1::VM_STATE_STOPPED);

  {
    grpc::ClientContext context;
    v1::RestoreRequest request;
    request.set_name("hb2");
    request.add_files(snap);
    grpc::Status s = d.stub().Restore(&context, request, &info);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(info.config().memory_bytes(), 64 * kMiB) << "the shape comes from the snapshot";
  }
  auto first = d.wait_console("hb2", "^HB [0-9]+", 30s);
  ASSERT_TRUE(first) << d.console("hb2");
  EXPECT_GE(std::stoi(first->substr(3)), at_snapshot) << "continues, does not restart";

  grpc::ClientContext context;
  v1::ListVmsResponse list;
  ASSERT_TRUE(d.stub().ListVms(&context, v1::ListVmsRequest(), &list).ok());
  EXPECT_EQ(list.vms_size(), 2);

  EXPECT_TRUE(d.call(&v1::Vmctl::Stub::StopVm, "hb2").ok());
  EXPECT_TRUE(d.call(&v1::Vmctl::Stub::DeleteVm, "hb").ok());
  EXPECT_TRUE(d.call(&v1::Vmctl::Stub::DeleteVm, "hb2").ok());
  grpc::Status missing;
  d.get("hb", &missing);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(DaemonTest, ErrorsMapToStatusCodesWithClearMessages) {
  Daemon d(dir_.path());
  EXPECT_EQ(d.create("bad name!", "", "", 64 * kMiB, 1).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::Status s = d.create("k", "/nonexistent/kernel", "", 64 * kMiB, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("/nonexistent/kernel"), std::string::npos);
  EXPECT_EQ(d.call(&v1::Vmctl::Stub::StartVm, "nope").error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(d.create("a", "", "", 64 * kMiB, 1).ok());
  EXPECT_EQ(d.create("a", "", "", 64 * kMiB, 1).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  s = d.call(&v1::Vmctl::Stub::DeleteVm, "a");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("stop it first"), std::string::npos) << s.error_message();
  // A VM whose guest cannot boot fails cleanly and says why.
  std::string junk = dir_.path() + "/junk.bin";
  shell("head -c 4096 /dev/urandom > '" + junk + "'");
  v1::VmInfo info;
  s = d.create("j", junk, "", 64 * kMiB, 1, &info);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.error_message().find("not a bootable kernel"), std::string::npos)
      << s.error_message();
  d.call(&v1::Vmctl::Stub::StopVm, "a");
}

TEST_F(DaemonTest, KilledVmDoesNotTakeDownTheDaemonOrOtherVms) {
  Daemon d(dir_.path());
  v1::VmInfo victim, other;
  ASSERT_TRUE(d.create("victim", "", "hb_ms=50", 64 * kMiB, 1, &victim).ok());
  ASSERT_TRUE(d.create("other", "", "hb_ms=50", 64 * kMiB, 1, &other).ok());
  ASSERT_EQ(kill(victim.pid(), SIGKILL), 0);
  ASSERT_TRUE(d.wait_state("victim", v1::VM_STATE_FAILED, 10s));
  EXPECT_NE(d.get("victim").error().find("signal 9"), std::string::npos) << d.get("victim").error();
  EXPECT_EQ(d.get("other").state(), v1::VM_STATE_RUNNING);
  ASSERT_TRUE(d.wait_console("other", "^HB 5\\b", 30s));
  // A failed VM can be started again.
  EXPECT_TRUE(d.call(&v1::Vmctl::Stub::StartVm, "victim").ok());
  EXPECT_TRUE(d.wait_console("victim", "^HB 2\\b", 30s));
  d.call(&v1::Vmctl::Stub::StopVm, "victim");
  d.call(&v1::Vmctl::Stub::StopVm, "other");
}

// A host that runs guests of at most --max-guest-memory refuses bigger ones, whether they are
// created, restored or (stream_faults_test.cc) migrated in, with one line naming both sizes.
TEST_F(DaemonTest, GuestsLargerThanTheHostsLimitAreRefused) {
  std::string snap = dir_.path() + "/big.snap";
  {
    mkdir((dir_.path() + "/roomy").c_str(), 0700);
    Daemon roomy(dir_.path() + "/roomy");
    ASSERT_TRUE(roomy.create("big", "", "hb_ms=50", 128 * kMiB, 1).ok());
    grpc::ClientContext context;
    v1::SnapshotRequest request;
    request.set_name("big");
    request.set_path(snap);
    v1::SnapshotResponse response;
    ASSERT_TRUE(roomy.stub().Snapshot(&context, request, &response).ok());
    roomy.stop_vms();
  }
  Daemon d(dir_.path(), {"--max-guest-memory", "64M"});
  v1::VmInfo info;
  grpc::Status created = d.create("big", "", "hb_ms=50", 128 * kMiB, 1, &info);
  EXPECT_EQ(created.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(created.error_message().find("at most 64 MiB"), std::string::npos)
      << created.error_message();
  EXPECT_TRUE(d.create("small", "", "hb_ms=50", 64 * kMiB, 1).ok());
  grpc::ClientContext context;
  v1::RestoreRequest restore;
  restore.set_name("restored");
  restore.add_files(snap);
  grpc::Status restored = d.stub().Restore(&context, restore, &info);
  EXPECT_FALSE(restored.ok());
  EXPECT_NE(restored.error_message().find("allows a guest"), std::string::npos)
      << restored.error_message();
  EXPECT_TRUE(guest_copies({dir_.path() + "/state"}, "restored").empty());
  d.stop_vms();
}

// A VM process that stops answering (here: stopped with SIGSTOP) delays the calls about it, never
// the daemon's other calls: the daemon holds no lock of its own while it waits for a VM.
TEST_F(DaemonTest, ASilentVmProcessDelaysOnlyItsOwnCalls) {
  Daemon d(dir_.path());
  v1::VmInfo silent, other;
  ASSERT_TRUE(d.create("silent", "", "hb_ms=50", 64 * kMiB, 1, &silent).ok());
  ASSERT_TRUE(d.create("other", "", "hb_ms=50", 64 * kMiB, 1, &other).ok());
  ASSERT_EQ(kill(silent.pid(), SIGSTOP), 0);
  auto stuck = std::async(std::launch::async, [&] {
    return d.call(&v1::Vmctl::Stub::PauseVm, "silent");  // waits for the silent process
  });
  std::this_thread::sleep_for(300ms);
  ASSERT_EQ(stuck.wait_for(0s), std::future_status::timeout) << "the pause did not wait at all";
  // Meanwhile everything else is answered (each call's own deadline: a few seconds).
  auto quick = [&](auto&& call) {
    auto f = std::async(std::launch::async, call);
    return f.wait_for(3s) == std::future_status::ready && f.get();
  };
  EXPECT_TRUE(quick([&] { return d.call(&v1::Vmctl::Stub::PauseVm, "other").ok(); }));
  EXPECT_TRUE(quick([&] { return d.call(&v1::Vmctl::Stub::ResumeVm, "other").ok(); }));
  EXPECT_TRUE(quick([&] {
    grpc::Status s;
    d.get("silent", &s);  // its record comes, without the stats its process would give
    return s.ok();
  }));
  EXPECT_TRUE(quick([&] {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 3s);
    v1::ListVmsResponse r;
    return d.stub().ListVms(&context, v1::ListVmsRequest(), &r).ok() && r.vms_size() == 2;
  }));
  // The silent VM's own call gives up with a clear error rather than hanging for good.
  grpc::Status paused = stuck.get();
  EXPECT_FALSE(paused.ok());
  EXPECT_NE(paused.error_message().find("did not answer"), std::string::npos)
      << paused.error_message();
  ASSERT_EQ(kill(silent.pid(), SIGCONT), 0);
  d.stop_vms();
}

TEST_F(DaemonTest, RestartAdoptsRunningVmsAndReportsLostOnes) {
  std::optional<Daemon> d(std::in_place, dir_.path());
  v1::VmInfo kept, lost;
  ASSERT_TRUE(d->create("kept", "", "hb_ms=50", 64 * kMiB, 1, &kept).ok());
  ASSERT_TRUE(d->create("lost", "", "hb_ms=50", 64 * kMiB, 1, &lost).ok());
  d->stop(SIGKILL);  // the daemon dies; its VMs do not
  ASSERT_EQ(kill(kept.pid(), 0), 0) << "VMs outlive the daemon";
  ASSERT_EQ(kill(lost.pid(), SIGKILL), 0);  // ...unless something kills them meanwhile
  std::this_thread::sleep_for(200ms);
  d->start();
  v1::VmInfo now = d->get("kept");
  EXPECT_EQ(now.state(), v1::VM_STATE_RUNNING);
  EXPECT_EQ(now.pid(), kept.pid()) << "the same process, adopted";
  now = d->get("lost");
  EXPECT_EQ(now.state(), v1::VM_STATE_LOST);
  EXPECT_NE(now.error().find("was running"), std::string::npos) << now.error();
  // The adopted VM is fully managed: pause, console input, stop.
  EXPECT_TRUE(d->call(&v1::Vmctl::Stub::PauseVm, "kept").ok());
  EXPECT_TRUE(d->call(&v1::Vmctl::Stub::ResumeVm, "kept").ok());
  EXPECT_TRUE(d->send_console("kept", "hello daemon\n").ok());
  EXPECT_TRUE(d->wait_console("kept", "hello daemon", 10s)) << d->console("kept");
  EXPECT_TRUE(d->call(&v1::Vmctl::Stub::StopVm, "kept").ok());
  EXPECT_TRUE(d->wait_state("kept", v1::VM_STATE_STOPPED, 15s));
  EXPECT_NE(kill(kept.pid(), 0), 0);
}

TEST_F(DaemonTest, WatchVmStreamsStateChangesAndConsole) {
  Daemon d(dir_.path());
  ASSERT_TRUE(d.create("w", "", "hb_ms=50", 64 * kMiB, 1).ok());
  grpc::ClientContext context;
  v1::WatchVmRequest request;
  request.set_name("w");
  request.set_console(true);
  auto reader = d.stub().WatchVm(&context, request);
  v1::VmEvent event;
  ASSERT_TRUE(reader->Read(&event));
  ASSERT_TRUE(event.has_state()) << "the current state comes first";
  EXPECT_EQ(event.state().state(), v1::VM_STATE_RUNNING);
  bool saw_hb = false, saw_paused = false;
  std::thread pauser([&] {
    std::this_thread::sleep_for(500ms);
    d.call(&v1::Vmctl::Stub::PauseVm, "w");
  });
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!(saw_hb && saw_paused) && std::chrono::steady_clock::now() < deadline &&
         reader->Read(&event)) {
    if (event.has_console_line() && event.console_line().rfind("HB ", 0) == 0) saw_hb = true;
    if (event.has_state() && event.state().state() == v1::VM_STATE_PAUSED) saw_paused = true;
  }
  pauser.join();
  context.TryCancel();
  reader->Finish();
  EXPECT_TRUE(saw_hb);
  EXPECT_TRUE(saw_paused);
  d.call(&v1::Vmctl::Stub::StopVm, "w");
}

// Raw calls by method name, as grpc_health_probe and grpcurl make them.
TEST_F(DaemonTest, HealthCheckingAndReflectionAreOn) {
  Daemon d(dir_.path());
  // HealthCheckRequest{service: ""} serializes to nothing, but the buffer must exist.
  grpc::Slice nothing(std::string{});
  grpc::ByteBuffer empty_request(&nothing, 1), response;
  {
    grpc::ClientContext context;
    grpc::internal::RpcMethod method("/grpc.health.v1.Health/Check",
                                     grpc::internal::RpcMethod::NORMAL_RPC);
    grpc::Status s = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
        d.channel().get(), method, &context, empty_request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(response.Dump(&slices).ok());
    std::string bytes;
    for (auto& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    EXPECT_EQ(bytes, std::string("\x08\x01", 2)) << "status: SERVING";
  }
  {
    grpc::ClientContext context;
    grpc::internal::RpcMethod method(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        grpc::internal::RpcMethod::BIDI_STREAMING);
    std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
        grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
            d.channel().get(), method, &context));
    // ServerReflectionRequest { list_services: "" } is field 7, length 0.
    grpc::Slice list_services(std::string("\x3a\x00", 2));
    grpc::ByteBuffer request(&list_services, 1);
    ASSERT_TRUE(stream->Write(request));
    stream->WritesDone();
    ASSERT_TRUE(stream->Read(&response));
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(response.Dump(&slices).ok());
    std::string bytes;
    for (auto& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    EXPECT_NE(bytes.find("vmctl.v1.Vmctl"), std::string::npos);
    EXPECT_NE(bytes.find("vmctl.v1.MigrationReceiver"), std::string::npos);
    stream->Finish();
  }
}

TEST_F(DaemonTest, ControlSocketIsOwnerOnlyAndTcpWithoutTlsIsRefused) {
  {
    Daemon d(dir_.path());
    struct stat st {};
    ASSERT_EQ(stat(d.socket().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  VmctlProcess p(vmctld_binary(), {"--socket", dir_.path() + "/x.sock", "--state-dir",
                                   dir_.path() + "/x", "--listen", "127.0.0.1:17443"});
  EXPECT_EQ(p.wait_exit(10s), 2);
  EXPECT_NE(p.err().find("no unauthenticated TCP"), std::string::npos) << p.err();
}

TEST_F(DaemonTest, CliTalksToTheDaemon) {
  Daemon d(dir_.path());
  auto vmctl = [&](std::vector<std::string> args, std::string* out = nullptr) {
    args.insert(args.begin(), {"--host", d.address()});
    VmctlProcess p(args);
    auto code = p.wait_exit(60s);
    if (out) *out = p.out() + p.err();
    return code.value_or(-1);
  };
  std::string out;
  EXPECT_EQ(vmctl({"create", "c1", "--memory", "64M", "--start"}, &out), 0) << out;
  EXPECT_NE(out.find("c1: running"), std::string::npos) << out;
  EXPECT_EQ(vmctl({"list", "--json"}, &out), 0);
  EXPECT_NE(out.find("\"name\":\"c1\""), std::string::npos) << out;
  EXPECT_EQ(vmctl({"pause", "c1"}, &out), 0) << out;
  EXPECT_EQ(vmctl({"snapshot", "c1", dir_.path() + "/c1.snap"}, &out), 0) << out;
  EXPECT_EQ(vmctl({"resume", "c1"}, &out), 0) << out;
  EXPECT_EQ(vmctl({"info", "c1", "--json"}, &out), 0);
  EXPECT_NE(out.find("VM_STATE_RUNNING"), std::string::npos) << out;
  EXPECT_EQ(vmctl({"console", "c1", "--send", "ping\n", "--no-follow"}, &out), 0) << out;
  EXPECT_TRUE(d.wait_console("c1", "ping", 10s));
  EXPECT_EQ(vmctl({"stop", "c1"}, &out), 0) << out;
  EXPECT_EQ(vmctl({"delete", "c1"}, &out), 0) << out;
  EXPECT_EQ(vmctl({"info", "c1"}, &out), 2);
  EXPECT_NE(out.find("no VM named 'c1'"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  d.stop();
  EXPECT_EQ(vmctl({"list"}, &out), 1);
  EXPECT_NE(out.find("cannot reach vmctld"), std::string::npos) << out;
}

}  // namespace
}  // namespace vmctl::testing

namespace vmctl::testing {
namespace {

TEST(HostReport, HostInfoAndHostCheckOnThisMachine) {
  VmctlProcess info({"host-info", "--json"});
  ASSERT_EQ(info.wait_exit(std::chrono::seconds(30)), 0) << info.err();
  std::string json = info.out();
  EXPECT_NE(json.find("\"irqchip\": 1"), std::string::npos) << json;
  EXPECT_NE(json.find("\"guest_cpu_features\""), std::string::npos);
  ScratchDir dir("hostcheck");
  std::string a = dir.path() + "/a.json", b = dir.path() + "/b.json";
  { std::ofstream(a) << json; }
  // Host B: the same, but without SSE2 (a guest of A certainly uses it).
  std::string without = json;
  size_t at = without.find("\"sse2\",");
  ASSERT_NE(at, std::string::npos);
  without.erase(at, 7);
  { std::ofstream(b) << without; }
  VmctlProcess same({"host-check", a, a});
  EXPECT_EQ(same.wait_exit(std::chrono::seconds(30)), 0) << same.out() << same.err();
  VmctlProcess check({"host-check", a, b});
  EXPECT_EQ(check.wait_exit(std::chrono::seconds(30)), 1);
  EXPECT_NE(check.out().find("lacks sse2"), std::string::npos) << check.out();
  VmctlProcess guest(
      {"host-check", a, a, "--guest", VMCTL_SOURCE_DIR "/tests/data/heartbeat-v1.0.snap"});
  EXPECT_EQ(guest.wait_exit(std::chrono::seconds(30)), 0) << guest.out() << guest.err();
  VmctlProcess bad({"host-check", a, "/nonexistent.json"});
  EXPECT_EQ(bad.wait_exit(std::chrono::seconds(30)), 2);
}

TEST(HostReport, DaemonServesTheSameReport) {
  ScratchDir dir("hostinfo-daemon");
  Daemon d(dir.path());
  VmctlProcess info({"--host", d.address(), "host-info", "--daemon"});
  ASSERT_EQ(info.wait_exit(std::chrono::seconds(30)), 0) << info.err();
  EXPECT_NE(info.out().find("KVM capabilities the VMM uses"), std::string::npos) << info.out();
  EXPECT_NE(info.out().find("manual_dirty_log_protect"), std::string::npos);
}

}  // namespace
}  // namespace vmctl::testing
