// Snapshot and restore time, throughput and file sizes for idle and dirtied test guests.
//
// For each guest size and workload, a VM is booted in this process, snapshotted two ways (the
// zstd record stream; a raw memory file beside a small stream), stopped, and restored three ways
// (from the stream; reading the memory file; mapping it lazily). Throughput is guest RAM per
// second. Files are written to --dir and are in the page cache when restored (warm numbers).
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <regex>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "base/size.h"
#include "bench/bench_report.h"
#include "bench/guest_console.h"
#include "state/vm_state.h"
#include "vmm/vm.h"

namespace vmctl::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Case {
  uint64_t memory;
  bool dirtied;
  std::string name() const {
    return fmt::format("{} {}", format_size(memory), dirtied ? "dirtied" : "idle");
  }
};

off_t allocated_bytes(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? st.st_blocks * 512 : 0;
}

Status run_case(const Case& c, const std::string& dir, int level, Report& report) {
  GuestConsole console;
  vmm::VmConfig config;
  config.memory_size = c.memory;
  config.console_output = [&](const uint8_t* d, size_t n) { console.append(d, n); };
  // The dirtier fills all but 64 MiB of RAM with non-zero data it keeps rewriting; the idle
  // guest is the heartbeat, which touches a few pages.
  uint64_t dirty_mib = (c.memory >> 20) - 64;
  config.boot.kernel_path =
      std::string(VMCTL_GUEST_DIR) + (c.dirtied ? "/dirtier.elf" : "/heartbeat.elf");
  config.boot.cmdline = c.dirtied ? fmt::format("mib={} rate=0 hb_ms=100", dirty_mib) : "hb_ms=100";
  std::unique_ptr<vmm::Vm> vm = TRY(vmm::Vm::create(config));
  vm->start();
  // The dirtier is going once it has written all of its region (one full pass).
  auto dirtied_all = [&](const std::string& text) {
    static const std::regex total("total=([0-9]+)MiB");
    uint64_t best = 0;
    for (auto it = std::sregex_iterator(text.begin(), text.end(), total);
         it != std::sregex_iterator(); ++it) {
      best = std::max<uint64_t>(best, std::stoull((*it)[1].str()));
    }
    return best >= dirty_mib;
  };
  bool going = c.dirtied ? console.wait_until(dirtied_all, std::chrono::seconds(300))
                         : console.wait_for("HB 2\\b", std::chrono::seconds(60));
  if (!going) {
    return Error::failure(
        fmt::format("{}: the guest did not get going: {}", c.name(), console.text()));
  }

  std::string stream = fmt::format("{}/bench-{}.snap", dir, getpid());
  std::string raw_stream = fmt::format("{}/bench-{}-raw.snap", dir, getpid());
  std::string memory_file = fmt::format("{}/bench-{}.mem", dir, getpid());
  double ram_mib = static_cast<double>(c.memory) / (1 << 20);
  auto row = [&](const char* op, double secs, uint64_t file_bytes) {
    report.add({{"case", c.name()},
                {"operation", op},
                {"seconds", secs},
                {"MiB/s", ram_mib / secs},
                {"file MiB", static_cast<double>(file_bytes) / (1 << 20)}});
  };

  state::SnapshotOptions options;
  options.compression_level = level;
  state::CaptureStats stats = TRY(state::save_snapshot(*vm, stream, options));
  row("snapshot (stream)", std::chrono::duration<double>(stats.duration).count(), stats.bytes);
  options.memory_file = memory_file;
  Clock::time_point start = Clock::now();
  stats = TRY(state::save_snapshot(*vm, raw_stream, options));
  // save_snapshot's duration covers capture only; the fsyncs and renames are part of the cost.
  row("snapshot (memory file)", seconds_since(start),
      stats.bytes + static_cast<uint64_t>(allocated_bytes(memory_file)));
  vm->stop();
  vm->wait();
  vm.reset();

  struct Restore {
    const char* op;
    std::string file;
    bool lazy;
  };
  for (const Restore& r : {Restore{"restore (stream)", stream, false},
                           Restore{"restore (memory file)", raw_stream, false},
                           Restore{"restore --lazy", raw_stream, true}}) {
    state::RestoreOptions restore;
    restore.lazy = r.lazy;
    restore.console_output = [](const uint8_t*, size_t) {};
    start = Clock::now();
    std::unique_ptr<vmm::Vm> restored = TRY(state::restore_snapshot({r.file}, restore));
    row(r.op, seconds_since(start), 0);
  }
  unlink(stream.c_str());
  unlink(raw_stream.c_str());
  unlink(memory_file.c_str());
  return ok_status();
}

}  // namespace
}  // namespace vmctl::bench

int main(int argc, char** argv) {
  using namespace vmctl;
  CLI::App app(
      "Snapshot and restore benchmark: time, throughput (guest RAM per second) and file "
      "sizes for idle and dirtied test guests.");
  std::vector<std::string> sizes = {"512M", "2G"};
  std::string dir = "/tmp", json;
  int level = 1;
  app.add_option("--sizes", sizes, "Guest RAM sizes")->delimiter(',')->capture_default_str();
  app.add_option("--dir", dir, "Where the snapshot files go")->capture_default_str();
  app.add_option("--compression", level, "zstd level for the stream")->capture_default_str();
  app.add_option("--json", json, "Also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);

  bench::Report report("snapshot/restore", {"case", "operation", "seconds", "MiB/s", "file MiB"});
  report.set_context("host", bench::host_context());
  report.set_context("compression_level", level);
  report.set_context("note", "restores read files from the page cache (warm)");
  for (const std::string& text : sizes) {
    Result<uint64_t> size = parse_size(text);
    if (!size.ok()) {
      std::fprintf(stderr, "snapshot_bench: %s\n", size.error().message().c_str());
      return 2;
    }
    for (bool dirtied : {false, true}) {
      std::fprintf(stderr, "snapshot_bench: %s %s...\n", text.c_str(),
                   dirtied ? "dirtied" : "idle");
      Status s = bench::run_case(bench::Case{*size, dirtied}, dir, level, report);
      if (!s.ok()) {
        std::fprintf(stderr, "snapshot_bench: %s\n", s.error().message().c_str());
        return 1;
      }
    }
  }
  return report.finish(json);
}
