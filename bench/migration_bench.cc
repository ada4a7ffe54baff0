// Live migration through two vmctld daemons over loopback TCP with mutual TLS: total time,
// downtime (the daemon's breakdown), bytes and rounds, for idle guests and guests dirtying memory
// at several rates.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "base/size.h"
#include "bench/bench_report.h"
#include "bench/daemon_process.h"
#include "migrate/channel.h"
#include "proto/vmctl.grpc.pb.h"

namespace vmctl::bench {
namespace {

namespace v1 = ::vmctl::v1;
using namespace std::chrono_literals;

struct Case {
  uint64_t memory;
  int rate_mib_s;  // -1: idle guest (heartbeat); 0: as fast as the guest can
  std::string workload() const {
    if (rate_mib_s < 0) return "idle";
    if (rate_mib_s == 0) return "dirty max";
    return fmt::format("dirty {} MiB/s", rate_mib_s);
  }
};

int run(const std::vector<uint64_t>& sizes, const std::vector<int>& rates,
        const std::vector<std::string>& trackings, uint32_t ring_entries, unsigned downtime_ms,
        bool auto_converge, unsigned streams, const std::string& json) {
  std::string dir = fmt::format("/tmp/vmctl-migration-bench-{}", getpid());
  std::string tls = dir + "/tls";
  if (std::system(("mkdir -p " + dir + " && bash " VMCTL_SOURCE_DIR "/scripts/make-test-certs.sh " +
                   tls + " 127.0.0.1")
                      .c_str()) != 0) {
    std::fprintf(stderr, "migration_bench: cannot make TLS certificates (openssl?)\n");
    return 1;
  }
  int port_a = 17000 + getpid() % 1000, port_b = port_a + 1000;
  Report report("live migration (two vmctld over loopback TCP, mutual TLS)",
                {"guest", "workload", "tracking", "result", "total s", "downtime ms",
                 "last pages ms", "state ms", "resume ms", "rounds", "MiB sent", "MiB/s"});
  report.set_context("host", host_context());
  report.set_context("downtime_target_ms", downtime_ms);
  report.set_context("auto_converge", auto_converge);
  report.set_context("streams", streams);
  report.set_context("dirty_ring_entries", ring_entries ? ring_entries : 4096);
  {
    DaemonProcess a(dir + "/a", port_a, tls), b(dir + "/b", port_b, tls);
    for (uint64_t memory : sizes) {
      for (int rate : rates) {
        for (const std::string& tracking : trackings) {
          Case c{memory, rate};
          std::fprintf(stderr, "migration_bench: %s %s, dirty %s...\n", format_size(memory).c_str(),
                       c.workload().c_str(), tracking.c_str());
          std::string name = fmt::format("bench{}", rate < 0 ? 0 : rate + 1);
          grpc::ClientContext create_context;
          v1::CreateVmRequest create;
          create.set_name(name);
          create.set_start(true);
          create.mutable_config()->set_memory_bytes(memory);
          create.mutable_config()->set_cpus(1);
          create.mutable_config()->set_dirty_tracking(tracking);
          create.mutable_config()->set_dirty_ring_entries(ring_entries);
          uint64_t dirty_mib = (memory >> 20) - 64;
          if (rate >= 0) {
            create.mutable_config()->set_kernel(VMCTL_GUEST_DIR "/dirtier.elf");
            create.mutable_config()->set_cmdline(
                fmt::format("mib={} rate={} hb_ms=100", dirty_mib, rate));
          } else {
            create.mutable_config()->set_kernel(VMCTL_GUEST_DIR "/heartbeat.elf");
            create.mutable_config()->set_cmdline("hb_ms=100");
          }
          v1::VmInfo info;
          grpc::Status s = a.stub().CreateVm(&create_context, create, &info);
          if (!s.ok()) {
            std::fprintf(stderr, "migration_bench: %s\n", s.error_message().c_str());
            return 1;
          }
          // The guest is going: its memory is filled (dirtier) or it is beating (idle).
          a.wait_console(name, rate >= 0 ? "total=[1-9]" : "HB 3", 120s);
          if (rate >= 0) std::this_thread::sleep_for(2s);
          grpc::ClientContext context;
          v1::MigrateRequest request;
          request.set_name(name);
          request.set_destination(fmt::format("127.0.0.1:{}", port_b));
          request.set_downtime_ms(downtime_ms);
          request.set_max_seconds(60);
          request.set_compression(-1);
          request.set_streams(streams);
          request.set_dirty_tracking(tracking);
          request.set_policy(auto_converge ? v1::CONVERGENCE_AUTO_CONVERGE
                                           : v1::CONVERGENCE_GIVE_UP);
          auto reader = a.stub().Migrate(&context, request);
          v1::MigrationProgress p, last;
          while (reader->Read(&p)) last = p;
          grpc::Status result = reader->Finish();
          const v1::DowntimeBreakdown& d = last.downtime();
          nlohmann::json row = {{"guest", format_size(memory)},
                                {"workload", c.workload()},
                                {"tracking", tracking},
                                {"result", result.ok() ? "ok" : "gave up"},
                                {"total s", last.elapsed_seconds()},
                                {"rounds", last.round() + 1},
                                {"MiB sent", static_cast<double>(last.bytes_sent()) / (1 << 20)},
                                {"MiB/s", last.bandwidth_mib_s()}};
          if (result.ok()) {
            row["downtime ms"] = d.total_ms();
            row["last pages ms"] = d.pause_to_last_page_ms();
            row["state ms"] = d.last_page_to_state_ms();
            row["resume ms"] = d.state_to_resumed_ms();
          } else {
            row["error"] = result.error_message();
          }
          report.add(row);
          a.remove(name);
          b.remove(name);
        }
      }
    }
  }
  std::system(("rm -rf " + dir).c_str());
  return report.finish(json);
}

}  // namespace
}  // namespace vmctl::bench

int main(int argc, char** argv) {
  using namespace vmctl;
  CLI::App app(
      "Live migration benchmark: two vmctld on loopback TCP with mutual TLS; total time, "
      "downtime breakdown, bytes and rounds for idle and dirtying guests.");
  std::vector<std::string> sizes = {"512M", "2G"};
  std::vector<int> rates = {-1, 64, 256, 0};
  std::vector<std::string> trackings = {"bitmap", "ring"};
  uint32_t ring_entries = 0;
  unsigned downtime_ms = 30;
  bool auto_converge = false;
  unsigned streams = 1;
  std::string json;
  app.add_option("--sizes", sizes, "Guest RAM sizes")->delimiter(',')->capture_default_str();
  app.add_option("--rates", rates,
                 "Dirty rates in MiB/s (-1: idle heartbeat guest, 0: as fast as the guest can)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--dirty-tracking", trackings,
                 "Dirty page sources to compare (bitmap, ring, auto); the same on both sides")
      ->delimiter(',')
      ->check(CLI::IsMember({"auto", "bitmap", "ring"}))
      ->capture_default_str();
  app.add_option("--dirty-ring-entries", ring_entries,
                 "Ring entries per vCPU with the ring (0: the VMM's default, 4096)");
  app.add_option("--downtime-ms", downtime_ms, "Downtime target")->capture_default_str();
  app.add_flag("--auto-converge", auto_converge, "Throttle instead of giving up");
  app.add_option("--streams", streams, "Parallel streams per migration")->capture_default_str();
  app.add_option("--json", json, "Also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  std::vector<uint64_t> bytes;
  for (const std::string& s : sizes) {
    Result<uint64_t> b = parse_size(s);
    if (!b.ok()) {
      std::fprintf(stderr, "migration_bench: %s\n", b.error().message().c_str());
      return 2;
    }
    bytes.push_back(*b);
  }
  return bench::run(bytes, rates, trackings, ring_entries, downtime_ms, auto_converge, streams,
                    json);
}
