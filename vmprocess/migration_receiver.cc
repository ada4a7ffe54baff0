#include "vmprocess/migration_receiver.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "base/fd.h"
#include "base/size.h"
#include "migrate/data_listener.h"
#include "state/restore_budget.h"
#include "state/stream.h"
#include "state/vm_state.h"
#include "vmprocess/console.h"
#include "vmprocess/control_server.h"
#include "vmprocess/session.h"

namespace vmctl::vmprocess {
namespace {

int fail(const Error& error) {
  std::fprintf(stderr, "vmctl: %s\n", error.message().c_str());
  return error.exit_code();
}

// The data connections must all arrive within this long of the listener's announcement.
constexpr std::chrono::seconds kJoinTimeout{60};

Result<std::unique_ptr<vmm::Vm>> prepare_vm(const ReceiveOptions& o,
                                            const state::RestoreOptions& options) {
  TRY(state::check_guest_fits_host("the offered guest", o.memory_bytes, o.vcpus, options.budget));
  vmm::VmConfig config;
  config.memory_size = o.memory_bytes;
  config.num_cpus = o.vcpus;
  config.console_output = options.console_output;
  config.for_restore = true;
  config.dirty_tracking = options.dirty_tracking;
  config.dirty_ring_entries = options.dirty_ring_entries;
  config.irqchip = TRY(vmm::parse_irqchip_mode(o.irqchip));
  return TRY_CTX(vmm::Vm::create(config), "preparing the VM the migration fills");
}

Result<std::string> read_feed_line(int fd) {
  std::string line;
  char c;
  while (line.size() < 512) {
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno("reading from vmctld", errno);
    if (n == 0) return Error::user("vmctld went away before the migration started");
    if (c == '\n') return line;
    line += c;
  }
  return Error::user("vmctld sent a line too long");
}

// Until READY, the daemon's end of the feed closing (it went away, or discarded the migration)
// ends the restore: every data connection is cut. stop() wakes the watch through an eventfd at
// once: the switchover waits on it (a poll timeout here was most of an idle guest's downtime).
class DaemonWatch {
 public:
  DaemonWatch(int feed, std::function<void()> on_gone)
      : wake_(::eventfd(0, EFD_CLOEXEC)), thread_([this, feed, on_gone = std::move(on_gone)] {
          pollfd p[2] = {{feed, POLLIN | POLLRDHUP, 0}, {wake_.get(), POLLIN, 0}};
          while (true) {
            int r = ::poll(p, wake_.valid() ? 2 : 1, wake_.valid() ? -1 : 100);
            if (stop_) return;
            if (r > 0 && p[0].revents) {
              on_gone();
              return;
            }
          }
        }) {}
  ~DaemonWatch() { stop(); }
  void stop() {
    stop_ = true;
    if (wake_.valid()) {
      uint64_t one = 1;
      (void)!::write(wake_.get(), &one, sizeof one);
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  Fd wake_;  // declared before thread_: the thread polls it from its first instruction
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace

int receive_migration(const ReceiveOptions& o) {
  block_stop_signals();
  Result<std::function<void(const uint8_t*, size_t)>> console =
      console_output(o.console_log, o.console_log_max);
  if (!console.ok()) return fail(console.error());
  if (o.control.empty() || o.migration_id.empty()) {
    return fail(Error::user("receive needs --control and --migration-id (vmctld runs it)"));
  }
  Fd feed(o.stream_fd);
  auto say = [&](const std::string& line) {
    std::string text = line + "\n";
    if (::write(feed.get(), text.data(), text.size()) < 0) {
      // The daemon is gone. Before READY that ends this process (the watch cuts the data
      // connections); after it the VM waits for the restarted daemon.
    }
  };
  auto failed = [&](const Error& error) {
    say("FAILED " + error.message());
    return fail(error);
  };
  Result<std::string> secret_line = read_feed_line(feed.get());
  if (!secret_line.ok()) return fail(secret_line.error());
  if (secret_line->rfind("SECRET ", 0) != 0) {
    return failed(Error::failure("vmctld did not send the migration's secret first"));
  }
  const std::string secret = secret_line->substr(7);

  Result<std::unique_ptr<migrate::DataListener>> listener =
      !o.data_socket.empty() ? migrate::DataListener::listen_unix(o.data_socket)
      : !o.data_listen.empty()
          ? migrate::DataListener::listen_tcp(o.data_listen, o.tls, o.data_plaintext)
          : Result<std::unique_ptr<migrate::DataListener>>(
                Error::user("receive needs --data-socket or --data-listen (vmctld runs it)"));
  if (!listener.ok()) return failed(listener.error());
  say("LISTENING " + (*listener)->announcement());

  state::RestoreOptions options;
  options.console_output = *console;
  Result<vmm::DirtyTracking> tracking = vmm::parse_dirty_tracking(o.dirty_tracking);
  if (!tracking.ok()) return failed(tracking.error());
  options.dirty_tracking = *tracking;
  options.dirty_ring_entries = o.dirty_ring_entries;
  options.budget.max_guest_memory = o.max_guest_memory;
  // The machine is built now, from the offer, on a thread of its own while the source connects
  // (its TLS handshakes take as long): the stream then only fills it (and must describe exactly
  // this machine).
  Result<std::unique_ptr<vmm::Vm>> prepared = Error::failure("not prepared");
  std::jthread preparing([&] { prepared = prepare_vm(o, options); });

  // What the daemon's watch cuts.
  std::mutex mu;
  bool gone = false;
  std::vector<migrate::DataConnection*> open;
  DaemonWatch watch(feed.get(), [&] {
    std::lock_guard lock(mu);
    gone = true;
    (*listener)->stop();
    for (migrate::DataConnection* c : open) c->shut_down();
  });

  auto start = std::chrono::steady_clock::now();
  Result<std::vector<std::unique_ptr<migrate::DataConnection>>> joined =
      (*listener)->accept_all(o.migration_id, secret, o.data_connections, start + kJoinTimeout);
  if (!joined.ok()) return failed(joined.error());
  preparing.join();
  if (!prepared.ok()) return failed(prepared.error());
  vmm::GuestMemory& memory = (*prepared)->memory();
  listener->reset();
  std::vector<std::unique_ptr<migrate::DataConnection>> conns = std::move(joined).value();
  std::unique_ptr<migrate::DataConnection> main = std::move(conns.front());
  conns.erase(conns.begin());
  {
    std::lock_guard lock(mu);
    open.push_back(main.get());
    for (auto& c : conns) open.push_back(c.get());
    if (gone) {
      for (migrate::DataConnection* c : open) c->shut_down();
    }
  }
  const std::string name = fmt::format("migration stream from {}", main->peer());
  std::optional<migrate::PageLaneReaders> lanes;
  if (!conns.empty()) {
    lanes.emplace(std::move(conns), memory, name, [&] { main->shut_down(); });
    options.other_page_lanes = [&] { return lanes->wait(); };
  }
  state::RecordReader reader(*main, name);
  reader.set_authenticated_transport(main->authenticated());
  Result<std::unique_ptr<vmm::Vm>> vm =
      state::restore_vm(reader, options, nullptr, std::move(prepared).value());
  if (!vm.ok()) {
    // A connection of pages that failed first is the reason; what it did to the main stream is
    // only its consequence.
    std::optional<Error> first = lanes ? lanes->failure() : std::nullopt;
    bool daemon_gone;
    {
      std::lock_guard lock(mu);
      daemon_gone = gone;
    }
    if (daemon_gone && !first) first = Error::user("vmctld ended the migration");
    return failed(first ? *first : vm.error());
  }
  {
    std::lock_guard lock(mu);
    open.clear();
  }
  watch.stop();
  lanes.reset();
  main.reset();
  // Paused, then the control socket: once READY is said, the switchover (which resumes it) may
  // come at once.
  (*vm)->pause();
  Result<std::unique_ptr<ControlServer>> server = ControlServer::start(
      **vm, o.control, /*vm_paused=*/true, IncomingMigration{o.migration_id, o.stay_paused});
  if (!server.ok()) return failed(server.error());
  double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  say(fmt::format("READY {:.3f}", ms));
  feed.reset();
  std::fprintf(stderr,
               "vmctl: received the VM (%s, %u vCPUs); paused until migration %s switches "
               "over\n",
               format_size((*vm)->memory().ram_size()).c_str(), (*vm)->num_cpus(),
               o.migration_id.c_str());
  return run_session(**vm, SessionOptions{false, false, /*start_paused=*/true, o.control},
                     std::move(server).value());
}

}  // namespace vmctl::vmprocess
