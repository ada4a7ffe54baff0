// vmctl side by side with QEMU: the same guest ELF, the same memory, the same workload, on the
// same machine in the same run.
//
// Per case (guest size x workload) and per system, each operation is repeated:
//   migrate   live migration over loopback TCP: vmctl between two vmctld (mutual TLS, as vmctld
//             requires for TCP), QEMU (-M microvm) to a second QEMU started with -incoming, driven
//             over QMP (migrate / query-migrate);
//   save      snapshot of the running guest to a file (vmctl Snapshot: pause, write, resume; QEMU:
//             stop, migrate "exec:cat > FILE", cont);
//   restore   from that file to a running guest (vmctl Restore; QEMU: a new process with -S and
//             migrate-incoming "exec:cat FILE", then cont).
// Systems: vmctl with its defaults; QEMU with its defaults; QEMU tuned (max-bandwidth unlimited,
// multifd with 2 channels where the transport allows it). Figures per operation: min/median/max of
// the total time (measured here, the same way for both), the system's own downtime figure, the
// guest-observed heartbeat gap, bytes moved and rounds; the ratio vmctl/QEMU against QEMU's
// defaults and against its best configuration; and the bandwidth as a fraction of what this
// machine can do at all (memcpy, one loopback TCP stream), measured at the start of the run.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "base/size.h"
#include "bench/bench_report.h"
#include "bench/cpu_accounting.h"
#include "bench/daemon_process.h"
#include "bench/machine_limits.h"

namespace vmctl::bench {
namespace {

namespace v1 = ::vmctl::v1;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// A measurement that could not be made (a system failed, a guest did not boot, ...).
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

// ---------------------------------------------------------------------------------------------
// A guest console in a file (QEMU's serial chardev, a vmctld VM's console.log), followed as it
// grows: when each heartbeat line was first seen, how far the dirtier got, and corruption.
class ConsoleWatch {
 public:
  explicit ConsoleWatch(std::string path) : path_(std::move(path)) {
    thread_ = std::thread([this] { follow(); });
  }
  ~ConsoleWatch() {
    stop_ = true;
    thread_.join();
  }
  ConsoleWatch(const ConsoleWatch&) = delete;
  ConsoleWatch& operator=(const ConsoleWatch&) = delete;

  struct Beat {
    int n;
    Clock::time_point seen;
  };
  std::vector<Beat> beats() {
    std::lock_guard lock(mu_);
    return beats_;
  }
  uint64_t dirtied_mib() {
    std::lock_guard lock(mu_);
    return dirtied_mib_;
  }
  uint64_t mismatches() {
    std::lock_guard lock(mu_);
    return mismatches_;
  }
  std::string tail() {
    std::lock_guard lock(mu_);
    return text_tail_;
  }
  // Waits until `done` holds (checked every few milliseconds).
  template <typename F>
  bool wait(F done, Clock::duration timeout) {
    Clock::time_point deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (done(*this)) return true;
      std::this_thread::sleep_for(2ms);
    }
    return done(*this);
  }
  // The first beat seen at or after `t`.
  std::optional<Beat> first_beat_after(Clock::time_point t) {
    std::lock_guard lock(mu_);
    for (const Beat& b : beats_) {
      if (b.seen >= t) return b;
    }
    return std::nullopt;
  }
  // The longest time between two consecutive beats that overlaps [from, to].
  std::optional<double> longest_gap_ms(Clock::time_point from, Clock::time_point to) {
    std::lock_guard lock(mu_);
    std::optional<double> best;
    for (size_t i = 1; i < beats_.size(); ++i) {
      if (beats_[i].seen < from || beats_[i - 1].seen > to) continue;
      double gap = ms_between(beats_[i - 1].seen, beats_[i].seen);
      if (!best || gap > *best) best = gap;
    }
    return best;
  }

 private:
  void follow() {
    int fd = -1;
    std::string partial;
    std::vector<char> buf(1 << 16);
    while (!stop_) {
      if (fd < 0) fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
      ssize_t n = fd >= 0 ? read(fd, buf.data(), buf.size()) : 0;
      if (n <= 0) {
        std::this_thread::sleep_for(1ms);
        continue;
      }
      Clock::time_point now = Clock::now();
      partial.append(buf.data(), static_cast<size_t>(n));
      size_t start = 0, nl;
      std::lock_guard lock(mu_);
      while ((nl = partial.find('\n', start)) != std::string::npos) {
        std::string_view line(partial.data() + start, nl - start);
        if (line.substr(0, 3) == "HB ") {
          beats_.push_back({std::atoi(std::string(line.substr(3, 12)).c_str()), now});
        }
        if (size_t t = line.find("total="); t != std::string_view::npos) {
          dirtied_mib_ = std::max<uint64_t>(
              dirtied_mib_,
              std::strtoull(std::string(line.substr(t + 6, 20)).c_str(), nullptr, 10));
        }
        if (line.find("MISMATCH") != std::string_view::npos) ++mismatches_;
        text_tail_ = std::string(line);
        start = nl + 1;
      }
      partial.erase(0, start);
    }
    if (fd >= 0) close(fd);
  }

  std::string path_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<Beat> beats_;
  uint64_t dirtied_mib_ = 0;
  uint64_t mismatches_ = 0;
  std::string text_tail_;
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------
// Cases.

struct Workload {
  std::string name;    // "idle", "dirty 64 MiB/s", "dirty max"
  std::string kernel;  // the guest ELF (the same file for both systems)
  std::string cmdline;
  uint64_t dirty_mib;  // 0: idle
};

const int kHeartbeatMs = 10;

Workload make_workload(const std::string& key) {
  std::string guests = VMCTL_GUEST_DIR;
  if (key == "idle") {
    return {"idle", guests + "/heartbeat.elf", fmt::format("hb_ms={}", kHeartbeatMs), 0};
  }
  if (key == "dirty64") {
    return {"dirty 128 MiB at 64 MiB/s", guests + "/dirtier.elf",
            fmt::format("mib=128 rate=64 hb_ms={}", kHeartbeatMs), 128};
  }
  if (key == "dirtymax") {
    return {"dirty 128 MiB at max", guests + "/dirtier.elf",
            fmt::format("mib=128 rate=0 hb_ms={}", kHeartbeatMs), 128};
  }
  throw Failure("unknown workload " + key + " (idle, dirty64, dirtymax)");
}

// The guest is going: beating for a while, and (dirtier) through its whole region once.
bool guest_going(ConsoleWatch& w, const Workload& wl) {
  return w.wait(
      [&](ConsoleWatch& c) {
        return c.beats().size() >= 20 && (wl.dirty_mib == 0 || c.dirtied_mib() >= wl.dirty_mib);
      },
      120s);
}

// qemu-tls: qemu-tuned with mutual TLS (tls-creds-x509) on the migration, as vmctl has it by
// default. vmctl-plain: vmctl between two daemons that list each other's network as trusted
// (plaintext data connections), the same protection as QEMU's plain TCP.
enum class System { kVmctl, kVmctlPlain, kQemuDefault, kQemuTuned, kQemuTls };
const char* system_name(System s) {
  switch (s) {
    case System::kVmctl:
      return "vmctl";
    case System::kVmctlPlain:
      return "vmctl-plain";
    case System::kQemuDefault:
      return "qemu-default";
    case System::kQemuTuned:
      return "qemu-tuned";
    case System::kQemuTls:
      return "qemu-tls";
  }
  return "?";
}

// One repetition of one operation.
struct Sample {
  bool ok = false;
  bool gave_up = false;  // the migration did not converge within the budget (a result, not a bug)
  std::string error;
  double total_s = 0;                 // measured here: request to the operation's completion
  std::optional<double> downtime_ms;  // the system's own figure
  std::optional<double> gap_ms;       // seen by the guest (heartbeats)
  uint64_t bytes = 0;                 // on the wire (migrate) or in the file (save, restore)
  std::optional<double> rounds;       // vmctl: pre-copy rounds; QEMU: dirty-sync-count
  // CPU seconds of every process of the system over the operation, the guest's vCPU threads
  // apart (cpu_accounting.h); migrations only.
  std::optional<double> vmm_cpu_s, guest_cpu_s;
  json own = json::object();  // the system's raw figures
};

void record_cpu(Sample& s, CpuWindow* window) {
  if (!window) return;
  if (std::optional<CpuWindow::Split> split = window->finish()) {
    s.vmm_cpu_s = split->vmm_s();
    s.guest_cpu_s = split->guest_s;
  }
}

// ---------------------------------------------------------------------------------------------
// QEMU.

class ChildProcess {
 public:
  // `group`: the cgroup the child runs in (CPU accounting), if any.
  ChildProcess(const std::vector<std::string>& args, const std::string& log,
               const CpuGroup* group = nullptr) {
    pid_ = fork();
    if (pid_ == 0) {
      if (group) group->enter();
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (null >= 0) dup2(null, 0);
      std::vector<char*> argv;
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execvp(argv[0], argv.data());
      _exit(127);
    }
    if (pid_ < 0) throw Failure(fmt::format("fork: {}", std::strerror(errno)));
  }
  ~ChildProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  bool exited() {
    if (pid_ <= 0) return true;
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return true;
    }
    return false;
  }

 private:
  pid_t pid_ = -1;
};

// A QMP connection on a unix socket: line-delimited JSON, events kept until asked for.
class Qmp {
 public:
  Qmp(const std::string& path, ChildProcess& process, const std::string& log) : log_(log) {
    Clock::time_point deadline = Clock::now() + 20s;
    for (;;) {
      fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
      if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) break;
      close(fd_);
      fd_ = -1;
      if (process.exited() || Clock::now() > deadline) {
        throw Failure("QEMU did not come up: " + last_lines(log_));
      }
      std::this_thread::sleep_for(5ms);
    }
    json greeting = read_message(Clock::now() + 10s);
    if (!greeting.contains("QMP")) throw Failure("QMP: no greeting");
    execute("qmp_capabilities");
  }
  ~Qmp() {
    if (fd_ >= 0) close(fd_);
  }
  Qmp(const Qmp&) = delete;
  Qmp& operator=(const Qmp&) = delete;

  json execute(const std::string& command, const json& arguments = nullptr) {
    json request = {{"execute", command}};
    if (!arguments.is_null()) request["arguments"] = arguments;
    std::string line = request.dump() + "\n";
    if (write(fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
      throw Failure("QMP " + command + ": write failed: " + last_lines(log_));
    }
    for (;;) {
      json reply = read_message(Clock::now() + 60s);
      if (reply.contains("event")) {
        events_.push_back(reply);
        continue;
      }
      if (reply.contains("error")) {
        throw Failure("QMP " + command + ": " + reply["error"].value("desc", reply.dump()));
      }
      return reply.value("return", json::object());
    }
  }

  // Waits for a MIGRATION event whose status is one of `statuses`; returns that status, or an
  // empty string at the deadline.
  std::string wait_migration(const std::vector<std::string>& statuses, Clock::time_point deadline) {
    for (;;) {
      while (!events_.empty()) {
        json e = events_.front();
        events_.pop_front();
        if (e.value("event", "") != "MIGRATION") continue;
        std::string status = e["data"].value("status", "");
        if (std::find(statuses.begin(), statuses.end(), status) != statuses.end()) return status;
      }
      std::optional<json> m = try_read_message(deadline);
      if (!m) return "";
      if (m->contains("event")) events_.push_back(*m);
    }
  }

  static std::string last_lines(const std::string& path) {
    std::ifstream in(path);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.size() > 400) text = text.substr(text.size() - 400);
    return text.empty() ? "(no output)" : text;
  }

 private:
  std::optional<json> try_read_message(Clock::time_point deadline) {
    for (;;) {
      size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
        return json::parse(line);
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[65536];
      ssize_t n = read(fd_, chunk, sizeof chunk);
      if (n <= 0) throw Failure("QMP: QEMU went away: " + last_lines(log_));
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }
  json read_message(Clock::time_point deadline) {
    std::optional<json> m = try_read_message(deadline);
    if (!m) throw Failure("QMP: no answer from QEMU");
    return *m;
  }

  int fd_ = -1;
  std::string log_;
  std::string buffer_;
  std::deque<json> events_;
};

struct Env {
  std::string dir;  // scratch: sockets, serial logs, snapshot files
  std::string qemu;
  int max_seconds = 30;
  int next_port = 0;
  int serial = 0;
  DaemonProcess* a = nullptr;
  DaemonProcess* b = nullptr;
  int port_b = 0;
  // The vmctl-plain pair: both trust 127.0.0.1/32 ([migration] trusted_networks).
  DaemonProcess* plain_a = nullptr;
  DaemonProcess* plain_b = nullptr;
  int plain_port_b = 0;
  // Each system's processes, for CPU time (null where the host offers no cgroup to us).
  const CpuGroup* vmctl_cpu = nullptr;
  const CpuGroup* plain_cpu = nullptr;
  const CpuGroup* qemu_cpu = nullptr;
  json qemu_defaults;        // QEMU's migration parameters before any tuning, for the report
  std::string qemu_tls_dir;  // the test CA and certificate under QEMU's file names
};

// One QEMU microvm: the guest ELF via -kernel, COM1 to a file, QMP on a unix socket.
class QemuVm {
 public:
  // `incoming`: start with -incoming defer (and -S when `paused`).
  QemuVm(Env& env, uint64_t memory, const Workload& wl, bool incoming, bool paused)
      : base_(fmt::format("{}/qemu{}", env.dir, env.serial++)),
        process_(
            [&] {
              std::vector<std::string> args = {env.qemu, "-M", "microvm", "-enable-kvm",
                                               // This host's KVM refuses the host's
                                               // IA32_ARCH_CAPABILITIES value; the guest needs
                                               // none of it.
                                               "-cpu", "host,-arch-capabilities", "-smp", "1", "-m",
                                               fmt::format("{}M", memory >> 20), "-kernel",
                                               wl.kernel, "-append", wl.cmdline, "-nodefaults",
                                               "-no-user-config", "-display", "none", "-serial",
                                               "file:" + base_ + ".console", "-qmp",
                                               "unix:" + base_ + ".qmp,server=on,wait=off"};
              unlink((base_ + ".qmp").c_str());
              unlink((base_ + ".console").c_str());
              if (incoming) args.insert(args.end(), {"-incoming", "defer"});
              if (paused) args.push_back("-S");
              return args;
            }(),
            base_ + ".log", env.qemu_cpu),
        qmp_(base_ + ".qmp", process_, base_ + ".log") {
    // Completion is waited for on MIGRATION events rather than by polling query-migrate (which
    // would take QEMU's main loop lock while it migrates). Events change nothing else.
    qmp_.execute("migrate-set-capabilities",
                 {{"capabilities", json::array({{{"capability", "events"}, {"state", true}}})}});
  }
  ~QemuVm() {
    for (const char* suffix : {".qmp", ".console", ".log"}) unlink((base_ + suffix).c_str());
  }
  Qmp& qmp() { return qmp_; }
  std::string console_path() const { return base_ + ".console"; }

  // The tuned configuration: no bandwidth cap, and multifd where the transport allows it.
  void tune(bool multifd) {
    if (multifd) {
      qmp_.execute("migrate-set-capabilities",
                   {{"capabilities", json::array({{{"capability", "multifd"}, {"state", true}}})}});
      qmp_.execute("migrate-set-parameters", {{"multifd-channels", 2}});
    }
    // 1 TiB/s: no limit in practice (QEMU caps the value at SIZE_MAX, 0 is not "unlimited" in
    // every version).
    qmp_.execute("migrate-set-parameters", {{"max-bandwidth", int64_t{1} << 40}});
  }

  // Mutual TLS on the migration with the benchmark's certificates (the same as vmctld's):
  // the destination verifies the source's certificate, the source the destination's name.
  void use_tls(const Env& env, bool server) {
    qmp_.execute("object-add", {{"qom-type", "tls-creds-x509"},
                                {"id", "tls0"},
                                {"dir", env.qemu_tls_dir},
                                {"endpoint", server ? "server" : "client"},
                                {"verify-peer", true}});
    qmp_.execute("migrate-set-parameters", {{"tls-creds", "tls0"}, {"tls-hostname", "localhost"}});
  }

  // Resumes the guest. Right after a migration completes QEMU is still finishing it (run state
  // finish-migrate) and refuses `cont` for a moment: ask again until it takes it.
  void cont() {
    Clock::time_point deadline = Clock::now() + 10s;
    for (;;) {
      try {
        qmp_.execute("cont");
        return;
      } catch (const Failure& f) {
        if (std::string(f.what()).find("not finalized") == std::string::npos ||
            Clock::now() > deadline) {
          throw;
        }
      }
      std::this_thread::sleep_for(1ms);
    }
  }

  // Waits for the outgoing migration to finish; cancels it after `budget`. Returns the final
  // query-migrate.
  json finish_migration(Sample& s, Clock::duration budget) {
    std::string status =
        qmp_.wait_migration({"completed", "failed", "cancelled"}, Clock::now() + budget);
    if (status.empty()) {
      json before = qmp_.execute("query-migrate");
      qmp_.execute("migrate_cancel");
      qmp_.wait_migration({"cancelled", "failed", "completed"}, Clock::now() + 30s);
      s.gave_up = true;
      s.error = fmt::format("did not converge in {} s",
                            std::chrono::duration_cast<std::chrono::seconds>(budget).count());
      return before;
    }
    json info = qmp_.execute("query-migrate");
    if (status != "completed") {
      s.error = "QEMU migration " + status + ": " + info.value("error-desc", info.dump());
    }
    return info;
  }

 private:
  std::string base_;
  ChildProcess process_;
  Qmp qmp_;
};

void fill_from_query_migrate(Sample& s, const json& info) {
  s.own = info;
  if (info.contains("downtime")) s.downtime_ms = info["downtime"].get<double>();
  if (info.contains("ram")) {
    const json& ram = info["ram"];
    s.bytes = ram.value("transferred", uint64_t{0});
    if (ram.contains("dirty-sync-count")) s.rounds = ram["dirty-sync-count"].get<double>();
  }
}

void check_intact(ConsoleWatch& w, const std::string& who) {
  if (w.mismatches() != 0) {
    throw Failure(
        fmt::format("{}: the guest found {} corrupted pages: {}", who, w.mismatches(), w.tail()));
  }
}

Sample qemu_migrate(Env& env, uint64_t memory, const Workload& wl, bool tuned, bool tls) {
  Sample s;
  QemuVm dst(env, memory, wl, /*incoming=*/true, /*paused=*/false);
  QemuVm src(env, memory, wl, /*incoming=*/false, /*paused=*/false);
  ConsoleWatch src_console(src.console_path()), dst_console(dst.console_path());
  if (!guest_going(src_console, wl)) throw Failure("QEMU: the guest did not get going");
  if (env.qemu_defaults.is_null()) {
    env.qemu_defaults = src.qmp().execute("query-migrate-parameters");
    env.qemu_defaults["version"] = src.qmp().execute("query-version").value("qemu", json());
  }
  if (tuned) {
    dst.tune(true);
    src.tune(true);
  }
  if (tls) {
    dst.use_tls(env, /*server=*/true);
    src.use_tls(env, /*server=*/false);
  }
  std::string uri = fmt::format("tcp:127.0.0.1:{}", env.next_port++);
  dst.qmp().execute("migrate-incoming", {{"uri", uri}});
  std::optional<CpuWindow> cpu;
  if (env.qemu_cpu)
    cpu.emplace(*env.qemu_cpu, [](const std::string& thread) {
      return thread.rfind("CPU ", 0) == 0 && thread.find("/KVM") != std::string::npos;
    });
  Clock::time_point start = Clock::now();
  src.qmp().execute("migrate", {{"uri", uri}});
  json info = src.finish_migration(s, std::chrono::seconds(env.max_seconds));
  Clock::time_point end = Clock::now();
  record_cpu(s, cpu ? &*cpu : nullptr);
  s.total_s = seconds_between(start, end);
  fill_from_query_migrate(s, info);
  if (!s.error.empty()) return s;
  // The destination runs once it has loaded the state; the guest's next beat closes the gap.
  if (!dst_console.wait([](ConsoleWatch& c) { return !c.beats().empty(); }, 30s)) {
    throw Failure("QEMU: the destination guest did not beat: " + dst_console.tail());
  }
  std::vector<ConsoleWatch::Beat> before = src_console.beats();
  std::optional<ConsoleWatch::Beat> after = dst_console.first_beat_after(Clock::time_point());
  if (!before.empty() && after) s.gap_ms = ms_between(before.back().seen, after->seen);
  std::this_thread::sleep_for(200ms);
  check_intact(dst_console, "QEMU destination");
  s.ok = true;
  return s;
}

// QEMU snapshot: stop, migrate to "exec:cat > FILE", cont. Then restore: a new QEMU with -S
// -incoming, migrate-incoming "exec:cat FILE", cont.
std::pair<Sample, Sample> qemu_snapshot(Env& env, uint64_t memory, const Workload& wl, bool tuned) {
  Sample save, restore;
  std::string file = fmt::format("{}/qemu-{}.snap", env.dir, env.serial);
  {
    QemuVm src(env, memory, wl, false, false);
    ConsoleWatch console(src.console_path());
    if (!guest_going(console, wl)) throw Failure("QEMU: the guest did not get going");
    if (tuned) src.tune(/*multifd=*/false);  // multifd needs a socket transport
    Clock::time_point start = Clock::now();
    src.qmp().execute("stop");
    src.qmp().execute("migrate", {{"uri", "exec:cat > " + file}});
    json info = src.finish_migration(save, std::chrono::seconds(env.max_seconds));
    src.cont();
    Clock::time_point end = Clock::now();
    save.total_s = seconds_between(start, end);
    fill_from_query_migrate(save, info);
    save.bytes = file_size(file);
    if (!save.error.empty()) return {save, restore};
    if (!console.wait([&](ConsoleWatch& c) { return c.first_beat_after(end).has_value(); }, 30s)) {
      throw Failure("QEMU: the guest did not beat after the snapshot");
    }
    save.gap_ms = console.longest_gap_ms(start, end);
    check_intact(console, "QEMU after snapshot");
    save.ok = true;
  }
  {
    Clock::time_point start = Clock::now();
    QemuVm dst(env, memory, wl, /*incoming=*/true, /*paused=*/true);
    ConsoleWatch console(dst.console_path());
    dst.qmp().execute("migrate-incoming", {{"uri", "exec:cat " + file}});
    std::string status = dst.qmp().wait_migration(
        {"completed", "failed"}, Clock::now() + std::chrono::seconds(env.max_seconds));
    if (status != "completed") {
      restore.error = "QEMU restore: " + (status.empty() ? std::string("timed out") : status);
      unlink(file.c_str());
      return {save, restore};
    }
    dst.cont();
    Clock::time_point end = Clock::now();
    restore.total_s = seconds_between(start, end);
    restore.bytes = file_size(file);
    if (!console.wait([](ConsoleWatch& c) { return !c.beats().empty(); }, 30s)) {
      throw Failure("QEMU: the restored guest did not beat");
    }
    restore.gap_ms = ms_between(start, console.beats().front().seen);
    std::this_thread::sleep_for(200ms);
    check_intact(console, "QEMU after restore");
    restore.ok = true;
  }
  unlink(file.c_str());
  return {save, restore};
}

// ---------------------------------------------------------------------------------------------
// vmctl: two vmctld on loopback.

std::string create_vmctl_vm(Env& env, DaemonProcess& at, uint64_t memory, const Workload& wl) {
  std::string name = fmt::format("cmp{}", env.serial++);
  v1::CreateVmRequest create;
  create.set_name(name);
  create.set_start(true);
  create.mutable_config()->set_memory_bytes(memory);
  create.mutable_config()->set_cpus(1);
  create.mutable_config()->set_kernel(wl.kernel);
  create.mutable_config()->set_cmdline(wl.cmdline);
  // vmctld pings its clients every second and drops a connection whose pings go unanswered for
  // 3 s; this process's idle channel (while QEMU cases run) may not answer them, and its next call
  // then fails with UNAVAILABLE before reaching the daemon. Such a call is simply made again.
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    v1::VmInfo info;
    grpc::Status st = at.stub().CreateVm(&context, create, &info);
    if (st.ok()) return name;
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE || attempt == 3) {
      throw Failure("vmctl create: " + st.error_message());
    }
  }
}

Sample vmctl_migrate(Env& env, uint64_t memory, const Workload& wl, bool plaintext) {
  Sample s;
  DaemonProcess& a = plaintext ? *env.plain_a : *env.a;
  DaemonProcess& b = plaintext ? *env.plain_b : *env.b;
  std::string name = create_vmctl_vm(env, a, memory, wl);
  struct Cleanup {
    DaemonProcess &a, &b;
    std::string name;
    ~Cleanup() {
      a.remove(name);
      b.remove(name);
    }
  } cleanup{a, b, name};
  std::string dst_path = b.console_path(name);
  unlink(dst_path.c_str());
  ConsoleWatch src_console(a.console_path(name)), dst_console(dst_path);
  if (!guest_going(src_console, wl)) throw Failure("vmctl: the guest did not get going");
  grpc::ClientContext context;
  v1::MigrateRequest request;
  request.set_name(name);
  request.set_destination(fmt::format("127.0.0.1:{}", plaintext ? env.plain_port_b : env.port_b));
  request.set_max_seconds(static_cast<uint32_t>(env.max_seconds));  // the run's budget
  const CpuGroup* group = plaintext ? env.plain_cpu : env.vmctl_cpu;
  std::optional<CpuWindow> cpu;
  if (group)
    cpu.emplace(*group, [](const std::string& thread) { return thread.rfind("vcpu", 0) == 0; });
  Clock::time_point start = Clock::now();
  auto reader = a.stub().Migrate(&context, request);
  v1::MigrationProgress p, last;
  while (reader->Read(&p)) last = p;
  grpc::Status result = reader->Finish();
  s.total_s = seconds_between(start, Clock::now());
  record_cpu(s, cpu ? &*cpu : nullptr);
  s.bytes = last.bytes_sent();
  s.rounds = last.round() + 1;
  s.own = {{"elapsed_seconds", last.elapsed_seconds()},
           {"phase", last.phase()},
           {"data_transport", last.data_transport()},
           {"bandwidth_mib_s", last.bandwidth_mib_s()},
           {"downtime",
            {{"total_ms", last.downtime().total_ms()},
             {"pause_to_last_page_ms", last.downtime().pause_to_last_page_ms()},
             {"last_page_to_state_ms", last.downtime().last_page_to_state_ms()},
             {"state_to_resumed_ms", last.downtime().state_to_resumed_ms()},
             {"state_to_ready_ms", last.downtime().state_to_ready_ms()},
             {"switchover_ms", last.downtime().switchover_ms()}}}};
  if (!result.ok()) {
    s.error = result.error_message();
    // Running out of rounds or time is the engine giving up (the VM stays at the source).
    s.gave_up = s.error.find("converge") != std::string::npos ||
                s.error.find("rounds") != std::string::npos ||
                s.error.find("budget") != std::string::npos ||
                s.error.find("gave up") != std::string::npos;
    return s;
  }
  if (last.data_transport() != (plaintext ? "plaintext" : "tls")) {
    throw Failure("vmctl: the migration's data went over " + last.data_transport() + ", not " +
                  (plaintext ? "plaintext" : "tls") + ": the daemons' configuration is off");
  }
  s.downtime_ms = last.downtime().total_ms();
  if (!dst_console.wait([](ConsoleWatch& c) { return !c.beats().empty(); }, 30s)) {
    throw Failure("vmctl: the destination guest did not beat: " + dst_console.tail());
  }
  std::vector<ConsoleWatch::Beat> before = src_console.beats();
  std::optional<ConsoleWatch::Beat> after = dst_console.first_beat_after(Clock::time_point());
  if (!before.empty() && after) s.gap_ms = ms_between(before.back().seen, after->seen);
  std::this_thread::sleep_for(200ms);
  check_intact(dst_console, "vmctl destination");
  s.ok = true;
  return s;
}

std::pair<Sample, Sample> vmctl_snapshot(Env& env, uint64_t memory, const Workload& wl) {
  Sample save, restore;
  std::string name = create_vmctl_vm(env, *env.a, memory, wl);
  std::string restored = name + "r";
  std::string file = fmt::format("{}/vmctl-{}.snap", env.dir, name);
  struct Cleanup {
    Env& env;
    std::string name, restored, file;
    ~Cleanup() {
      env.a->remove(name);
      env.a->remove(restored);
      unlink(file.c_str());
    }
  } cleanup{env, name, restored, file};
  {
    ConsoleWatch console(env.a->console_path(name));
    if (!guest_going(console, wl)) throw Failure("vmctl: the guest did not get going");
    grpc::ClientContext context;
    v1::SnapshotRequest request;
    request.set_name(name);
    request.set_path(file);
    request.set_compression(-1);  // the default (what `vmctl snapshot` does)
    v1::SnapshotResponse response;
    Clock::time_point start = Clock::now();
    grpc::Status st = env.a->stub().Snapshot(&context, request, &response);
    Clock::time_point end = Clock::now();
    save.total_s = seconds_between(start, end);
    if (!st.ok()) {
      save.error = "vmctl snapshot: " + st.error_message();
      return {save, restore};
    }
    save.bytes = file_size(file);
    save.own = {{"seconds", response.seconds()},
                {"bytes", response.bytes()},
                {"pages", response.pages()},
                {"zero_pages", response.zero_pages()}};
    if (!console.wait([&](ConsoleWatch& c) { return c.first_beat_after(end).has_value(); }, 30s)) {
      throw Failure("vmctl: the guest did not beat after the snapshot");
    }
    save.gap_ms = console.longest_gap_ms(start, end);
    check_intact(console, "vmctl after snapshot");
    save.ok = true;
  }
  env.a->remove(name);
  {
    unlink(env.a->console_path(restored).c_str());
    ConsoleWatch console(env.a->console_path(restored));
    grpc::ClientContext context;
    v1::RestoreRequest request;
    request.set_name(restored);
    request.add_files(file);
    v1::VmInfo info;
    Clock::time_point start = Clock::now();
    grpc::Status st = env.a->stub().Restore(&context, request, &info);
    restore.total_s = seconds_between(start, Clock::now());
    if (!st.ok()) {
      restore.error = "vmctl restore: " + st.error_message();
      return {save, restore};
    }
    restore.bytes = save.bytes;
    if (!console.wait([](ConsoleWatch& c) { return !c.beats().empty(); }, 30s)) {
      throw Failure("vmctl: the restored guest did not beat: " + console.tail());
    }
    restore.gap_ms = ms_between(start, console.beats().front().seen);
    std::this_thread::sleep_for(200ms);
    check_intact(console, "vmctl after restore");
    restore.ok = true;
  }
  return {save, restore};
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report.

struct Spread {
  double min, median, max;
};
std::optional<Spread> spread(std::vector<double> v) {
  if (v.empty()) return std::nullopt;
  std::sort(v.begin(), v.end());
  double median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  return Spread{v.front(), median, v.back()};
}
json spread_json(const std::optional<Spread>& s) {
  if (!s) return nullptr;
  return {{"min", s->min}, {"median", s->median}, {"max", s->max}};
}
std::string spread_cell(const std::optional<Spread>& s, int decimals) {
  if (!s) return "-";
  if (s->min == s->max) return fmt::format("{:.{}f}", s->median, decimals);
  return fmt::format("{:.{}f} / {:.{}f} / {:.{}f}", s->min, decimals, s->median, decimals, s->max,
                     decimals);
}

// The figures of one system for one operation, over the successful repetitions.
struct Figures {
  std::vector<Sample> samples;
  int ok() const {
    return static_cast<int>(
        std::count_if(samples.begin(), samples.end(), [](const Sample& s) { return s.ok; }));
  }
  template <typename F>
  std::optional<Spread> of(F value) const {
    std::vector<double> v;
    for (const Sample& s : samples) {
      if (!s.ok) continue;
      std::optional<double> x = value(s);
      if (x) v.push_back(*x);
    }
    return spread(v);
  }
  std::optional<Spread> total() const {
    return of([](const Sample& s) { return std::optional<double>(s.total_s); });
  }
  std::optional<Spread> downtime() const {
    return of([](const Sample& s) { return s.downtime_ms; });
  }
  std::optional<Spread> gap() const {
    return of([](const Sample& s) { return s.gap_ms; });
  }
  std::optional<Spread> mib() const {
    return of([](const Sample& s) {
      return std::optional<double>(static_cast<double>(s.bytes) / (1 << 20));
    });
  }
  // CPU seconds of the VMM and its daemons (not the guest) per GiB on the wire.
  std::optional<Spread> cpu_per_gib() const {
    return of([](const Sample& s) -> std::optional<double> {
      if (!s.vmm_cpu_s || s.bytes == 0) return std::nullopt;
      return *s.vmm_cpu_s / (static_cast<double>(s.bytes) / (1u << 30));
    });
  }
  std::optional<Spread> rounds() const {
    return of([](const Sample& s) { return s.rounds; });
  }
  // A part of vmctl's own downtime breakdown (its "downtime" figures, DowntimeBreakdown).
  std::optional<Spread> downtime_part(const char* part) const {
    return of([part](const Sample& s) -> std::optional<double> {
      const json& d = s.own.value("downtime", json::object());
      if (!d.contains(part)) return std::nullopt;
      return d[part].get<double>();
    });
  }
  // Bytes moved per second of total time (median of the per-run figures).
  std::optional<Spread> mib_s() const {
    return of([](const Sample& s) {
      return std::optional<double>(static_cast<double>(s.bytes) / (1 << 20) / s.total_s);
    });
  }
};

struct CaseResult {
  std::string guest, workload, operation;
  std::map<System, Figures> systems;
};

std::optional<double> ratio(const std::optional<Spread>& a, const std::optional<Spread>& b) {
  if (!a || !b || b->median <= 0) return std::nullopt;
  return a->median / b->median;
}

// QEMU's best configuration for a case: the most successful runs, then the shortest median time.
System best_qemu(const CaseResult& c) {
  const Figures& d = c.systems.at(System::kQemuDefault);
  const Figures& t = c.systems.at(System::kQemuTuned);
  if (d.ok() != t.ok()) return d.ok() > t.ok() ? System::kQemuDefault : System::kQemuTuned;
  if (!d.total() || !t.total()) return System::kQemuDefault;
  return t.total()->median < d.total()->median ? System::kQemuTuned : System::kQemuDefault;
}

// The machine limit an operation is compared against: the TCP stream for migration, memcpy for
// writing and reading snapshot files (the page cache).
double limit_for(const CaseResult& c, const Limits& l) {
  return c.operation == "migrate" ? l.tcp_mib_s : l.memcpy_mib_s;
}

json sample_json(const Sample& s) {
  json j = {{"ok", s.ok}, {"total_s", s.total_s}, {"bytes", s.bytes}, {"own", s.own}};
  if (s.gave_up) j["gave_up"] = true;
  if (!s.error.empty()) j["error"] = s.error;
  if (s.downtime_ms) j["downtime_ms"] = *s.downtime_ms;
  if (s.gap_ms) j["heartbeat_gap_ms"] = *s.gap_ms;
  if (s.rounds) j["rounds"] = *s.rounds;
  if (s.vmm_cpu_s) j["vmm_cpu_s"] = *s.vmm_cpu_s;
  if (s.guest_cpu_s) j["guest_cpu_s"] = *s.guest_cpu_s;
  return j;
}

json ratio_json(const Figures& v, const Figures& q) {
  auto r = [](std::optional<double> x) { return x ? json(*x) : json(nullptr); };
  return {{"total_s", r(ratio(v.total(), q.total()))},
          {"downtime_ms", r(ratio(v.downtime(), q.downtime()))},
          {"heartbeat_gap_ms", r(ratio(v.gap(), q.gap()))},
          {"mib", r(ratio(v.mib(), q.mib()))},
          {"vmm_cpu_s_per_gib", r(ratio(v.cpu_per_gib(), q.cpu_per_gib()))}};
}

json case_json(const CaseResult& c, const Limits& limits) {
  json systems = json::object();
  for (const auto& [system, f] : c.systems) {
    json runs = json::array();
    for (const Sample& s : f.samples) runs.push_back(sample_json(s));
    std::optional<Spread> rate = f.mib_s();
    systems[system_name(system)] = {
        {"ok_runs", f.ok()},
        {"runs", runs},
        {"total_s", spread_json(f.total())},
        {"downtime_ms", spread_json(f.downtime())},
        {"heartbeat_gap_ms", spread_json(f.gap())},
        {"mib", spread_json(f.mib())},
        {"rounds", spread_json(f.rounds())},
        {"vmm_cpu_s_per_gib", spread_json(f.cpu_per_gib())},
        {"mib_s", spread_json(rate)},
        {"fraction_of_limit", rate ? json(rate->median / limit_for(c, limits)) : json(nullptr)}};
  }
  json j = {{"guest", c.guest},
            {"workload", c.workload},
            {"operation", c.operation},
            {"limit", c.operation == "migrate" ? "loopback TCP" : "memcpy"},
            {"systems", systems}};
  if (c.systems.count(System::kVmctl) && c.systems.count(System::kQemuDefault) &&
      c.systems.count(System::kQemuTuned)) {
    System best = best_qemu(c);
    j["best_qemu"] = system_name(best);
    const Figures& v = c.systems.at(System::kVmctl);
    std::vector<std::pair<const char*, System>> others = {
        {"ratio_vs_qemu_default", System::kQemuDefault}, {"ratio_vs_qemu_best", best}};
    if (c.systems.count(System::kQemuTls))
      others.push_back({"ratio_vs_qemu_tls", System::kQemuTls});
    for (auto [key, other] : others) {
      j[key] = ratio_json(v, c.systems.at(other));
    }
  }
  if (c.systems.count(System::kVmctlPlain) && c.systems.count(System::kQemuTuned)) {
    j["ratio_plain_vs_qemu_tuned"] =
        ratio_json(c.systems.at(System::kVmctlPlain), c.systems.at(System::kQemuTuned));
  }
  return j;
}

void add_rows(Report& report, const CaseResult& c, const Limits& limits) {
  for (const auto& [system, f] : c.systems) {
    std::optional<Spread> rate = f.mib_s();
    std::string note;
    for (const Sample& s : f.samples) {
      if (!s.ok) note = s.gave_up ? "gave up: " + s.error : "failed: " + s.error;
    }
    if (note.size() > 60) note = note.substr(0, 57) + "...";
    report.add({{"guest", c.guest},
                {"workload", c.workload},
                {"op", c.operation},
                {"system", system_name(system)},
                {"ok", fmt::format("{}/{}", f.ok(), f.samples.size())},
                {"total s", spread_cell(f.total(), 3)},
                {"downtime ms", spread_cell(f.downtime(), 1)},
                {"hb gap ms", spread_cell(f.gap(), 1)},
                {"MiB", spread_cell(f.mib(), 1)},
                {"rounds", spread_cell(f.rounds(), 0)},
                {"CPU s/GiB", spread_cell(f.cpu_per_gib(), 2)},
                {"MiB/s", rate ? fmt::format("{:.0f}", rate->median) : "-"},
                {"of limit",
                 rate ? fmt::format("{:.1f}%", 100 * rate->median / limit_for(c, limits)) : "-"},
                {"note", note}});
  }
  auto cell = [](std::optional<double> r) { return r ? fmt::format("x{:.2f}", *r) : "-"; };
  auto ratio_row = [&](const Figures& v, const Figures& q, const std::string& label) {
    report.add({{"guest", c.guest},
                {"workload", c.workload},
                {"op", c.operation},
                {"system", label},
                {"total s", cell(ratio(v.total(), q.total()))},
                {"downtime ms", cell(ratio(v.downtime(), q.downtime()))},
                {"hb gap ms", cell(ratio(v.gap(), q.gap()))},
                {"MiB", cell(ratio(v.mib(), q.mib()))},
                {"CPU s/GiB", cell(ratio(v.cpu_per_gib(), q.cpu_per_gib()))}});
  };
  // Plaintext against plain TCP: the same (lack of) protection.
  if (c.systems.count(System::kVmctlPlain) && c.systems.count(System::kQemuTuned)) {
    ratio_row(c.systems.at(System::kVmctlPlain), c.systems.at(System::kQemuTuned),
              "vmctl-plain/qemu-tuned (same protection)");
  }
  if (!c.systems.count(System::kVmctl) || !c.systems.count(System::kQemuDefault) ||
      !c.systems.count(System::kQemuTuned)) {
    return;
  }
  const Figures& v = c.systems.at(System::kVmctl);
  System best = best_qemu(c);
  std::vector<System> others = {System::kQemuDefault};
  if (best != System::kQemuDefault) others.push_back(best);
  // vmctl always migrates over mutual TLS: this is the comparison with the same protection.
  if (c.systems.count(System::kQemuTls)) others.push_back(System::kQemuTls);
  for (System other : others) {
    ratio_row(v, c.systems.at(other),
              fmt::format("vmctl/{}{}", system_name(other),
                          other == best               ? " (best)"
                          : other == System::kQemuTls ? " (same protection)"
                                                      : ""));
  }
}

struct Options {
  std::vector<std::string> sizes = {"512M", "2G"};
  std::vector<std::string> workloads = {"idle", "dirty64", "dirtymax"};
  std::vector<std::string> operations = {"migrate", "snapshot"};
  std::vector<std::string> systems = {"vmctl", "vmctl-plain", "qemu-default", "qemu-tuned",
                                      "qemu-tls"};
  int repeats = 3;
  int max_seconds = 30;
  bool smoke = false;
  bool limits_only = false;
  std::string qemu = "qemu-system-x86_64";
  std::string json_path, markdown_path;
};

int run(Options o) {
  if (o.smoke) {
    o.sizes = {"128M"};
    o.workloads = {"idle"};
    o.repeats = 1;
  }
  std::vector<System> systems;
  for (const std::string& s : o.systems) {
    if (s == "vmctl")
      systems.push_back(System::kVmctl);
    else if (s == "vmctl-plain")
      systems.push_back(System::kVmctlPlain);
    else if (s == "qemu-default")
      systems.push_back(System::kQemuDefault);
    else if (s == "qemu-tuned")
      systems.push_back(System::kQemuTuned);
    else if (s == "qemu-tls")
      systems.push_back(System::kQemuTls);
    else
      throw Failure("unknown system " + s +
                    " (vmctl, vmctl-plain, qemu-default, qemu-tuned, qemu-tls)");
  }
  bool want_qemu = std::any_of(systems.begin(), systems.end(), [](System s) {
    return s != System::kVmctl && s != System::kVmctlPlain;
  });
  if (want_qemu && std::system(("command -v " + o.qemu + " >/dev/null 2>&1").c_str()) != 0) {
    throw Failure(o.qemu +
                  " is not installed (apt-get install qemu-system-x86, or scripts/dev.sh "
                  "bench-qemu which installs it)");
  }
  std::vector<Workload> workloads;
  for (const std::string& w : o.workloads) workloads.push_back(make_workload(w));

  Env env;
  env.dir = fmt::format("/tmp/vmctl-compare-bench-{}", getpid());
  env.qemu = o.qemu;
  env.max_seconds = o.max_seconds;
  env.next_port = 20000 + (getpid() % 500) * 20;
  std::string tls = env.dir + "/tls";
  if (std::system(("mkdir -p " + env.dir +
                   " && bash " VMCTL_SOURCE_DIR "/scripts/make-test-certs.sh " + tls +
                   " 127.0.0.1 >/dev/null")
                      .c_str()) != 0) {
    throw Failure("cannot make TLS certificates (openssl?)");
  }
  // QEMU reads its credentials from fixed names in one folder; one certificate serves both ends.
  env.qemu_tls_dir = env.dir + "/qemu-tls";
  if (std::system(fmt::format("mkdir -p {0} && cp {1}/ca.pem {0}/ca-cert.pem && for e in server "
                              "client; do cp {1}/node.pem {0}/$e-cert.pem && cp {1}/node.key "
                              "{0}/$e-key.pem; done",
                              env.qemu_tls_dir, tls)
                      .c_str()) != 0) {
    throw Failure("cannot lay out QEMU's TLS credentials in " + env.qemu_tls_dir);
  }

  std::fprintf(stderr, "compare_bench: measuring the machine's limits...\n");
  Limits limits;
  limits.memcpy_mib_s = memcpy_mib_s(o.smoke ? (256u << 20) : (1u << 30), o.smoke ? 2 : 4);
  limits.tcp_mib_s = loopback_tcp_mib_s(o.smoke ? (1ull << 30) : (4ull << 30));
  std::fprintf(stderr, "compare_bench: memcpy %.0f MiB/s, loopback TCP (one stream) %.0f MiB/s\n",
               limits.memcpy_mib_s, limits.tcp_mib_s);
  // One vmctl data connection, through the product's own sender and receiver.
  const uint64_t connection_bytes = o.smoke ? (256ull << 20) : (1ull << 30);
  limits.data_connection_plain_mib_s = data_connection_mib_s(connection_bytes, "");
  limits.data_connection_tls_mib_s = data_connection_mib_s(connection_bytes, tls);
  std::fprintf(stderr,
               "compare_bench: one data connection: plaintext %.0f MiB/s (%.0f%% of TCP), TLS %.0f "
               "MiB/s (%.0f%%)\n",
               *limits.data_connection_plain_mib_s,
               100 * *limits.data_connection_plain_mib_s / limits.tcp_mib_s,
               *limits.data_connection_tls_mib_s,
               100 * *limits.data_connection_tls_mib_s / limits.tcp_mib_s);
  if (o.limits_only) {
    std::system(("rm -rf " + env.dir).c_str());
    return 0;
  }

  Report report(
      "vmctl vs QEMU (min / median / max over the runs; ratio rows: vmctl median / "
      "QEMU median)",
      {"guest", "workload", "op", "system", "ok", "total s", "downtime ms", "hb gap ms", "MiB",
       "rounds", "CPU s/GiB", "MiB/s", "of limit", "note"});
  report.set_text_columns(4);
  // Where vmctl's switchover downtime goes (its own figures): the source pauses the VM and sends
  // the last dirty pages, then the vCPU and device records; the destination restores them and
  // says READY; then SWITCHOVER goes out and RESUMED comes back.
  static const char* const kDowntimeParts[] = {"pause_to_last_page_ms", "last_page_to_state_ms",
                                               "state_to_ready_ms", "switchover_ms", "total_ms"};
  static const char* const kDowntimePartColumns[] = {"pause to last page", "last page to state",
                                                     "state to ready", "switchover", "total"};
  Report downtime_parts(
      "vmctl switchover downtime by part, ms (min / median / max): pause to last page, last page "
      "to vCPU and device state, state to the destination's READY, SWITCHOVER to RESUMED",
      {"guest", "workload", kDowntimePartColumns[0], kDowntimePartColumns[1],
       kDowntimePartColumns[2], kDowntimePartColumns[3], kDowntimePartColumns[4]});
  downtime_parts.set_text_columns(2);
  json cases = json::array();
  bool hard_failure = false;
  int port_a = 17000 + getpid() % 1000 + 500;
  env.port_b = port_a + 1000;
  // One cgroup per system for its CPU time (cpu_accounting.h); they outlive the processes.
  const std::string cg = fmt::format("vmctl-compare-bench-{}", getpid());
  std::unique_ptr<CpuGroup> vmctl_cpu = CpuGroup::create(cg + "-vmctl");
  std::unique_ptr<CpuGroup> plain_cpu = CpuGroup::create(cg + "-vmctl-plain");
  std::unique_ptr<CpuGroup> qemu_cpu = CpuGroup::create(cg + "-qemu");
  if (!vmctl_cpu || !plain_cpu || !qemu_cpu) {
    std::fprintf(stderr, "compare_bench: no cgroup for CPU accounting here: CPU s/GiB left out\n");
  } else {
    env.vmctl_cpu = vmctl_cpu.get();
    env.plain_cpu = plain_cpu.get();
    env.qemu_cpu = qemu_cpu.get();
  }
  {
    DaemonProcess a(env.dir + "/a", port_a, tls, "", env.vmctl_cpu),
        b(env.dir + "/b", env.port_b, tls, "", env.vmctl_cpu);
    env.a = &a;
    env.b = &b;
    // The plaintext pair: both list 127.0.0.1 as a trusted migration network.
    const std::string trusting = env.dir + "/trusted.toml";
    std::ofstream(trusting) << "[migration]\ntrusted_networks = [\"127.0.0.1/32\"]\n";
    env.plain_port_b = env.port_b + 1;
    DaemonProcess plain_a(env.dir + "/pa", port_a + 1, tls, trusting, env.plain_cpu),
        plain_b(env.dir + "/pb", env.plain_port_b, tls, trusting, env.plain_cpu);
    env.plain_a = &plain_a;
    env.plain_b = &plain_b;
    for (const std::string& size_text : o.sizes) {
      Result<uint64_t> size = parse_size(size_text);
      if (!size.ok()) throw Failure(size.error().message());
      for (const Workload& wl : workloads) {
        CaseResult migrate{format_size(*size), wl.name, "migrate", {}};
        CaseResult save{format_size(*size), wl.name, "save", {}};
        CaseResult restore{format_size(*size), wl.name, "restore", {}};
        for (System system : systems) {
          for (int rep = 0; rep < o.repeats; ++rep) {
            for (const std::string& op : o.operations) {
              // TLS changes nothing in a snapshot file.
              if ((system == System::kQemuTls || system == System::kVmctlPlain) &&
                  op != "migrate") {
                continue;
              }
              std::fprintf(stderr, "compare_bench: %s %s %s %s run %d/%d...\n",
                           format_size(*size).c_str(), wl.name.c_str(), op.c_str(),
                           system_name(system), rep + 1, o.repeats);
              auto note = [&](const Sample& s) {
                if (!s.ok) hard_failure |= !s.gave_up;
                std::fprintf(stderr, "compare_bench:   %s %.3f s%s%s\n",
                             s.ok ? "ok" : (s.gave_up ? "gave up" : "FAILED"), s.total_s,
                             s.error.empty() ? "" : ": ", s.error.c_str());
              };
              try {
                if (op == "migrate") {
                  const bool vmctl = system == System::kVmctl || system == System::kVmctlPlain;
                  Sample s = vmctl ? vmctl_migrate(env, *size, wl, system == System::kVmctlPlain)
                                   : qemu_migrate(env, *size, wl, system != System::kQemuDefault,
                                                  system == System::kQemuTls);
                  note(s);
                  migrate.systems[system].samples.push_back(s);
                } else if (op == "snapshot") {
                  auto [sv, rs] = system == System::kVmctl
                                      ? vmctl_snapshot(env, *size, wl)
                                      : qemu_snapshot(env, *size, wl, system == System::kQemuTuned);
                  note(sv);
                  note(rs);
                  save.systems[system].samples.push_back(sv);
                  restore.systems[system].samples.push_back(rs);
                } else {
                  throw Failure("unknown operation " + op + " (migrate, snapshot)");
                }
              } catch (const Failure& f) {
                Sample s;
                s.error = f.what();
                note(s);
                (op == "migrate" ? migrate : save).systems[system].samples.push_back(s);
                if (op != "migrate") restore.systems[system].samples.push_back(s);
              }
            }
          }
        }
        if (auto v = migrate.systems.find(System::kVmctl); v != migrate.systems.end()) {
          json row = {{"guest", migrate.guest}, {"workload", migrate.workload}};
          for (size_t i = 0; i < std::size(kDowntimeParts); ++i) {
            row[kDowntimePartColumns[i]] =
                spread_cell(v->second.downtime_part(kDowntimeParts[i]), 2);
          }
          downtime_parts.add(row);
        }
        for (CaseResult* c : {&migrate, &save, &restore}) {
          if (c->systems.empty()) continue;
          add_rows(report, *c, limits);
          cases.push_back(case_json(*c, limits));
        }
      }
    }
  }
  std::system(("rm -rf " + env.dir).c_str());

  std::string limits_line = fmt::format(
      "Machine limits: memcpy {:.0f} MiB/s, one loopback TCP stream {:.0f} MiB/s. \"of limit\": "
      "MiB/s as a share of TCP (migrate) or memcpy (save, restore).\n\nOne vmctl data connection "
      "(page runs from guest memory to guest memory over loopback, the product's sender and "
      "receiver): plaintext {:.0f} MiB/s ({:.0f}% of the TCP stream), mutual TLS {:.0f} MiB/s "
      "({:.0f}%).",
      limits.memcpy_mib_s, limits.tcp_mib_s, *limits.data_connection_plain_mib_s,
      100 * *limits.data_connection_plain_mib_s / limits.tcp_mib_s,
      *limits.data_connection_tls_mib_s,
      100 * *limits.data_connection_tls_mib_s / limits.tcp_mib_s);
  std::string markdown = report.markdown() + "\n" + limits_line + "\n";
  if (std::find(o.operations.begin(), o.operations.end(), "migrate") != o.operations.end()) {
    markdown += "\n" + downtime_parts.markdown();
  }
  std::fputs(markdown.c_str(), stdout);
  json out = {{"benchmark", "vmctl vs QEMU"},
              {"context",
               {{"host", host_context()},
                {"limits_mib_s",
                 {{"memcpy", limits.memcpy_mib_s},
                  {"loopback_tcp", limits.tcp_mib_s},
                  {"data_connection_plaintext", *limits.data_connection_plain_mib_s},
                  {"data_connection_tls", *limits.data_connection_tls_mib_s}}},
                {"repeats", o.repeats},
                {"max_seconds", o.max_seconds},
                {"heartbeat_ms", kHeartbeatMs},
                {"qemu", o.qemu},
                {"qemu_default_migration_parameters", env.qemu_defaults}}},
              {"cases", cases}};
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    f << out.dump(2) << "\n";
    if (!f) throw Failure("cannot write " + o.json_path);
    std::printf("JSON: %s\n", o.json_path.c_str());
  }
  if (!o.markdown_path.empty()) {
    std::ofstream f(o.markdown_path);
    f << markdown;
    if (!f) throw Failure("cannot write " + o.markdown_path);
    std::printf("Markdown: %s\n", o.markdown_path.c_str());
  }
  if (hard_failure) {
    std::fprintf(stderr, "compare_bench: some runs failed (see the note column)\n");
    return 1;
  }
  // The smoke run is a test: every system must have done every operation.
  if (o.smoke) {
    for (const json& c : cases) {
      for (const auto& [name, s] : c["systems"].items()) {
        if (s["ok_runs"].get<int>() != o.repeats) {
          std::fprintf(stderr, "compare_bench: %s %s did not complete\n", name.c_str(),
                       c["operation"].get<std::string>().c_str());
          return 1;
        }
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace vmctl::bench

int main(int argc, char** argv) {
  using namespace vmctl;
  signal(SIGPIPE, SIG_IGN);
  CLI::App app(
      "vmctl vs QEMU on the same guest, memory, workload and machine: live migration over "
      "loopback, snapshot save and restore; min/median/max, ratios, fractions of machine limits.");
  bench::Options o;
  app.add_option("--sizes", o.sizes, "Guest RAM sizes")->delimiter(',')->capture_default_str();
  app.add_option("--workloads", o.workloads, "idle, dirty64 (128 MiB at 64 MiB/s), dirtymax")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--operations", o.operations, "migrate, snapshot (save and restore)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--systems", o.systems, "vmctl, vmctl-plain, qemu-default, qemu-tuned, qemu-tls")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--repeats", o.repeats, "Runs per case and system")->capture_default_str();
  app.add_option("--max-seconds", o.max_seconds,
                 "Budget per migration: longer is 'gave up' (QEMU: migrate_cancel; vmctl: "
                 "max_seconds)")
      ->capture_default_str();
  app.add_flag("--smoke", o.smoke, "One small case (128 MiB idle, one run) on every system");
  app.add_flag("--limits-only", o.limits_only,
               "Measure the machine's limits (memcpy, one TCP stream, one vmctl data connection) "
               "and stop");
  app.add_option("--qemu", o.qemu, "The QEMU binary")->capture_default_str();
  app.add_option("--json", o.json_path, "Write the results as JSON (one object per case)");
  app.add_option("--markdown", o.markdown_path, "Write the markdown table to this file too");
  CLI11_PARSE(app, argc, argv);
  try {
    return bench::run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compare_bench: %s\n", e.what());
    return 1;
  }
}
