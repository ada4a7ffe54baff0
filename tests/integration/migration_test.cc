// Cross-host live migration: two "hosts" are network namespaces joined by a veth pair, each with
// its own vmctld listening on its own address with mutual TLS. The test drives both daemons
// through their unix sockets (shared filesystem); the migration itself crosses the veth link.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include <capnp/any.h>
#include <capnp/message.h>

#include "migrate/channel.h"
#include "state/stream.h"
#include "tests/integration/daemon_fixture.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;
namespace ps = proto::state;
constexpr uint64_t kMiB = 1 << 20;

struct Hosts {
  std::string ns_a, ns_b, veth_a, veth_b;
  std::string addr_a = "10.77.0.1", addr_b = "10.77.0.2";
  std::unique_ptr<ScratchDir> dir;
  std::unique_ptr<Daemon> a, b;
  std::string tls_dir;

  std::string tcp(const std::string& ip) const { return ip + ":7443"; }
  std::vector<std::string> tls_flags() const {
    return {"--tls-ca",  tls_dir + "/ca.pem",  "--tls-cert", tls_dir + "/node.pem",
            "--tls-key", tls_dir + "/node.key"};
  }
  std::vector<std::string> daemon_flags(const std::string& ip) const {
    std::vector<std::string> f = {"--listen", tcp(ip)};
    auto t = tls_flags();
    f.insert(f.end(), t.begin(), t.end());
    return f;
  }
  std::vector<std::string> in_ns(const std::string& ns, std::vector<std::string> env = {}) const {
    std::vector<std::string> p = {"ip", "netns", "exec", ns};
    if (!env.empty()) {
      p.push_back("env");
      p.insert(p.end(), env.begin(), env.end());
    }
    return p;
  }
};

Hosts* hosts = nullptr;

class CrossHost : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    hosts = new Hosts;
    std::string id = std::to_string(getpid() % 100000);
    hosts->ns_a = "vmctl-a-" + id;
    hosts->ns_b = "vmctl-b-" + id;
    hosts->veth_a = "vma" + id;
    hosts->veth_b = "vmb" + id;
    hosts->dir = std::make_unique<ScratchDir>("xhost");
    hosts->tls_dir = hosts->dir->path() + "/tls";
    const Hosts& h = *hosts;
    // Namespaces left by an earlier run that was killed (their owner is gone) go first.
    shell(
        "for ns in $(ip netns list | awk '/^vmctl-[ab]-[0-9]+/{print $1}'); do "
        "kill -0 ${ns##*-} 2>/dev/null || ip netns del $ns; done");
    std::string setup = "set -e; ip netns add " + h.ns_a + "; ip netns add " + h.ns_b +
                        "; ip link add " + h.veth_a + " type veth peer name " + h.veth_b +
                        "; ip link set " + h.veth_a + " netns " + h.ns_a + "; ip link set " +
                        h.veth_b + " netns " + h.ns_b + "; ip -n " + h.ns_a + " addr add " +
                        h.addr_a + "/24 dev " + h.veth_a + "; ip -n " + h.ns_b + " addr add " +
                        h.addr_b + "/24 dev " + h.veth_b + "; for n in " + h.ns_a + " " + h.ns_b +
                        "; do ip -n $n link set lo up; done; ip -n " + h.ns_a + " link set " +
                        h.veth_a + " up; ip -n " + h.ns_b + " link set " + h.veth_b + " up";
    ASSERT_EQ(shell(setup), 0) << "creating the network namespaces failed (the suite needs root "
                                  "and iproute2): "
                               << setup;
    ASSERT_EQ(shell("bash " VMCTL_SOURCE_DIR "/scripts/make-test-certs.sh '" + h.tls_dir + "' " +
                    h.addr_a + " " + h.addr_b),
              0);
    mkdir((h.dir->path() + "/a").c_str(), 0700);
    mkdir((h.dir->path() + "/b").c_str(), 0700);
    hosts->a =
        std::make_unique<Daemon>(h.dir->path() + "/a", h.daemon_flags(h.addr_a), h.in_ns(h.ns_a));
    hosts->b =
        std::make_unique<Daemon>(h.dir->path() + "/b", h.daemon_flags(h.addr_b), h.in_ns(h.ns_b));
  }

  static void TearDownTestSuite() {
    if (!hosts) return;
    hosts->a.reset();
    hosts->b.reset();
    shell("ip netns del " + hosts->ns_a + " 2>/dev/null; ip netns del " + hosts->ns_b +
          " 2>/dev/null");
    hosts->dir.reset();
    delete hosts;
    hosts = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(hosts, nullptr);
    ASSERT_TRUE(hosts->a && hosts->b) << "the daemons did not start";
    // A fault test may have taken a daemon down: bring it back.
    for (auto* d : {hosts->a.get(), hosts->b.get()}) {
      if (!d->running()) d->start();
    }
    shell("ip -n " + hosts->ns_a + " link set " + hosts->veth_a + " up");
  }

  Daemon& A() { return *hosts->a; }
  Daemon& B() { return *hosts->b; }

  v1::MigrateRequest request(const std::string& name, const std::string& to_ip) {
    v1::MigrateRequest r;
    r.set_name(name);
    r.set_destination(hosts->tcp(to_ip));
    r.set_compression(-1);
    return r;
  }

  // The dirtier, which rewrites `mib` MiB from ring 3 and checks every page it reads back.
  void start_dirtier(Daemon& d, const std::string& name, uint64_t memory, const std::string& args) {
    v1::VmInfo info;
    grpc::Status s = d.create(name, guest_path("dirtier.elf"), args, memory, 1, &info);
    ASSERT_TRUE(s.ok()) << s.error_message() << d.log();
    ASSERT_TRUE(d.wait_console(name, "^HB [0-9]+ .*total=[1-9]", 60s)) << d.console(name);
  }

  static int max_hb(const std::string& console) {
    static const std::regex hb("^HB ([0-9]+)");
    int best = -1;
    std::istringstream in(console);
    for (std::string line; std::getline(in, line);) {
      std::smatch m;
      if (std::regex_search(line, m, hb)) best = std::max(best, std::stoi(m[1]));
    }
    return best;
  }

  // The VM runs on `d`, its heartbeat advances, and the dirtier's full check finds every page
  // intact.
  void expect_running_and_intact(Daemon& d, const std::string& name) {
    EXPECT_TRUE(d.wait_state(name, v1::VM_STATE_RUNNING, 10s))
        << "state " << d.get(name).state() << " " << d.get(name).error();
    int before = max_hb(d.console(name));
    ASSERT_TRUE(d.wait_console(name, "^HB " + std::to_string(before + 2) + "\\b", 30s))
        << "the heartbeat stopped: " << d.console(name);
    size_t verifies = count(d.console(name), "^VERIFY ");
    ASSERT_TRUE(d.send_console(name, "verify\n").ok());
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (count(d.console(name), "^VERIFY ") == verifies &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(20ms);
    }
    std::string console = d.console(name);
    EXPECT_NE(console.rfind("mismatches=0"), std::string::npos) << console;
    EXPECT_EQ(count(console, "MISMATCH"), 0u) << console;
    EXPECT_EQ(count(console, "VERIFY .*mismatches=[1-9]"), 0u) << console;
  }

  static size_t count(const std::string& text, const std::string& pattern) {
    std::regex re(pattern);
    size_t n = 0;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) n += std::regex_search(line, re);
    return n;
  }

  // After a failed migration the destination must hold no running copy.
  void expect_no_copy(Daemon& d, const std::string& name) {
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
      grpc::Status s;
      v1::VmInfo info = d.get(name, &s);
      if (!s.ok() || (info.state() != v1::VM_STATE_RUNNING && info.pid() == 0)) return;
      std::this_thread::sleep_for(50ms);
    }
    ADD_FAILURE() << "the destination still runs a copy of " << name;
  }

  void stop_vm(Daemon& d, const std::string& name) {
    d.call(&v1::Vmctl::Stub::StopVm, name);
    d.call(&v1::Vmctl::Stub::DeleteVm, name);
  }
};

// Records when each "HB n" line first shows up in a console log, polling every millisecond.
class HeartbeatClock {
 public:
  explicit HeartbeatClock(std::string path) : path_(std::move(path)) {
    thread_ = std::thread([this] {
      uint64_t offset = 0;
      std::string partial;
      while (!stop_) {
        // Only what was appended since the last look: the log grows by a line per beat.
        std::ifstream in(path_, std::ios::binary);
        in.seekg(0, std::ios::end);
        uint64_t size = in ? static_cast<uint64_t>(in.tellg()) : 0;
        if (size < offset) offset = 0, partial.clear();  // a new file
        if (size > offset) {
          std::string chunk(size - offset, '\0');
          in.seekg(static_cast<std::streamoff>(offset));
          in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
          offset = size;
          partial += chunk;
          size_t start = 0, nl;
          auto now = std::chrono::steady_clock::now();
          while ((nl = partial.find('\n', start)) != std::string::npos) {
            if (partial.compare(start, 3, "HB ") == 0) {
              int n = std::atoi(partial.c_str() + start + 3);
              std::lock_guard lock(mu_);
              seen_.emplace(n, now);
            }
            start = nl + 1;
          }
          partial.erase(0, start);
        }
        std::this_thread::sleep_for(1ms);
      }
    });
  }
  ~HeartbeatClock() {
    stop_ = true;
    thread_.join();
  }
  std::map<int, std::chrono::steady_clock::time_point> seen() {
    std::lock_guard lock(mu_);
    return seen_;
  }

 private:
  std::string path_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::map<int, std::chrono::steady_clock::time_point> seen_;
  std::thread thread_;
};

std::string console_path(Daemon& d, const std::string& name) {
  return d.get(name).console_log();
}

TEST_F(CrossHost, TwentyRoundTripsKeepTheGuestRunningWithEveryPageIntact) {
  const std::string name = "roundtrip";
  const int hb_ms = 10;
  ASSERT_NO_FATAL_FAILURE(
      start_dirtier(A(), name, 128 * kMiB, "mib=32 rate=16 hb_ms=" + std::to_string(hb_ms)));
  std::vector<double> daemon_ms, gap_ms;
  Daemon* src = &A();
  Daemon* dst = &B();
  std::string dst_ip = hosts->addr_b, src_ip = hosts->addr_a;
  for (int leg = 0; leg < 40; ++leg) {
    int last_src = max_hb(src->console(name));
    std::string dst_console = src == &A()
                                  ? hosts->dir->path() + "/b/state/vms/" + name + "/console.log"
                                  : hosts->dir->path() + "/a/state/vms/" + name + "/console.log";
    ::unlink(dst_console.c_str());
    std::optional<HeartbeatClock> src_clock(std::in_place, console_path(*src, name));
    std::optional<HeartbeatClock> dst_clock(std::in_place, dst_console);
    std::this_thread::sleep_for(30ms);
    v1::MigrateRequest req = request(name, dst_ip);
    req.set_streams(leg % 4 < 2 ? 1 : 3);  // every other round trip over parallel streams
    MigrationResult r = migrate(*src, req);
    ASSERT_TRUE(r.status.ok()) << "leg " << leg << ": " << r.status.error_message();
    ASSERT_NE(r.last(), nullptr);
    EXPECT_EQ(r.last()->phase(), "done");
    daemon_ms.push_back(r.last()->downtime().total_ms());
    ASSERT_TRUE(dst->wait_console(name, "^HB [0-9]+", 30s)) << dst->console(name);
    std::this_thread::sleep_for(std::chrono::milliseconds(5 * hb_ms));
    auto before = src_clock->seen();
    auto after = dst_clock->seen();
    src_clock.reset();
    dst_clock.reset();
    ASSERT_FALSE(after.empty());
    int first_dst = after.begin()->first;
    EXPECT_GT(first_dst, last_src) << "leg " << leg << ": the heartbeat restarted";
    EXPECT_LE(first_dst, max_hb(src->console(name)) + 2) << "leg " << leg << ": beats lost";
    if (!before.empty()) {
      gap_ms.push_back(
          std::chrono::duration<double, std::milli>(after.begin()->second - before.rbegin()->second)
              .count());
    }
    EXPECT_EQ(src->get(name).state(), v1::VM_STATE_MIGRATED);
    EXPECT_EQ(count(dst->console(name), "MISMATCH"), 0u) << dst->console(name);
    std::swap(src, dst);
    std::swap(src_ip, dst_ip);
  }
  expect_running_and_intact(*src, name);

  auto report = [](const char* what, std::vector<double> v) {
    std::sort(v.begin(), v.end());
    double median = v.empty() ? 0 : v[v.size() / 2];
    double max = v.empty() ? 0 : v.back();
    std::printf("%-44s median %7.1f ms, max %7.1f ms over %zu migrations\n", what, median, max,
                v.size());
    ::testing::Test::RecordProperty(std::string(what).substr(0, 6) + "_median_ms",
                                    std::to_string(median));
    return median;
  };
  std::printf(
      "\ndowntime over 40 migrations (20 round trips, half of them over 3 parallel "
      "streams), 128 MiB dirtier at 16 MiB/s:\n");
  report("daemon breakdown (pause to resumed)", daemon_ms);
  report("guest heartbeat gap (last beat to next beat)", gap_ms);
  stop_vm(*src, name);
}

// The apictest guest parked inside three nested handlers with 0x91 pending behind TPR 0x90 and a
// TSC-deadline timer ticking (x2APIC mode), migrated A to B: on B it finishes the nest (0x91
// delivered once when the TPR drops, EOIs innermost first) and its timer neither lost nor doubled
// ticks. tests/integration/apic_test.cc does the same through a snapshot file.
TEST_F(CrossHost, ApicStateInsideNestedHandlersSurvivesMigration) {
  const std::string name = "apic-hold";
  v1::VmInfo info;
  grpc::Status s = A().create(name, guest_path("apictest.elf"), "mode=x2apic hold=1 timer=deadline",
                              64 * kMiB, 1, &info);
  ASSERT_TRUE(s.ok()) << s.error_message() << A().log();
  ASSERT_TRUE(A().wait_console(name, "^HOLD mode=x2apic .*irr=\\[91\\] tpr=0x90 ppr=0x90", 120s))
      << A().console(name);
  std::this_thread::sleep_for(300ms);
  MigrationResult r = migrate(A(), request(name, hosts->addr_b));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(A().get(name).state(), v1::VM_STATE_MIGRATED);
  ASSERT_TRUE(B().wait_state(name, v1::VM_STATE_RUNNING, 10s));
  std::this_thread::sleep_for(300ms);
  ASSERT_TRUE(B().send_console(name, "release\n").ok());
  ASSERT_TRUE(B().wait_console(name, "^APICTEST done", 60s)) << B().console(name);
  std::string console = B().console(name);
  EXPECT_EQ(count(console, "^FAIL"), 0u) << console;
  EXPECT_EQ(count(console, "^APICTEST done pass=[0-9]+ fail=0 "), 1u) << console;
  EXPECT_EQ(count(console, "^TIMER x2apic timer deadline during hold:"), 1u) << console;
  EXPECT_EQ(count(console, "raise=msr lower=cr8 order: \\+51 \\+61 \\+71 \\+91 -91 -71 -61 -51"),
            1u)
      << console;
  stop_vm(B(), name);
  stop_vm(A(), name);
}

// Dirty tracking is the host's business, not the guest's: a VM tracked with a (small, often full)
// dirty ring moves to a destination that tracks it with the bitmap and back, every page intact,
// and each side's rounds read the source it was told to use.
TEST_F(CrossHost, RingAndBitmapVmsMigrateIntoEachOther) {
  if (!host_has_dirty_ring()) GTEST_SKIP() << "this host's KVM has no dirty ring";
  const std::string name = "mixed";
  v1::VmConfig config;
  config.set_kernel(guest_path("dirtier.elf"));
  config.set_cmdline("mib=32 rate=32 hb_ms=50");
  config.set_memory_bytes(128 * kMiB);
  config.set_cpus(2);
  config.set_dirty_tracking("ring");
  config.set_dirty_ring_entries(512);
  v1::VmInfo info;
  grpc::Status s = A().create(name, config, &info);
  ASSERT_TRUE(s.ok()) << s.error_message() << A().log();
  ASSERT_TRUE(A().wait_console(name, "^HB [0-9]+ .*total=[1-9]", 60s)) << A().console(name);
  EXPECT_EQ(A().get(name).config().dirty_tracking(), "ring");

  struct Leg {
    Daemon* src;
    Daemon* dst;
    std::string dst_ip, src_dir, request_mode, source_reads, dst_mode;
  };
  const std::vector<Leg> legs = {
      {&A(), &B(), hosts->addr_b, "a", "bitmap", "(dirty ring)", "bitmap"},
      {&B(), &A(), hosts->addr_a, "b", "ring", "(dirty bitmap", "ring"},
      {&A(), &B(), hosts->addr_b, "a", "", "(dirty ring)", "ring"},  // the VM's own setting
  };
  for (size_t i = 0; i < legs.size(); ++i) {
    const Leg& leg = legs[i];
    std::this_thread::sleep_for(300ms);
    v1::MigrateRequest req = request(name, leg.dst_ip);
    req.set_dirty_tracking(leg.request_mode);
    MigrationResult r = migrate(*leg.src, req);
    ASSERT_TRUE(r.status.ok()) << "leg " << i << ": " << r.status.error_message();
    ASSERT_NE(r.last(), nullptr);
    EXPECT_EQ(r.last()->phase(), "done");
    std::ifstream log(hosts->dir->path() + "/" + leg.src_dir + "/state/vms/" + name + "/vmctl.log");
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find(leg.source_reads), std::string::npos) << "leg " << i << ": " << text;
    ASSERT_TRUE(leg.dst->wait_console(name, "^HB [0-9]+", 30s)) << leg.dst->console(name);
    EXPECT_EQ(leg.dst->get(name).config().dirty_tracking(), leg.dst_mode) << "leg " << i;
    EXPECT_EQ(count(leg.dst->console(name), "MISMATCH"), 0u) << leg.dst->console(name);
  }
  expect_running_and_intact(B(), name);
  stop_vm(B(), name);
  stop_vm(A(), name);
}

TEST_F(CrossHost, DestinationKilledDuringTheFirstRound) {
  const std::string name = "kill-first";
  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 512 * kMiB, "mib=448 rate=0 hb_ms=50"));
  MigrationResult r = migrate(A(), request(name, hosts->addr_b), [&](const auto& p) {
    if (p.phase() == "precopy" && p.round() == 0 && B().running()) B().stop(SIGKILL);
  });
  EXPECT_FALSE(r.status.ok());
  expect_running_and_intact(A(), name);
  B().start();
  expect_no_copy(B(), name);
  stop_vm(A(), name);
}

TEST_F(CrossHost, DestinationKilledDuringALaterRound) {
  const std::string name = "kill-later";
  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 512 * kMiB, "mib=448 rate=0 hb_ms=50"));
  v1::MigrateRequest req = request(name, hosts->addr_b);
  req.set_downtime_ms(1);  // cannot converge: rounds go on until the kill
  req.set_max_rounds(1000);
  req.set_max_seconds(120);
  req.set_streams(3);  // the parallel streams roll back as cleanly as one
  MigrationResult r = migrate(A(), req, [&](const auto& p) {
    if (p.round() >= 2 && B().running()) B().stop(SIGKILL);
  });
  EXPECT_FALSE(r.status.ok());
  ASSERT_NE(r.last(), nullptr);
  EXPECT_GE(r.last()->round(), 2u);
  expect_running_and_intact(A(), name);
  B().start();
  expect_no_copy(B(), name);
  stop_vm(A(), name);
}

TEST_F(CrossHost, DestinationKilledDuringStopAndCopy) {
  const std::string name = "kill-stop";
  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 512 * kMiB, "mib=448 rate=0 hb_ms=50"));
  v1::MigrateRequest req = request(name, hosts->addr_b);
  // Any downtime is acceptable: stop-and-copy right after round 0, with the ~448 MiB the guest
  // dirtied meanwhile still to send, which leaves time to kill the destination.
  req.set_downtime_ms(600000);
  MigrationResult r = migrate(A(), req, [&](const auto& p) {
    if (p.phase() == "stop-and-copy" && B().running()) B().stop(SIGKILL);
  });
  EXPECT_FALSE(r.status.ok()) << "the kill came too late";
  expect_running_and_intact(A(), name);
  B().start();
  expect_no_copy(B(), name);
  stop_vm(A(), name);
}

TEST_F(CrossHost, LinkDownMidMigration) {
  const std::string name = "link-down";
  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 512 * kMiB, "mib=448 rate=0 hb_ms=50"));
  v1::MigrateRequest req = request(name, hosts->addr_b);
  req.set_downtime_ms(1);
  req.set_max_rounds(1000);
  auto start = std::chrono::steady_clock::now();
  MigrationResult r = migrate(A(), req, [&](const auto& p) {
    if (p.round() == 1) shell("ip -n " + hosts->ns_a + " link set " + hosts->veth_a + " down");
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_FALSE(r.status.ok());
  EXPECT_LT(seconds, 30) << "a dead link must be noticed by keepalive, not the TCP timeout";
  expect_running_and_intact(A(), name);
  shell("ip -n " + hosts->ns_a + " link set " + hosts->veth_a + " up");
  expect_no_copy(B(), name);
  stop_vm(A(), name);
}

TEST_F(CrossHost, CancelMigrationMidWay) {
  const std::string name = "cancel";
  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 512 * kMiB, "mib=448 rate=0 hb_ms=50"));
  v1::MigrateRequest req = request(name, hosts->addr_b);
  req.set_downtime_ms(1);
  req.set_max_rounds(1000);
  std::thread canceller;
  MigrationResult r = migrate(A(), req, [&](const auto& p) {
    if (p.round() == 2 && !canceller.joinable()) {
      canceller = std::thread([&] {
        v1::VmInfo info;
        grpc::Status s = A().call(&v1::Vmctl::Stub::CancelMigration, name, &info);
        EXPECT_TRUE(s.ok()) << s.error_message();
      });
    }
  });
  if (canceller.joinable()) canceller.join();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << r.status.error_message();
  expect_running_and_intact(A(), name);
  expect_no_copy(B(), name);
  stop_vm(A(), name);
}

// A source whose VM process sends a corrupted byte (fault injection through its environment).
// The byte must lie inside every such stream: the migration starts once the dirtier has written
// 1 MiB, so the stream carries at least that much page data. (At 3,000,000 a fast migration of
// this guest could end before the byte was sent, and succeed.)
TEST_F(CrossHost, CorruptedRecordIsRefusedAndTheSourceKeepsRunning) {
  ScratchDir dir("xhost-corrupt");
  Daemon faulty(dir.path(), hosts->tls_flags(),
                hosts->in_ns(hosts->ns_a, {"VMCTL_FAULT_CORRUPT_STREAM_AT=1000000"}));
  const std::string name = "corrupt";
  ASSERT_NO_FATAL_FAILURE(start_dirtier(faulty, name, 128 * kMiB, "mib=32 rate=16 hb_ms=50"));
  MigrationResult r = migrate(faulty, request(name, hosts->addr_b));
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.error_message().find("checksum mismatch"), std::string::npos)
      << r.status.error_message();
  expect_running_and_intact(faulty, name);
  expect_no_copy(B(), name);
  stop_vm(faulty, name);
}

TEST_F(CrossHost, DestinationRefusesANewerFormat) {
  ScratchDir dir("xhost-version");
  Daemon newer(dir.path(), hosts->tls_flags(),
               hosts->in_ns(hosts->ns_a, {"VMCTL_FAULT_OFFER_MAJOR=99"}));
  const std::string name = "version";
  ASSERT_NO_FATAL_FAILURE(start_dirtier(newer, name, 128 * kMiB, "mib=32 rate=16 hb_ms=50"));
  MigrationResult r = migrate(newer, request(name, hosts->addr_b));
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.error_message().find("refused"), std::string::npos)
      << r.status.error_message();
  EXPECT_NE(r.status.error_message().find("99."), std::string::npos) << r.status.error_message();
  expect_running_and_intact(newer, name);
  expect_no_copy(B(), name);
  stop_vm(newer, name);
}

// Streams crafted by the test itself, sent to the destination daemon's MigrationReceiver (through
// its unix socket, which serves the same service as its TLS listener): what a malicious or broken
// source could send.
class CraftedStream : public CrossHost {
 protected:
  // The golden snapshot's records, with `edit` applied to each.
  std::string stream(const std::function<void(state::Record&, state::RecordWriter&)>& edit) {
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

  // Sends an offer and `bytes` to B; returns the FAILED event's message (or "" if restored).
  std::string send(const std::string& name, const std::string& bytes) {
    auto stub = v1::MigrationReceiver::NewStub(B().channel());
    grpc::ClientContext context;
    auto s = stub->Receive(&context);
    v1::MigrationChunk offer;
    offer.mutable_offer()->set_vm_name(name);
    offer.mutable_offer()->set_source("test");
    offer.mutable_offer()->set_format_major(state::format_major());
    EXPECT_TRUE(s->Write(offer));
    v1::MigrationEvent event;
    EXPECT_TRUE(s->Read(&event));
    EXPECT_EQ(event.kind(), v1::MigrationEvent::ACCEPTED) << event.error();
    for (size_t off = 0; off < bytes.size(); off += 1 << 20) {
      v1::MigrationChunk chunk;
      chunk.set_records(bytes.substr(off, 1 << 20));
      if (!s->Write(chunk)) break;
    }
    v1::MigrationChunk commit;
    commit.set_commit(true);
    s->Write(commit);  // the whole stream is sent; a real source commits after RESTORED
    s->WritesDone();
    std::string error;
    while (s->Read(&event)) {
      if (event.kind() == v1::MigrationEvent::FAILED) error = event.error();
      if (event.kind() == v1::MigrationEvent::RESTORED) break;
    }
    s->Finish();
    return error;
  }

  static void copy(state::Record& record, state::RecordWriter& writer) {
    auto msg = record.message();
    capnp::MallocMessageBuilder b;
    b.setRoot(msg->getRoot<capnp::AnyStruct>());
    ASSERT_TRUE(writer.write(record.type, b).ok());
  }
};

TEST_F(CraftedStream, UnmodifiedStreamRestores) {
  std::string error = send("crafted-ok", stream(copy));
  EXPECT_EQ(error, "");
  EXPECT_TRUE(B().wait_state("crafted-ok", v1::VM_STATE_RUNNING, 10s));
  stop_vm(B(), "crafted-ok");
}

TEST_F(CraftedStream, PageOutsideGuestRamIsRefused) {
  std::string bytes = stream([](state::Record& record, state::RecordWriter& writer) {
    copy(record, writer);
    if (record.type != ps::RecordType::HEADER) return;
    capnp::MallocMessageBuilder b;
    auto pages = b.initRoot<ps::MemoryPages>();
    auto run = pages.initRuns(1)[0];
    run.setFirstPage((64ull << 30) / 4096);  // 64 GiB: far outside a 32 MiB guest
    run.setCount(1);
    pages.initData(4096);
    ASSERT_TRUE(writer.write(ps::RecordType::MEMORY_PAGES, b).ok());
  });
  std::string error = send("crafted-oob", bytes);
  EXPECT_NE(error.find("outside guest RAM"), std::string::npos) << error;
  expect_no_copy(B(), "crafted-oob");
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
  std::string bytes = stream([&](state::Record& record, state::RecordWriter& writer) {
    if (record.type != ps::RecordType::VCPU) return copy(record, writer);
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
  std::string error = send("crafted-cpu", bytes);
  EXPECT_NE(error.find("lacks features"), std::string::npos) << error;
  EXPECT_NE(error.find(absent->cpuinfo), std::string::npos) << error;
  expect_no_copy(B(), "crafted-cpu");
}

}  // namespace
}  // namespace vmctl::testing

namespace vmctl::testing {
namespace {

// A parallel stream that keeps sending chunks from far ahead is cut off rather than buffered
// without bound, and the half-received VM is cleaned up.
TEST_F(CraftedStream, ParallelChunkFarAheadEndsTheMigration) {
  auto stub = v1::MigrationReceiver::NewStub(B().channel());
  auto offer = [](unsigned index) {
    v1::MigrationChunk c;
    c.mutable_offer()->set_vm_name("crafted-par");
    c.mutable_offer()->set_source("test");
    c.mutable_offer()->set_format_major(state::format_major());
    c.mutable_offer()->set_migration_id("crafted-par-1");
    c.mutable_offer()->set_stream_index(index);
    c.mutable_offer()->set_stream_count(2);
    return c;
  };
  grpc::ClientContext primary_context, secondary_context;
  auto primary = stub->Receive(&primary_context);
  v1::MigrationEvent event;
  ASSERT_TRUE(primary->Write(offer(0)));
  ASSERT_TRUE(primary->Read(&event));
  ASSERT_EQ(event.kind(), v1::MigrationEvent::ACCEPTED) << event.error();
  auto secondary = stub->Receive(&secondary_context);
  ASSERT_TRUE(secondary->Write(offer(1)));
  ASSERT_TRUE(secondary->Read(&event));
  ASSERT_EQ(event.kind(), v1::MigrationEvent::ACCEPTED) << event.error();
  // More chunks from the future than the destination holds back for stragglers.
  for (uint64_t i = 0; i < 300; ++i) {
    v1::MigrationChunk far;
    far.set_sequence(1000000 + i);
    far.set_records(std::string(4096, 'x'));
    if (!secondary->Write(far)) break;
  }
  secondary->WritesDone();
  secondary->Finish();
  std::string bytes = stream(copy);
  v1::MigrationChunk first;
  first.set_sequence(0);
  first.set_records(bytes);
  primary->Write(first);
  primary->WritesDone();
  std::string error;
  while (primary->Read(&event)) {
    if (event.kind() == v1::MigrationEvent::FAILED) error = event.error();
    EXPECT_NE(event.kind(), v1::MigrationEvent::RESTORED);
  }
  primary->Finish();
  EXPECT_FALSE(error.empty());
  expect_no_copy(B(), "crafted-par");
}

}  // namespace
}  // namespace vmctl::testing
