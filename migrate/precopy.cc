#include "migrate/precopy.h"

#include <bit>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "state/dirty_tracker.h"
#include "state/vm_state.h"
#include "vmm/kvm/kvm.h"

namespace vmctl::migrate {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kPageSize = 4096;
constexpr double kMiB = 1024.0 * 1024.0;
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// The dirty log for migration rounds, from the VM's dirty page source (bitmap or ring).
class DirtyLog {
 public:
  explicit DirtyLog(vmm::Vm& vm) : vm_(vm) {}
  ~DirtyLog() { stop(); }

  Status start() {
    was_logging_ = !vm_.memory().regions().empty() && vm_.memory().regions()[0].dirty_logging;
    // Bitmap mode: KVM_CLEAR_DIRTY_LOG in chunks right before the pages are read (the ring
    // re-protects harvested pages with KVM_RESET_DIRTY_RINGS).
    TRY(vm_.dirty_pages().set_manual_protect(true));
    source_ = vm_.dirty_pages().mode() == vmm::DirtyTracking::kRing ? "dirty ring"
              : vm_.dirty_pages().manual_protect()                  ? "dirty bitmap, manual protect"
                                                                    : "dirty bitmap";
    TRY_CTX(vm_.set_dirty_logging(true), "turning on dirty logging");
    started_ = true;
    // Round 0 sends everything: what was logged before it does not matter.
    TRY(fetch());
    return ok_status();
  }

  // The pages dirtied since the last fetch, one bitmap per region, re-protected before their
  // contents are read, plus the pages the VMM itself wrote.
  Result<state::DirtyBitmaps> fetch() {
    state::DirtyBitmaps bitmaps;
    TRY(vm_.dirty_pages().fetch(bitmaps));
    vm_.memory().take_vmm_dirty(bitmaps);
    return bitmaps;
  }

  void stop() {
    if (!started_) return;
    started_ = false;
    (void)vm_.dirty_pages().set_manual_protect(false);
    if (!was_logging_) (void)vm_.set_dirty_logging(false);
  }

  // What the rounds read: the ring, or the bitmap with or without manual protect.
  const std::string& source() const { return source_; }

 private:
  vmm::Vm& vm_;
  bool started_ = false;
  bool was_logging_ = false;
  std::string source_;
};

uint64_t count_pages(const state::DirtyBitmaps& bitmaps) {
  uint64_t n = 0;
  for (const auto& b : bitmaps) {
    for (uint64_t w : b) n += static_cast<uint64_t>(std::popcount(w));
  }
  return n;
}

void merge(state::DirtyBitmaps& into, const state::DirtyBitmaps& from) {
  for (size_t i = 0; i < into.size() && i < from.size(); ++i) {
    for (size_t w = 0; w < into[i].size() && w < from[i].size(); ++w) into[i][w] |= from[i][w];
  }
}

// Auto-converge: takes the vCPUs off the CPU for `percent` of every 10 ms.
class Throttle {
 public:
  explicit Throttle(vmm::Vm& vm) : vm_(vm) {}
  ~Throttle() { set(0); }

  void set(unsigned percent) {
    {
      std::lock_guard lock(mu_);
      percent_ = percent;
    }
    cv_.notify_all();
    if (percent > 0 && !thread_.joinable()) thread_ = std::thread([this] { run(); });
    if (percent == 0 && thread_.joinable()) thread_.join();
  }
  unsigned percent() const { return percent_; }

 private:
  void run() {
    std::unique_lock lock(mu_);
    while (percent_ > 0) {
      auto off = std::chrono::microseconds(percent_ * 100);
      auto on = std::chrono::microseconds((100 - percent_) * 100);
      lock.unlock();
      vm_.pause();
      std::this_thread::sleep_for(off);
      vm_.resume();
      lock.lock();
      cv_.wait_for(lock, on, [&] { return percent_ == 0; });
    }
  }

  vmm::Vm& vm_;
  std::mutex mu_;
  std::condition_variable cv_;
  unsigned percent_ = 0;
  std::thread thread_;
};

// Counts what goes into the target so rounds can measure their bandwidth, and stops at the next
// write once the migration is cancelled (inside round 0 or the stop-and-copy too).
class CountingSink final : public state::ByteSink {
 public:
  CountingSink(state::ByteSink& inner, const std::atomic<bool>& cancel)
      : inner_(inner), cancel_(cancel) {}
  Status write(const void* data, size_t len) override {
    if (cancel_) return Error::user("cancelled");
    bytes_ += len;
    return inner_.write(data, len);
  }
  uint64_t bytes() const { return bytes_; }

 private:
  state::ByteSink& inner_;
  const std::atomic<bool>& cancel_;
  uint64_t bytes_ = 0;
};

int64_t steady_ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace

Result<Progress> migrate_vm(vmm::Vm& vm, MigrationTarget& target, const PrecopyOptions& options,
                            const std::function<void(const Progress&)>& report,
                            const std::atomic<bool>& cancel) {
  const Clock::time_point start = Clock::now();
  Progress progress;
  auto elapsed = [&] { return ms_between(start, Clock::now()) / 1000.0; };
  auto emit = [&](const std::string& phase) {
    progress.phase = phase;
    progress.elapsed_seconds = elapsed();
    if (report) report(progress);
  };

  CountingSink counted(target.sink(), cancel);
  state::RecordWriter writer(counted, state::WriterOptions{options.compression_level});
  DirtyLog log(vm);
  Throttle throttle(vm);
  bool paused_here = false;
  // Everything before the destination's acknowledgement can be undone: the source VM runs on.
  auto roll_back = [&](Error error, const char* phase) -> Result<Progress> {
    throttle.set(0);
    if (paused_here) vm.resume();
    log.stop();
    if (cancel) {
      phase = "cancelled";
      error = Error::user("cancelled");
    }
    progress.error = error.message();
    emit(phase);
    return error;
  };

  Status started = log.start();
  if (!started.ok()) return roll_back(std::move(started).error(), "failed");
  state::CaptureOptions header_options;
  header_options.kind = proto::state::StreamKind::MIGRATION;
  Status header = state::write_stream_header(vm, writer, header_options, state::new_stream_id());
  if (!header.ok()) return roll_back(std::move(header).error(), "failed");

  // Round 0: every non-zero page.
  state::PageStats total;
  Clock::time_point round_start = Clock::now();
  emit("precopy");
  Result<state::PageStats> sent = target.send_pages(vm, writer, nullptr);
  if (!sent.ok()) return roll_back(std::move(sent).error(), "failed");
  total.pages += sent->pages;
  double round_seconds = std::max(1e-6, ms_between(round_start, Clock::now()) / 1000.0);
  double bandwidth =
      static_cast<double>(counted.bytes() + target.side_bytes()) / round_seconds;  // bytes/s
  progress.bytes_sent = counted.bytes() + target.side_bytes();
  progress.pages_sent = total.pages;
  progress.bandwidth_mib_s = bandwidth / kMiB;

  state::DirtyBitmaps pending;
  while (true) {
    if (cancel) return roll_back(Error::user("cancelled"), "cancelled");
    Result<state::DirtyBitmaps> dirty = log.fetch();
    if (!dirty.ok()) return roll_back(std::move(dirty).error(), "failed");
    pending = std::move(dirty).value();
    uint64_t dirty_bytes = count_pages(pending) * kPageSize;
    progress.remaining_bytes = dirty_bytes;
    progress.dirty_rate_mib_s = static_cast<double>(dirty_bytes) / round_seconds / kMiB;
    progress.expected_downtime_ms = static_cast<double>(dirty_bytes) / bandwidth * 1000.0;
    progress.throttle_percent = throttle.percent();
    emit("precopy");
    if (progress.expected_downtime_ms <= options.downtime_ms) break;
    bool out_of_budget =
        progress.round + 1 >= options.max_rounds || elapsed() >= options.max_seconds;
    if (out_of_budget) {
      if (!options.auto_converge) {
        return roll_back(
            Error::user(fmt::format(
                "did not converge after {} rounds in {:.1f} s: the guest dirties {:.0f} MiB/s "
                "and {:.0f} MiB/s get through, so {:.0f} ms of downtime would be needed against "
                "a target of {:.0f} ms (raise the downtime target or use auto-converge)",
                progress.round + 1, elapsed(), progress.dirty_rate_mib_s, bandwidth / kMiB,
                progress.expected_downtime_ms, options.downtime_ms)),
            "failed");
      }
      // Throttle harder each round; at the maximum, accept the downtime there is.
      if (throttle.percent() >= 95) break;
      throttle.set(std::min(95u, throttle.percent() == 0 ? 30u : throttle.percent() + 20));
    }
    ++progress.round;
    round_start = Clock::now();
    uint64_t before = counted.bytes() + target.side_bytes();
    sent = target.send_pages(vm, writer, &pending);
    if (!sent.ok()) return roll_back(std::move(sent).error(), "failed");
    total.pages += sent->pages;
    round_seconds = std::max(1e-6, ms_between(round_start, Clock::now()) / 1000.0);
    // A small round says little about the link: keep the larger of the recent estimates.
    double measured =
        static_cast<double>(counted.bytes() + target.side_bytes() - before) / round_seconds;
    bandwidth = std::max(measured, bandwidth * 0.5);
    progress.bytes_sent = counted.bytes() + target.side_bytes();
    progress.pages_sent = total.pages;
    progress.bandwidth_mib_s = bandwidth / kMiB;
  }

  // Stop-and-copy.
  throttle.set(0);
  emit("stop-and-copy");
  const Clock::time_point paused_at = Clock::now();
  vm.pause();
  paused_here = true;
  Result<state::DirtyBitmaps> last = log.fetch();
  if (!last.ok()) return roll_back(std::move(last).error(), "failed");
  merge(pending, *last);
  sent = target.send_pages(vm, writer, &pending);
  if (!sent.ok()) return roll_back(std::move(sent).error(), "failed");
  total.pages += sent->pages;
  Status ended = target.end_pages();
  if (!ended.ok()) return roll_back(std::move(ended).error(), "failed");
  Status flushed = target.flush();
  if (!flushed.ok()) return roll_back(std::move(flushed).error(), "failed");
  const Clock::time_point last_page_at = Clock::now();
  Status machine = state::write_machine_state(vm, writer, total);
  if (!machine.ok()) return roll_back(std::move(machine).error(), "failed");
  flushed = target.flush();
  if (!flushed.ok()) return roll_back(std::move(flushed).error(), "failed");
  const Clock::time_point state_at = Clock::now();
  if (cancel) return roll_back(Error::user("cancelled"), "cancelled");
  // Everything is sent; the VM stays paused. From here the switchover decides (protocol.md).
  progress.bytes_sent = counted.bytes() + target.side_bytes();
  progress.pages_sent = total.pages;
  progress.remaining_bytes = 0;
  progress.downtime.pause_to_last_page_ms = ms_between(paused_at, last_page_at);
  progress.downtime.last_page_to_state_ms = ms_between(last_page_at, state_at);
  progress.paused_at_ns = steady_ns(paused_at);
  progress.last_page_at_ns = steady_ns(last_page_at);
  progress.state_at_ns = steady_ns(state_at);
  emit("sent");
  log.stop();  // after "sent": turning dirty logging off is not on the switchover's path
  spdlog::info("sent in {:.2f} s, {} rounds, {:.1f} MiB ({}); the VM waits for the switchover",
               progress.elapsed_seconds, progress.round + 1,
               static_cast<double>(progress.bytes_sent) / kMiB, log.source());
  return progress;
}

}  // namespace vmctl::migrate
