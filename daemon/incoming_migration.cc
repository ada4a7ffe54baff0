#include "daemon/incoming_migration.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "base/fault.h"
#include "base/text.h"
#include "daemon/host_report_cache.h"
#include "state/stream.h"
#include "vmm/dirty_pages.h"
#include "vmm/irqchip_mode.h"

namespace vmctl::daemon {
namespace {

using Clock = std::chrono::steady_clock;
using migrate::MigrationPhase;

std::string random_secret() {
  std::random_device rd;
  std::string s;
  for (int i = 0; i < 4; ++i) s += fmt::format("{:016x}", (uint64_t{rd()} << 32) ^ rd());
  return s;
}

uint64_t host_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  while (in >> key >> kib) {
    if (key == "MemTotal:") return kib * 1024;
    in.ignore(256, '\n');
  }
  return 0;
}

// Peer text (names, reasons) goes into logs and replies: valid UTF-8, no control characters,
// bounded.
std::string printable(const std::string& text, size_t max = 200) {
  return sanitize_text(text, max);
}

v1::MigrationEvent event(v1::MigrationEvent::Kind kind, const std::string& error = "") {
  v1::MigrationEvent e;
  e.set_kind(kind);
  e.set_error(error);
  return e;
}

Status write_all(int fd, const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error::user("the receiving VM process stopped taking the stream");
    done += static_cast<size_t>(n);
  }
  return ok_status();
}

// One line from the receiving VM process, within `timeout`.
Result<std::string> read_feed_line(int fd, std::chrono::milliseconds timeout) {
  Clock::time_point deadline = Clock::now() + timeout;
  std::string line;
  while (line.size() < 4096) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) == 0) {
      return Error::failure("the receiving VM process did not answer in time");
    }
    char c;
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error::user("the receiving VM process ended before it listened");
    if (c == '\n') return line;
    line += c;
  }
  return Error::user("the receiving VM process said a line too long");
}

}  // namespace

std::string IncomingMigrations::data_socket_path(const std::string& id) const {
  // sun_path holds 107 bytes: a deep state directory falls back to /tmp (mode 0600 either way).
  std::string path = limits_.data.socket_dir + "/data-" + id.substr(0, 16) + ".sock";
  if (path.size() >= 100) path = "/tmp/vmctl-data-" + id + ".sock";
  return path;
}

struct IncomingMigrations::Migration {
  std::string id, vm, source, secret;
  unsigned stream_count = 1;
  bool stay_paused = false;
  bool plaintext = false;  // data connections without TLS (trusted network, data_plane.md)
  grpc::ServerContext* control_context = nullptr;
  ControlStream* control_stream = nullptr;  // while the Control call runs
  std::mutex write_mu;                      // one writer on the control stream

  std::mutex mu;
  std::condition_variable cv;
  MigrationPhase phase = MigrationPhase::kAccepted;
  Clock::time_point accepted_at = Clock::now(), ready_at;
  std::string why;  // DISCARDED / FAILED: what happened
  int64_t created_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
  pid_t pid = 0;  // the receiving VM process
  bool process_gone = false;
  bool cleaned_up = false;
  double restore_ms = 0;
  std::string data_endpoint;  // what the VM process listens on ("tcp PORT", "unix PATH")
  Fd feed;  // our end of the socketpair: the secret in, LISTENING and the verdict out
  std::thread verdict_reader, deadline_watch;
};

IncomingMigrations::IncomingMigrations(VmManager& vms, migrate::MigrationJournal& journal,
                                       IncomingLimits limits)
    : vms_(vms), journal_(journal), limits_(limits) {}

IncomingMigrations::~IncomingMigrations() {
  std::map<std::string, std::shared_ptr<Migration>> left;
  {
    std::lock_guard lock(mu_);
    left.swap(migrations_);
  }
  for (auto& [id, m] : left) {
    {
      std::lock_guard lock(m->mu);
      m->cleaned_up = true;  // the daemon goes; the VM process waits for its successor
    }
    m->cv.notify_all();
    if (m->feed.valid()) ::shutdown(m->feed.get(), SHUT_RDWR);
    if (m->verdict_reader.joinable()) m->verdict_reader.join();
    if (m->deadline_watch.joinable()) m->deadline_watch.join();
  }
}

std::shared_ptr<IncomingMigrations::Migration> IncomingMigrations::find(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = migrations_.find(id);
  return it == migrations_.end() ? nullptr : it->second;
}

Status IncomingMigrations::save(Migration& m) {
  migrate::MigrationRecord r;
  r.id = m.id;
  r.role = migrate::MigrationRole::kDestination;
  r.phase = m.phase;
  r.vm = m.vm;
  r.peer = m.source;
  r.detail = m.why;
  r.created_unix_ms = m.created_unix_ms;
  return journal_.save(r);
}

void IncomingMigrations::send(Migration& m, const v1::MigrationEvent& e) {
  std::lock_guard lock(m.write_mu);
  if (m.control_stream) (void)m.control_stream->Write(e);
}

// ------------------------------------------------------------------ accept

Result<std::shared_ptr<IncomingMigrations::Migration>> IncomingMigrations::accept(
    const v1::MigrationOffer& offer, grpc::ServerContext* context, ControlStream* stream) {
  if (offer.format_major() != state::format_major()) {
    return Error::user(fmt::format(
        "this daemon reads state format {}.x, the source sends {}.{}: use matching vmctl versions",
        state::format_major(), offer.format_major(), offer.format_minor()));
  }
  TRY(migrate::validate_migration_id(offer.migration_id()));
  TRY(validate_vm_name(offer.vm_name()));
  if (offer.stream_count() < 1 || offer.stream_count() > 16) {
    return Error::user(
        fmt::format("{} data streams offered: 1 to 16 are allowed", offer.stream_count()));
  }
  uint64_t memory_limit = limits_.max_guest_memory ? limits_.max_guest_memory : host_memory_bytes();
  if (offer.memory_bytes() == 0 || offer.memory_bytes() % 4096 != 0 || offer.vcpus() == 0) {
    return Error::user(
        fmt::format("the offer describes a guest of {} bytes and {} vCPUs: no such "
                    "machine",
                    offer.memory_bytes(), offer.vcpus()));
  }
  if (memory_limit && offer.memory_bytes() > memory_limit) {
    return Error::user(fmt::format("the guest has {} MiB of RAM; this host takes at most {} MiB",
                                   offer.memory_bytes() >> 20, memory_limit >> 20));
  }
  if (!offer.dirty_tracking().empty()) TRY(vmm::parse_dirty_tracking(offer.dirty_tracking()));
  if (!offer.irqchip().empty()) TRY(vmm::parse_irqchip_mode(offer.irqchip()));
  Result<v1::VmInfo> existing = vms_.get(offer.vm_name());
  if (existing.ok() && existing->state() != v1::VM_STATE_MIGRATED) {
    return Error::conflict(fmt::format(
        "a VM named {} exists on this host already ({}): migrate it under another name (--as)",
        offer.vm_name(), vm_state_name(existing->state())));
  }
  Result<std::optional<migrate::MigrationRecord>> known = journal_.load(offer.migration_id());
  if (!known.ok() || *known) {
    return Error::user(fmt::format("migration {} was offered here before", offer.migration_id()));
  }
  auto m = std::make_shared<Migration>();
  m->id = offer.migration_id();
  m->vm = offer.vm_name();
  m->source = printable(offer.source());
  m->secret = random_secret();
  m->stream_count = offer.stream_count();
  m->stay_paused = offer.paused();
  m->control_context = context;
  m->control_stream = stream;
  {
    std::lock_guard lock(mu_);
    if (migrations_.size() >= limits_.max_concurrent) {
      return Error::user(fmt::format(
          "this host receives {} migrations already, its limit: try again when one ends",
          migrations_.size()));
    }
    if (migrations_.count(m->id)) return Error::user("that migration id is in use");
    migrations_[m->id] = m;
  }
  auto unregister = [&] {
    std::lock_guard lock(mu_);
    migrations_.erase(m->id);
  };
  {
    std::lock_guard lock(m->mu);
    Status saved = save(*m);
    if (!saved.ok()) {
      unregister();
      return saved.error();
    }
  }
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    unregister();
    return Error::from_errno("socketpair", errno);
  }
  m->feed = Fd(pair[0]);
  Fd theirs(pair[1]);
  Launch how{{"receive", "--stream-fd", "3", "--migration-id", m->id, "--memory",
              std::to_string(offer.memory_bytes()), "--cpus", std::to_string(offer.vcpus()),
              "--data-connections", std::to_string(m->stream_count)},
             fmt::format("receiving migration {} from {}", m->id, m->source)};
  // The data comes the way the offer came: over this host's unix socket from a local source,
  // over TCP with the daemon's TLS identity from another host. The daemon accepts its unix socket
  // itself (daemon/unix_listener.h), so gRPC names those peers "fd:N".
  const std::string peer = context->peer();
  bool local =
      peer.rfind("fd:", 0) == 0 || peer.rfind("unix:", 0) == 0 || limits_.data.listen_host.empty();
  // Plaintext only when both sides trust each other's network: the source asked (it trusts
  // ours) and the address its control stream came from is on one of our trusted networks.
  m->plaintext = !local && offer.plaintext_data() && limits_.data.trusted.contains_grpc_peer(peer);
  if (local) {
    how.args.insert(how.args.end(), {"--data-socket", data_socket_path(m->id)});
  } else if (m->plaintext) {
    how.args.insert(how.args.end(),
                    {"--data-listen", limits_.data.listen_host, "--data-plaintext"});
  } else {
    how.args.insert(how.args.end(),
                    {"--data-listen", limits_.data.listen_host, "--tls-ca", limits_.data.tls.ca,
                     "--tls-cert", limits_.data.tls.cert, "--tls-key", limits_.data.tls.key});
  }
  if (m->stay_paused) how.args.push_back("--paused");
  if (!offer.dirty_tracking().empty()) {
    how.args.insert(how.args.end(), {"--dirty-tracking", offer.dirty_tracking()});
  }
  if (!offer.irqchip().empty()) how.args.insert(how.args.end(), {"--irqchip", offer.irqchip()});
  if (offer.dirty_ring_entries() != 0) {
    how.args.insert(how.args.end(),
                    {"--dirty-ring-entries", std::to_string(offer.dirty_ring_entries())});
  }
  how.wait_ready = false;
  Result<v1::VmInfo> started = vms_.start_new(m->vm, how, {theirs.get()}, m->id);
  theirs.reset();
  if (!started.ok()) {
    std::lock_guard lock(m->mu);
    m->phase = MigrationPhase::kDiscarded;
    m->why = started.error().message();
    (void)save(*m);
    unregister();
    return started.error();
  }
  m->pid = started->pid();
  // The secret goes to the VM process on the socketpair, never on its command line (ps shows
  // that); it answers with the endpoint it listens on.
  Result<std::string> listening = [&]() -> Result<std::string> {
    TRY(write_all(m->feed.get(), "SECRET " + m->secret + "\n"));
    std::string line = TRY(read_feed_line(m->feed.get(), std::chrono::seconds(30)));
    if (line.rfind("LISTENING ", 0) != 0) {
      return Error::user(line.rfind("FAILED ", 0) == 0
                             ? printable(line.substr(7), 1000)
                             : "the receiving VM process did not say where it listens");
    }
    return line.substr(10);
  }();
  if (!listening.ok()) {
    discard(*m, listening.error().message());
    clean_up(*m);
    unregister();
    return listening.error();
  }
  m->data_endpoint = *listening;
  m->verdict_reader = std::thread([this, m] { read_verdict(m); });
  m->deadline_watch = std::thread([this, m] { watch_deadlines(m); });
  spdlog::info("VM {}: receiving migration {} from {} over {} {}data connection{}", m->vm, m->id,
               m->source, m->stream_count,
               m->plaintext ? "plaintext (trusted network) " : (local ? "local " : "TLS "),
               m->stream_count == 1 ? "" : "s");
  return m;
}

// The receiving VM process says one line: READY <ms> once it restored the VM (paused), FAILED
// <why> if it could not; its end of the socketpair closing first means it is gone.
void IncomingMigrations::read_verdict(std::shared_ptr<Migration> m) {
  std::string line;
  char c;
  while (line.size() < 4096) {
    ssize_t n = ::read(m->feed.get(), &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || c == '\n') break;
    line += c;
  }
  if (line.rfind("READY", 0) == 0) {
    {
      std::lock_guard lock(m->mu);
      if (m->phase != MigrationPhase::kAccepted) return;
      m->phase = MigrationPhase::kReady;
      m->ready_at = Clock::now();
      m->restore_ms = std::atof(line.c_str() + 5);
      // Not written down: after a restart READY and ACCEPTED end alike (discarded), and this is
      // inside the VM's downtime.
    }
    m->cv.notify_all();
    fault_hold("dest-before-ready");
    v1::MigrationEvent ready = event(v1::MigrationEvent::RESTORED);
    ready.set_restore_ms(m->restore_ms);
    send(*m, ready);
    spdlog::info("VM {}: migration {} restored (paused) in {:.1f} ms; waiting for the switchover",
                 m->vm, m->id, m->restore_ms);
    return;
  }
  discard(*m, line.rfind("FAILED ", 0) == 0 ? line.substr(7) : "the receiving VM process ended");
}

void IncomingMigrations::watch_deadlines(std::shared_ptr<Migration> m) {
  std::unique_lock lock(m->mu);
  while (!m->cleaned_up && !migrate::is_final(m->phase)) {
    Clock::time_point deadline =
        m->phase == MigrationPhase::kAccepted ? m->accepted_at + limits_.receive_timeout
        : m->phase == MigrationPhase::kReady  ? m->ready_at + limits_.switchover_timeout
                                              : Clock::time_point::max();
    if (deadline == Clock::time_point::max()) {
      m->cv.wait(lock);
      continue;
    }
    if (m->cv.wait_until(lock, deadline) == std::cv_status::timeout && Clock::now() >= deadline &&
        !migrate::is_final(m->phase) && m->phase != MigrationPhase::kCommitted) {
      std::string why =
          m->phase == MigrationPhase::kAccepted
              ? fmt::format("the VM did not arrive within {} s", limits_.receive_timeout.count())
              : fmt::format("no switchover came within {} s of READY",
                            limits_.switchover_timeout.count());
      lock.unlock();
      discard(*m, why);
      lock.lock();
    }
  }
}

// ------------------------------------------------------------------ deciding

bool IncomingMigrations::discard(Migration& m, const std::string& why) {
  {
    std::lock_guard lock(m.mu);
    if (migrate::is_final(m.phase) || m.phase == MigrationPhase::kCommitted) return false;
    m.phase = MigrationPhase::kDiscarded;
    m.why = why;
    Status saved = save(m);
    if (!saved.ok()) spdlog::error("migration {}: {}", m.id, saved.error().message());
  }
  m.cv.notify_all();
  spdlog::warn("VM {}: incoming migration {} discarded: {}", m.vm, m.id, why);
  // Nothing more goes to the VM process, and the sources learn it at once.
  if (m.feed.valid()) ::shutdown(m.feed.get(), SHUT_WR);
  send(m, event(v1::MigrationEvent::FAILED, why));
  { std::lock_guard lock(m.mu); }
  if (m.control_context) m.control_context->TryCancel();
  return true;
}

void IncomingMigrations::clean_up(Migration& m) {
  pid_t pid;
  {
    std::lock_guard lock(m.mu);
    if (m.cleaned_up || m.phase != MigrationPhase::kDiscarded) return;
    m.cleaned_up = true;
    pid = m.pid;
  }
  // The copy goes without running: ask it to end, and make sure it did.
  vmprocess::ControlTimeouts quick{std::chrono::milliseconds(500), std::chrono::milliseconds(2000)};
  (void)vms_.control(m.vm, {{"op", "discard"}, {"migration_id", m.id}}, quick);
  vms_.forget(m.vm, pid);
}

void IncomingMigrations::switchover(Migration& m) {
  fault_hold("dest-after-switchover");
  {
    std::unique_lock lock(m.mu);
    if (m.phase != MigrationPhase::kReady || m.process_gone) {
      std::string why = m.process_gone                         ? "the receiving VM process ended"
                        : m.phase == MigrationPhase::kAccepted ? "SWITCHOVER before READY"
                                                               : m.why;
      lock.unlock();
      if (!discard(m, why)) send(m, event(v1::MigrationEvent::FAILED, m.why));
      return;
    }
    // The decision: from here the VM is this host's (rule 1).
    m.phase = MigrationPhase::kCommitted;
    Status saved = save(m);
    if (!saved.ok()) {
      // Not durable, so not decided: throw the copy away rather than risk two.
      m.phase = MigrationPhase::kReady;
      lock.unlock();
      discard(m, fmt::format("cannot record the switchover: {}", saved.error().message()));
      return;
    }
  }
  m.cv.notify_all();
  // Tell the VM process. It resumes only on this request, so "not delivered" means it did not.
  Clock::time_point deadline = Clock::now() + std::chrono::seconds(10);
  std::string outcome;
  bool resumed = false;
  while (true) {
    bool delivered = false;
    Result<nlohmann::json> answer =
        vms_.control(m.vm, {{"op", "switchover"}, {"migration_id", m.id}},
                     vmprocess::ControlTimeouts{std::chrono::milliseconds(1000),
                                                std::chrono::milliseconds(5000)},
                     &delivered);
    if (answer.ok()) {
      resumed = true;
      break;
    }
    bool gone;
    {
      std::lock_guard lock(m.mu);
      gone = m.process_gone || ::kill(m.pid, 0) != 0;
    }
    if (gone && !delivered) {
      // It never got the switchover, so it never ran: nobody holds a running copy here.
      std::lock_guard lock(m.mu);
      m.phase = MigrationPhase::kDiscarded;
      m.why = "the receiving VM process ended before it could resume";
      (void)save(m);
      outcome = m.why;
      break;
    }
    if (gone || Clock::now() > deadline) {
      std::lock_guard lock(m.mu);
      m.phase = MigrationPhase::kFailed;
      m.why = fmt::format("the VM process ended (or stopped answering) during the switchover: {}",
                          answer.error().message());
      (void)save(m);
      outcome = m.why;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  m.cv.notify_all();
  if (resumed) {
    {
      std::lock_guard lock(m.mu);
      m.phase = MigrationPhase::kResumed;
    }
    m.cv.notify_all();
    fault_hold("dest-before-resumed");
    if (fault_enabled("VMCTL_FAULT_DROP_RESUMED")) {
      spdlog::warn("fault: migration {}: RESUMED not sent", m.id);
      if (m.control_context) m.control_context->TryCancel();
    } else {
      send(m, event(v1::MigrationEvent::RESUMED));
    }
    // After the answer, not before: COMMITTED was the decision, and the VM's downtime ends with
    // RESUMED. (A restart before this line finds COMMITTED and finishes the same way.)
    {
      std::lock_guard lock(m.mu);
      Status saved = save(m);
      if (!saved.ok()) spdlog::error("migration {}: {}", m.id, saved.error().message());
    }
    (void)vms_.set_migration_state(m.vm, m.stay_paused ? v1::VM_STATE_PAUSED : v1::VM_STATE_RUNNING,
                                   "");
    (void)vms_.refresh_from_process(m.vm);
    spdlog::info("VM {}: migration {} switched over; the VM {} here", m.vm, m.id,
                 m.stay_paused ? "is paused" : "runs");
    return;
  }
  v1::MigrationEvent failed = event(v1::MigrationEvent::FAILED, outcome);
  bool owned;
  {
    std::lock_guard lock(m.mu);
    owned = m.phase == MigrationPhase::kFailed;
  }
  failed.set_after_switchover(owned);
  send(m, failed);
  if (owned) (void)vms_.set_migration_state(m.vm, v1::VM_STATE_FAILED, "", outcome);
}

// ------------------------------------------------------------------ the RPCs

grpc::Status IncomingMigrations::control(grpc::ServerContext* context, ControlStream* stream) {
  v1::MigrationControl message;
  if (!stream->Read(&message) || !message.has_offer()) {
    stream->Write(event(v1::MigrationEvent::FAILED, "the control stream must start with an offer"));
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no offer");
  }
  Result<std::shared_ptr<Migration>> accepted = accept(message.offer(), context, stream);
  if (!accepted.ok()) {
    std::string why = printable(accepted.error().message(), 1000);
    spdlog::warn("refused a migration offer from {}: {}", printable(message.offer().source()), why);
    stream->Write(event(v1::MigrationEvent::FAILED, why));
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, why);
  }
  std::shared_ptr<Migration> m = std::move(accepted).value();
  {
    v1::MigrationEvent ok = event(v1::MigrationEvent::ACCEPTED);
    ok.set_secret(m->secret);
    ok.set_data_endpoint(m->data_endpoint);
    ok.set_data_plaintext(m->plaintext);
    Result<nlohmann::json> report = cached_host_report();
    if (report.ok()) {
      ok.set_host_report_json(
          report->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
    send(*m, ok);
  }
  while (stream->Read(&message)) {
    if (message.has_switchover()) {
      switchover(*m);
      break;
    }
    if (message.has_abort()) {
      discard(*m, "the source gave up: " + printable(message.abort().reason(), 500));
      break;
    }
  }
  // The control stream ended (or the outcome is decided): before SWITCHOVER that is a discard.
  discard(*m, "the control stream ended before the switchover");
  {
    std::lock_guard lock(m->write_mu);
    m->control_stream = nullptr;
  }
  finish(m);
  return grpc::Status::OK;
}

void IncomingMigrations::finish(std::shared_ptr<Migration> m) {
  clean_up(*m);
  {
    std::lock_guard lock(m->mu);
    m->cleaned_up = true;
  }
  m->cv.notify_all();
  if (m->feed.valid()) ::shutdown(m->feed.get(), SHUT_RDWR);
  if (m->verdict_reader.joinable()) m->verdict_reader.join();
  if (m->deadline_watch.joinable()) m->deadline_watch.join();
  // Data streams may still be draining: they hold the migration by shared_ptr.
  std::lock_guard lock(mu_);
  migrations_.erase(m->id);
}

// Format 1.3 moved the data off gRPC: the source VM process connects to the receiving VM
// process itself (migrate/data_plane.md). A source that still sends here is older than this.
grpc::Status IncomingMigrations::receive(
    grpc::ServerContext*,
    grpc::ServerReaderWriter<v1::MigrationEvent, v1::MigrationChunk>* stream) {
  std::string why =
      "this host takes migration data on direct connections to its VM process (state format "
      "1.3 on), not through vmctld: upgrade the source";
  stream->Write(event(v1::MigrationEvent::FAILED, why));
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, why);
}

grpc::Status IncomingMigrations::resolve(const v1::ResolveRequest& request,
                                         v1::ResolveResponse* response) {
  Status valid = migrate::validate_migration_id(request.migration_id());
  if (!valid.ok()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, valid.error().message());
  auto answer = [&](MigrationPhase phase, const std::string& why) {
    bool owns = phase == MigrationPhase::kResumed || phase == MigrationPhase::kFailed ||
                phase == MigrationPhase::kCommitted;
    response->set_outcome(owns ? v1::ResolveResponse::RESUMED : v1::ResolveResponse::DISCARDED);
    response->set_detail(why);
    return grpc::Status::OK;
  };
  if (std::shared_ptr<Migration> m = find(request.migration_id())) {
    std::unique_lock lock(m->mu);
    // A switchover in progress ends within its own deadline: wait for its outcome.
    m->cv.wait_for(lock, std::chrono::seconds(15),
                   [&] { return m->phase != MigrationPhase::kCommitted; });
    if (m->phase == MigrationPhase::kAccepted || m->phase == MigrationPhase::kReady) {
      lock.unlock();
      // Undecided: the source asks because it lost track, and a SWITCHOVER still on its way
      // loses to this (rule 4).
      discard(*m, "the source asked to settle the migration before any switchover arrived");
      lock.lock();
    }
    return answer(m->phase, m->why);
  }
  Result<std::optional<migrate::MigrationRecord>> record = journal_.load(request.migration_id());
  if (!record.ok()) {
    return grpc::Status(grpc::StatusCode::INTERNAL, record.error().message());
  }
  if (!*record) {
    response->set_outcome(v1::ResolveResponse::UNKNOWN);
    response->set_detail("this daemon never accepted that migration");
    return grpc::Status::OK;
  }
  // Not in flight: recover() settled it when this daemon started.
  return answer((*record)->phase, (*record)->detail);
}

void IncomingMigrations::process_ended(const std::string& vm, pid_t pid) {
  std::vector<std::shared_ptr<Migration>> affected;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, m] : migrations_) {
      if (m->vm == vm && m->pid == pid) affected.push_back(m);
    }
  }
  for (auto& m : affected) {
    bool verdict_pending;
    {
      std::lock_guard lock(m->mu);
      m->process_gone = true;
      verdict_pending = m->phase == MigrationPhase::kAccepted;
    }
    m->cv.notify_all();
    // Before READY the verdict reader is still reading: it gets the process's last words (or
    // its end) and discards with the real reason.
    if (!verdict_pending) discard(*m, "the receiving VM process ended");
  }
}

// ------------------------------------------------------------------ restart

void IncomingMigrations::recover() {
  std::vector<std::string> problems;
  for (migrate::MigrationRecord r : journal_.load_all(&problems)) {
    if (r.role != migrate::MigrationRole::kDestination || migrate::is_final(r.phase)) continue;
    pid_t pid = vms_.pid(r.vm);
    if (r.phase == MigrationPhase::kCommitted) {
      // Decided before the restart: the VM is ours. Make sure its process knows.
      Result<nlohmann::json> answer =
          pid ? vms_.control(r.vm, {{"op", "switchover"}, {"migration_id", r.id}})
              : Result<nlohmann::json>(Error::user("its process is gone"));
      if (answer.ok()) {
        r.phase = MigrationPhase::kResumed;
        bool paused = answer->value("resumed", true) == false;
        (void)vms_.set_migration_state(r.vm, paused ? v1::VM_STATE_PAUSED : v1::VM_STATE_RUNNING,
                                       "");
        (void)vms_.refresh_from_process(r.vm);
        spdlog::info("VM {}: migration {} was committed before vmctld restarted: it runs here",
                     r.vm, r.id);
      } else {
        r.phase = MigrationPhase::kFailed;
        r.detail =
            fmt::format("committed, but the VM process was lost: {}", answer.error().message());
        (void)vms_.set_migration_state(r.vm, v1::VM_STATE_FAILED, "", r.detail);
        spdlog::error("VM {}: migration {}: {}", r.vm, r.id, r.detail);
      }
    } else {
      // Not decided: the source's control stream went with the old daemon, so no switchover can
      // come; the copy goes (rule 5).
      r.phase = MigrationPhase::kDiscarded;
      r.detail = "vmctld restarted before the switchover";
      if (pid) {
        (void)vms_.control(r.vm, {{"op", "discard"}, {"migration_id", r.id}},
                           vmprocess::ControlTimeouts{std::chrono::milliseconds(500),
                                                      std::chrono::milliseconds(2000)});
      }
      vms_.forget(r.vm, pid);
      spdlog::warn("VM {}: incoming migration {} discarded: {}", r.vm, r.id, r.detail);
    }
    Status saved = journal_.save(r);
    if (!saved.ok()) spdlog::error("migration {}: {}", r.id, saved.error().message());
  }
  for (const std::string& p : problems) spdlog::warn("migration journal: {}", p);
}

}  // namespace vmctl::daemon
