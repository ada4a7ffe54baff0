#include "daemon/outgoing_migration.h"
#include "migrate/data_connection.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "base/fault.h"
#include "daemon/host_report_cache.h"
#include "migrate/control_channel.h"
#include "state/host_report.h"
#include "state/stream.h"
#include "vmm/dirty_pages.h"
#include "vmm/irqchip_mode.h"
#include "vmprocess/control_client.h"

namespace vmctl::daemon {
namespace {

using Clock = std::chrono::steady_clock;
using migrate::ControlEvent;
using migrate::MigrationPhase;
using namespace std::chrono_literals;

constexpr auto kAcceptTimeout = 30s;
constexpr auto kReadyTimeout = 60s;
constexpr auto kResumedTimeout = 30s;

double ms_since_ns(int64_t then_ns, Clock::time_point now) {
  int64_t now_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
  return static_cast<double>(now_ns - then_ns) / 1e6;
}

void fill_progress(const nlohmann::json& j, v1::MigrationProgress* p) {
  auto number = [&](const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
  };
  auto text = [&](const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  p->set_phase(text("phase"));
  p->set_round(static_cast<uint32_t>(number("round")));
  p->set_bytes_sent(static_cast<uint64_t>(number("bytes_sent")));
  p->set_pages_sent(static_cast<uint64_t>(number("pages_sent")));
  p->set_remaining_bytes(static_cast<uint64_t>(number("remaining_bytes")));
  p->set_bandwidth_mib_s(number("bandwidth_mib_s"));
  p->set_dirty_rate_mib_s(number("dirty_rate_mib_s"));
  p->set_expected_downtime_ms(number("expected_downtime_ms"));
  p->set_throttle_percent(static_cast<uint32_t>(number("throttle_percent")));
  p->set_error(text("error"));
  p->set_elapsed_seconds(number("elapsed_seconds"));
}

// Whether the guest can run there: the destination's report comes from a peer and is checked
// before it is compared with ours.
Status check_destination(const std::string& report_text, const std::vector<std::string>& guest) {
  nlohmann::json there =
      TRY(state::parse_host_report(report_text, "the destination's host report"));
  nlohmann::json here = TRY(cached_host_report());
  state::MoveVerdict verdict = state::check_move(here, there, &guest);
  if (verdict.can_move) return ok_status();
  std::string why;
  for (const std::string& r : verdict.reasons) {
    if (r.rfind("blocks: ", 0) == 0) why += (why.empty() ? "" : "; ") + r.substr(8);
  }
  return Error::user("the destination refused the VM before any memory was sent: " + why);
}

std::string this_host() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return host;
}

}  // namespace

struct OutgoingMigrations::Job {
  std::string vm, id;
  std::mutex mu;
  std::condition_variable cv;
  MigrationPhase phase = MigrationPhase::kStarting;
  bool cancelled = false;
};

// One Migrate call, from the offer to the verdict.
class OutgoingMigrations::Run {
 public:
  Run(OutgoingMigrations& owner, std::shared_ptr<Job> job, const v1::MigrateRequest& request,
      grpc::ServerWriter<v1::MigrationProgress>* writer, v1::VmInfo vm)
      : o_(owner), job_(std::move(job)), r_(request), writer_(writer), vm_(std::move(vm)) {
    record_.id = job_->id;
    record_.role = migrate::MigrationRole::kSource;
    record_.vm = r_.name();
    record_.peer = r_.destination();
    before_ = vm_.state();
  }

  grpc::Status go() {
    Status saved = set_phase(MigrationPhase::kStarting);
    if (!saved.ok()) return finish_failed(saved.error(), false);
    (void)o_.vms_.set_migration_state(r_.name(), v1::VM_STATE_MIGRATING, job_->id);
    spdlog::info("VM {}: migration {} to {}", r_.name(), job_->id, r_.destination());
    Status offered = offer();
    if (!offered.ok()) return finish_failed(offered.error(), false);
    Result<bool> sent = send();
    if (!sent.ok()) return finish_failed(sent.error(), false);
    if (!*sent) {
      // When the VM process's data connections broke, the destination usually said why on the
      // control stream, which makes the better message. When the source failed for a reason of
      // its own (no convergence, a stalled peer, a cancel), that reason stands.
      bool own_reason = failure_.find("data connection") == std::string::npos ||
                        failure_.find("stalled") != std::string::npos;
      if (early_event_) {
        // The control stream ended first (the watcher in send() cancelled the VM process).
        own_reason = false;
        cancelled_by_process_ = false;
      }
      if (!cancelled_by_process_ && !own_reason) {
        std::optional<ControlEvent> e = early_event_ ? early_event_ : channel_->wait(1000ms);
        // ... unless the destination only saw the source give up (its connections broke).
        bool echo = e && e->error.find("broke") != std::string::npos;
        if (e && e->kind == ControlEvent::Kind::kFailed && !echo) {
          failure_ = fmt::format("the destination {} failed: {}", r_.destination(), e->error);
        } else if (e && e->kind == ControlEvent::Kind::kClosed) {
          failure_ = fmt::format("lost the destination {}: {}", r_.destination(), e->error);
        }
      }
      return finish_failed(Error::failure(failure_), false);
    }
    Status ready = wait_ready();
    if (!ready.ok()) return finish_failed(ready.error(), true);
    return switch_over();
  }

 private:
  Status set_phase(MigrationPhase phase) {
    {
      std::lock_guard lock(job_->mu);
      job_->phase = phase;
    }
    return persist(phase);
  }
  // The journal only: what a restart will find.
  Status persist(MigrationPhase phase) {
    record_.phase = phase;
    return o_.journal_.save(record_);
  }

  bool cancelled() {
    std::lock_guard lock(job_->mu);
    return job_->cancelled;
  }

  void emit(v1::MigrationProgress p) {
    p.set_migration_id(job_->id);
    p.set_data_transport(data_transport_);
    p.set_elapsed_seconds(std::chrono::duration<double>(Clock::now() - start_).count());
    last_ = p;
    (void)writer_->Write(p);
  }
  void emit_phase(const std::string& phase, const std::string& error = "") {
    v1::MigrationProgress p = last_;
    p.set_phase(phase);
    p.set_error(error);
    emit(p);
  }

  Status offer() {
    v1::MigrationOffer offer;
    offer.set_vm_name(r_.destination_name().empty() ? r_.name() : r_.destination_name());
    offer.set_source(this_host());
    const char* fake_major = std::getenv("VMCTL_FAULT_OFFER_MAJOR");  // fault injection
    offer.set_format_major(fake_major && *fake_major ? static_cast<uint32_t>(std::atoi(fake_major))
                                                     : state::format_major());
    offer.set_format_minor(state::format_minor());
    offer.set_migration_id(job_->id);
    offer.set_stream_count(data_connections());
    offer.set_dirty_tracking(r_.dirty_tracking().empty() ? vm_.config().dirty_tracking()
                                                         : r_.dirty_tracking());
    offer.set_dirty_ring_entries(vm_.config().dirty_ring_entries());
    offer.set_irqchip(r_.irqchip().empty() ? vm_.config().irqchip() : r_.irqchip());
    offer.set_paused(before_ == v1::VM_STATE_PAUSED);
    offer.set_memory_bytes(vm_.config().memory_bytes());
    offer.set_vcpus(vm_.config().cpus());
    // Plaintext data is asked for only over TCP, and only when every address the destination's
    // name resolves to is on a network this daemon trusts; the destination must trust ours too.
    Result<migrate::Endpoint> where = migrate::parse_endpoint(r_.destination());
    const bool tcp = where.ok() && !where->unix_socket;
    offer.set_plaintext_data(tcp && o_.trusted_.contains_host(where->host));
    ControlEvent accepted;
    channel_ = TRY(migrate::ControlChannel::open(
        r_.destination(), o_.tls_, offer, std::chrono::milliseconds(kAcceptTimeout), &accepted));
    if (accepted.data_plaintext && !offer.plaintext_data()) {
      return Error::user(fmt::format(
          "the destination {} answered with plaintext data connections, which this daemon did "
          "not ask for (its network is not under [migration] trusted_networks here): refused",
          r_.destination()));
    }
    plaintext_ = accepted.data_plaintext;
    data_transport_ = !tcp ? "unix" : plaintext_ ? "plaintext" : "tls";
    secret_ = accepted.secret;
    data_endpoint_ = TRY(migrate::data_endpoint_for(r_.destination(), accepted.data_endpoint));
    // Can the guest run there at all? (Before a single page is sent.)
    nlohmann::json features = TRY(o_.vms_.control(r_.name(), {{"op", "guest_cpu_features"}}));
    std::vector<std::string> guest;
    if (features.contains("features") && features["features"].is_array()) {
      for (const auto& f : features["features"]) {
        if (f.is_string()) guest.push_back(f.get<std::string>());
      }
    }
    TRY(check_destination(accepted.host_report_json, guest));
    if (cancelled()) return Error::user("cancelled");
    return ok_status();
  }

  // Several data connections where the host has the cores to drive them (each one's pages are
  // read, and encrypted, on a thread of its own), leaving half of them to the guest.
  unsigned data_connections() const {
    if (r_.streams()) return r_.streams();
    return std::clamp(std::thread::hardware_concurrency() / 2, 1u, 4u);
  }

  // The VM process's rounds. True once it reported "sent"; false with failure_ set when it
  // reported failing (it resumed the VM itself).
  Result<bool> send() {
    nlohmann::json request = {
        {"op", "migrate"},
        {"migration_id", job_->id},
        {"secret", secret_},
        {"destination", data_endpoint_},
        {"streams", data_connections()},
        {"downtime_ms", r_.downtime_ms() ? r_.downtime_ms() : 30},
        {"max_rounds", r_.max_rounds() ? r_.max_rounds() : 30},
        {"max_seconds", r_.max_seconds() ? r_.max_seconds() : 120},
        {"compression", r_.compression() < 0 ? 0 : r_.compression()},
        {"auto_converge", r_.policy() == v1::CONVERGENCE_AUTO_CONVERGE},
        {"stall_timeout_ms", (r_.stall_timeout_seconds() ? r_.stall_timeout_seconds() : 15) * 1000},
        {"tls", {{"ca", o_.tls_.ca}, {"cert", o_.tls_.cert}, {"key", o_.tls_.key}}},
        {"plaintext", plaintext_}};
    Result<std::string> socket = o_.vms_.control_socket(r_.name());
    if (!socket.ok()) return socket.error();
    vmprocess::ControlStream progress = TRY(vmprocess::ControlStream::open(*socket, request));
    TRY(set_phase(MigrationPhase::kSending));
    // A round of a large guest on a slow link takes long, but the VM process reports at least
    // every stall timeout while data moves: silence for much longer means it is wedged.
    auto silence = std::chrono::milliseconds(
        (r_.stall_timeout_seconds() ? r_.stall_timeout_seconds() : 15) * 1000 + 60000);
    // Before "sent" the destination can only fail or go away (its control stream breaks: gRPC
    // keepalive sees a dead link within seconds). Either ends the migration now (protocol.md,
    // rule 2) rather than when the VM process's data connections time out.
    std::jthread watcher([this](std::stop_token stop) {
      while (!stop.stop_requested()) {
        std::optional<ControlEvent> e = channel_->wait(100ms);
        if (!e) continue;
        early_event_ = std::move(e);
        // READY may overtake the VM process's "sent": wait_ready() takes it.
        if (early_event_->kind == ControlEvent::Kind::kReady) return;
        spdlog::warn(
            "migration {}: the destination's control stream ended while sending ({}): "
            "cancelling",
            job_->id, early_event_->error);
        (void)o_.vms_.control(r_.name(), {{"op", "cancel_migration"}});
        return;
      }
    });
    while (true) {
      Result<nlohmann::json> line = progress.next(silence);
      if (!line.ok()) {
        (void)o_.vms_.control(r_.name(), {{"op", "cancel_migration"}});
        return Error::failure(fmt::format("the VM process: {}", line.error().message()));
      }
      if (line->empty()) {
        source_process_gone_ = true;
        return Error::failure("the VM process ended while sending");
      }
      v1::MigrationProgress p;
      fill_progress(*line, &p);
      if (p.phase() == "sent") {
        paused_at_ns_ = line->value("paused_at_ns", int64_t{0});
        last_page_at_ns_ = line->value("last_page_at_ns", int64_t{0});
        state_at_ns_ = line->value("state_at_ns", int64_t{0});
        last_ = p;
        return true;
      }
      if (p.phase() == "failed" || p.phase() == "cancelled") {
        failure_ = p.error();
        if (p.phase() == "cancelled") cancelled_by_process_ = true;
        last_ = p;
        return false;
      }
      if (p.phase() == "stop-and-copy" && !switchover_persisted_) {
        // The VM pauses now: SWITCHOVER is written down while its last pages and state go out,
        // so that the write is not part of its downtime (see wait_ready).
        Status saved = persist(MigrationPhase::kSwitchover);
        if (!saved.ok()) {
          (void)o_.vms_.control(r_.name(), {{"op", "cancel_migration"}});
          return Error(saved.error()).with_context("recording the coming switchover");
        }
        switchover_persisted_ = true;
      }
      emit(p);
    }
  }

  Status wait_ready() {
    {
      std::lock_guard lock(job_->mu);
      job_->phase = MigrationPhase::kSent;
    }
    emit_phase("awaiting-destination");
    // SWITCHOVER is written down before it is sent, and not inside the VM's downtime: when the
    // VM process said it pauses (stop-and-copy), or else now, while the destination restores.
    // Until it is sent this only makes a restart ask the destination (which cannot have
    // committed) instead of rolling back at once: rule 3 holds either way.
    if (!switchover_persisted_) TRY(persist(MigrationPhase::kSwitchover));
    switchover_persisted_ = true;
    Clock::time_point deadline = Clock::now() + kReadyTimeout;
    while (true) {
      if (cancelled()) return Error::user("cancelled");
      std::optional<ControlEvent> e =
          early_event_ ? std::exchange(early_event_, std::nullopt) : channel_->wait(100ms);
      if (e && e->kind == ControlEvent::Kind::kReady) {
        ready_at_ = Clock::now();
        return ok_status();
      }
      if (e) {
        return Error::failure(e->kind == ControlEvent::Kind::kFailed
                                  ? fmt::format("the destination failed: {}", e->error)
                                  : e->error);
      }
      if (Clock::now() > deadline) {
        return Error::failure(fmt::format("the destination did not restore the VM within {} s",
                                          kReadyTimeout.count()));
      }
    }
  }

  grpc::Status switch_over() {
    fault_hold("source-before-switchover");
    if (cancelled()) return finish_failed(Error::user("cancelled"), true);
    // A destination that gave up (or a stream that broke) since READY cannot commit: no
    // SWITCHOVER then.
    if (std::optional<ControlEvent> e = channel_->wait(0ms)) {
      return finish_failed(Error::failure(e->kind == ControlEvent::Kind::kFailed
                                              ? fmt::format("the destination failed: {}", e->error)
                                              : e->error),
                           true);
    }
    // The point of no return (written down already, in wait_ready).
    {
      std::lock_guard lock(job_->mu);
      job_->phase = MigrationPhase::kSwitchover;
    }
    Clock::time_point switchover_at = Clock::now();
    if (!channel_->switchover()) {
      // The stream was closed before SWITCHOVER could leave: the destination cannot commit.
      return finish_failed(Error::failure("the control stream broke before the switchover"), true);
    }
    fault_hold("source-after-switchover");
    emit_phase("switchover");
    Clock::time_point deadline = Clock::now() + kResumedTimeout;
    std::optional<ControlEvent> verdict;
    while (!verdict && Clock::now() < deadline) verdict = channel_->wait(100ms);
    if (verdict && verdict->kind == ControlEvent::Kind::kResumed) {
      Clock::time_point resumed_at = Clock::now();
      v1::DowntimeBreakdown* d = last_.mutable_downtime();
      d->set_pause_to_last_page_ms(static_cast<double>(last_page_at_ns_ - paused_at_ns_) / 1e6);
      d->set_last_page_to_state_ms(static_cast<double>(state_at_ns_ - last_page_at_ns_) / 1e6);
      d->set_state_to_resumed_ms(ms_since_ns(state_at_ns_, resumed_at));
      d->set_state_to_ready_ms(ms_since_ns(state_at_ns_, ready_at_));
      d->set_switchover_ms(
          std::chrono::duration<double, std::milli>(resumed_at - switchover_at).count());
      d->set_total_ms(ms_since_ns(paused_at_ns_, resumed_at));
      return finish_moved("");
    }
    if (verdict && verdict->kind == ControlEvent::Kind::kFailed && !verdict->after_switchover) {
      return finish_failed(
          Error::failure(fmt::format("the destination discarded the VM at the switchover: {}",
                                     verdict->error)),
          true);
    }
    if (verdict && verdict->kind == ControlEvent::Kind::kFailed) {
      return finish_moved(verdict->error);
    }
    return finish_in_doubt(
        verdict ? verdict->error
                : fmt::format("no answer within {} s of the switchover", kResumedTimeout.count()));
  }

  // Before SWITCHOVER: the VM runs on here (rule 2).
  grpc::Status finish_failed(const Error& error, bool sent) {
    bool was_cancelled = cancelled() || cancelled_by_process_;
    std::string why = was_cancelled ? "cancelled" : error.message();
    if (channel_) channel_->abort(why);
    // Written down before the VM runs again here: a restart must not find SWITCHOVER then.
    record_.detail = why;
    (void)set_phase(MigrationPhase::kRolledBack);
    if (sent) {
      Status back = decide(false);
      if (!back.ok()) spdlog::error("VM {}: rolling back: {}", r_.name(), back.error().message());
    }
    if (source_process_gone_) {
      // Nothing to resume: the VM's only process is gone (the watcher reports how).
      spdlog::error("VM {}: migration {} failed and the VM process is gone: {}", r_.name(),
                    job_->id, why);
    } else {
      (void)o_.vms_.set_migration_state(r_.name(), before_, "");
      spdlog::warn("VM {}: migration {} to {} {}: {}; the VM {} here", r_.name(), job_->id,
                   r_.destination(), was_cancelled ? "cancelled" : "failed", why,
                   before_ == v1::VM_STATE_PAUSED ? "stays paused" : "runs on");
    }
    emit_phase(was_cancelled ? "cancelled" : "failed", why);
    return grpc::Status(was_cancelled ? grpc::StatusCode::CANCELLED : grpc::StatusCode::ABORTED,
                        fmt::format("migration of {} {}, the VM keeps running here: {}", r_.name(),
                                    was_cancelled ? "cancelled" : "failed", why));
  }

  // The destination owns the VM (it resumed it, or lost it after taking it over).
  grpc::Status finish_moved(const std::string& lost) {
    record_.detail = lost;
    Status saved = set_phase(MigrationPhase::kDone);
    if (!saved.ok()) spdlog::error("VM {}: {}", r_.name(), saved.error().message());
    pid_t pid = o_.vms_.pid(r_.name());
    Status ended = decide(true);
    if (!ended.ok())
      spdlog::warn("VM {}: ending the source copy: {}", r_.name(), ended.error().message());
    // Only once the source copy is gone is the migration over (rule: exactly one copy).
    o_.vms_.end_process(r_.name(), pid, 10s);
    (void)o_.vms_.set_migration_state(r_.name(), v1::VM_STATE_MIGRATED, "", r_.destination());
    if (!lost.empty()) {
      spdlog::error("VM {}: migration {}: the destination failed after taking the VM over: {}",
                    r_.name(), job_->id, lost);
      emit_phase("failed-after-switchover", lost);
      return grpc::Status(
          grpc::StatusCode::DATA_LOSS,
          fmt::format("the destination took {} over and then lost it: {}", r_.name(), lost));
    }
    spdlog::info("VM {}: migrated to {} (downtime {:.1f} ms)", r_.name(), r_.destination(),
                 last_.downtime().total_ms());
    emit_phase("done");
    return grpc::Status::OK;
  }

  grpc::Status finish_in_doubt(const std::string& why) {
    record_.detail = why;
    Status saved = set_phase(MigrationPhase::kInDoubt);
    if (!saved.ok()) spdlog::error("VM {}: {}", r_.name(), saved.error().message());
    (void)o_.vms_.set_migration_state(r_.name(), v1::VM_STATE_MIGRATION_IN_DOUBT, job_->id, why);
    spdlog::error(
        "VM {}: migration {} is in doubt after the switchover ({}): the VM stays "
        "paused here until {} says what became of it",
        r_.name(), job_->id, why, r_.destination());
    o_.wake_settler();
    emit_phase("in-doubt", why);
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        fmt::format("migration of {} is in doubt after its switchover ({}): the "
                                    "VM is paused here; vmctld settles it with the destination "
                                    "(or: vmctl migrate --recover {})",
                                    r_.name(), why, r_.name()));
  }

  // Tells the VM process what became of the migration it sent (a process that is gone needs no
  // telling).
  Status decide(bool commit) {
    for (int attempt = 0; attempt < 50; ++attempt) {
      bool delivered = false;
      Result<nlohmann::json> answer =
          o_.vms_.control(r_.name(),
                          {{"op", "migration_decision"},
                           {"migration_id", job_->id},
                           {"decision", commit ? "commit" : "rollback"}},
                          vmprocess::ControlTimeouts{1000ms, 5000ms}, &delivered);
      if (answer.ok()) return ok_status();
      pid_t pid = o_.vms_.pid(r_.name());
      if (pid == 0 || ::kill(pid, 0) != 0) {
        source_process_gone_ = true;
        return ok_status();
      }
      if (delivered) return answer.error();  // it refused: it holds no such migration
      std::this_thread::sleep_for(100ms);
    }
    return Error::failure("the VM process does not take the migration's decision");
  }

  OutgoingMigrations& o_;
  std::shared_ptr<Job> job_;
  const v1::MigrateRequest& r_;
  grpc::ServerWriter<v1::MigrationProgress>* writer_;
  v1::VmInfo vm_;
  v1::VmState before_;
  migrate::MigrationRecord record_;
  std::unique_ptr<migrate::ControlChannel> channel_;
  std::string secret_, data_endpoint_, failure_;
  bool plaintext_ = false;      // the destination agreed to plaintext data connections
  std::string data_transport_;  // MigrationProgress.data_transport
  bool cancelled_by_process_ = false;
  bool source_process_gone_ = false;
  bool switchover_persisted_ = false;  // the journal says SWITCHOVER (written before it is sent)
  // What the control stream said while the VM process was still sending (set by send()'s
  // watcher thread, read after it was joined).
  std::optional<ControlEvent> early_event_;
  int64_t paused_at_ns_ = 0, last_page_at_ns_ = 0, state_at_ns_ = 0;
  Clock::time_point start_ = Clock::now(), ready_at_;
  v1::MigrationProgress last_;
};

OutgoingMigrations::OutgoingMigrations(VmManager& vms, migrate::MigrationJournal& journal,
                                       migrate::TlsConfig tls, TrustedNetworks trusted)
    : vms_(vms), journal_(journal), tls_(std::move(tls)), trusted_(std::move(trusted)) {
  settler_ = std::thread([this] { settle_in_doubt(); });
}

OutgoingMigrations::~OutgoingMigrations() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (settler_.joinable()) settler_.join();
}

std::shared_ptr<OutgoingMigrations::Job> OutgoingMigrations::start_job(const std::string& vm,
                                                                       Status* refused) {
  std::lock_guard lock(mu_);
  if (auto it = jobs_.find(vm); it != jobs_.end()) {
    *refused = Error::conflict(
        fmt::format("VM {} is being migrated already (migration {})", vm, it->second->id));
    return nullptr;
  }
  auto job = std::make_shared<Job>();
  job->vm = vm;
  job->id = migrate::new_migration_id();
  jobs_[vm] = job;
  return job;
}

void OutgoingMigrations::end_job(const std::shared_ptr<Job>& job) {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(job->vm);
  if (it != jobs_.end() && it->second == job) jobs_.erase(it);
}

grpc::Status OutgoingMigrations::migrate(grpc::ServerContext*, const v1::MigrateRequest& r,
                                         grpc::ServerWriter<v1::MigrationProgress>* writer) {
  auto refuse = [](const Error& e) {
    grpc::StatusCode code = e.kind() == ErrorKind::kNotFound ? grpc::StatusCode::NOT_FOUND
                            : e.kind() == ErrorKind::kConflict
                                ? grpc::StatusCode::FAILED_PRECONDITION
                                : grpc::StatusCode::INVALID_ARGUMENT;
    return grpc::Status(code, e.message());
  };
  if (r.streams() > 16) {
    return refuse(
        Error::user(fmt::format("{} parallel streams requested: use 1 to 16", r.streams())));
  }
  if (r.destination().empty()) {
    return refuse(Error::user("migrate needs a destination daemon (unix:/path or host:port)"));
  }
  if (!r.irqchip().empty()) {
    Result<vmm::IrqchipMode> irqchip = vmm::parse_irqchip_mode(r.irqchip());
    if (!irqchip.ok()) return refuse(irqchip.error());
  }
  if (!r.dirty_tracking().empty()) {
    Result<vmm::DirtyTracking> mode = vmm::parse_dirty_tracking(r.dirty_tracking());
    if (!mode.ok()) return refuse(mode.error());
  }
  Status refused;
  std::shared_ptr<Job> job = start_job(r.name(), &refused);
  if (!job) return refuse(refused.error());
  struct EndJob {
    OutgoingMigrations* self;
    std::shared_ptr<Job> job;
    ~EndJob() { self->end_job(job); }
  } end{this, job};
  Result<v1::VmInfo> vm = vms_.get(r.name());
  if (!vm.ok()) return refuse(vm.error());
  if (vm->state() != v1::VM_STATE_RUNNING && vm->state() != v1::VM_STATE_PAUSED) {
    return refuse(
        Error::conflict(fmt::format("VM {} is {}: only a running or paused VM can be migrated",
                                    r.name(), vm_state_name(vm->state()))));
  }
  Run run(*this, job, r, writer, *vm);
  return run.go();
}

Result<v1::VmInfo> OutgoingMigrations::cancel(const std::string& vm) {
  std::shared_ptr<Job> job;
  {
    std::lock_guard lock(mu_);
    auto it = jobs_.find(vm);
    if (it != jobs_.end()) job = it->second;
  }
  if (!job) {
    Result<v1::VmInfo> info = vms_.get(vm);
    if (!info.ok()) return info.error();
    if (info->state() == v1::VM_STATE_MIGRATION_IN_DOUBT) {
      return Error::conflict(fmt::format(
          "VM {}'s migration is past its switchover and in doubt: it cannot be cancelled, only "
          "settled (vmctl migrate --recover {})",
          vm, vm));
    }
    return Error::conflict(
        fmt::format("VM {} is {}: no migration to cancel", vm, vm_state_name(info->state())));
  }
  bool sending;
  {
    std::lock_guard lock(job->mu);
    if (job->phase == MigrationPhase::kSwitchover || migrate::is_final(job->phase) ||
        job->phase == MigrationPhase::kInDoubt) {
      return Error::conflict(
          fmt::format("migration {} of VM {} is past its switchover: it can no longer be cancelled",
                      job->id, vm));
    }
    job->cancelled = true;
    sending = job->phase == MigrationPhase::kSending;
  }
  job->cv.notify_all();
  if (sending) (void)vms_.control(vm, {{"op", "cancel_migration"}});
  return vms_.get(vm);
}

// ------------------------------------------------------------------ in doubt

Result<bool> OutgoingMigrations::settle(migrate::MigrationRecord& record) {
  v1::ResolveResponse answer =
      TRY(migrate::resolve_migration(record.peer, tls_, record.id, std::chrono::seconds(5)));
  bool resumed_there = answer.outcome() == v1::ResolveResponse::RESUMED;
  if (answer.outcome() != v1::ResolveResponse::RESUMED &&
      answer.outcome() != v1::ResolveResponse::DISCARDED &&
      answer.outcome() != v1::ResolveResponse::UNKNOWN) {
    return false;  // an answer this version does not know: ask again later
  }
  nlohmann::json decision = {{"op", "migration_decision"},
                             {"migration_id", record.id},
                             {"decision", resumed_there ? "commit" : "rollback"}};
  bool delivered = false;
  pid_t pid = vms_.pid(record.vm);
  Result<nlohmann::json> told = vms_.control(record.vm, decision, {}, &delivered);
  bool process_gone = pid == 0 || ::kill(pid, 0) != 0;
  if (!told.ok() && !process_gone && !delivered) return false;  // try again
  record.phase = resumed_there ? MigrationPhase::kDone : MigrationPhase::kRolledBack;
  record.detail =
      fmt::format("settled with the destination: {} ({})",
                  resumed_there ? "it runs there" : "it never ran there", answer.detail());
  TRY(journal_.save(record));
  if (resumed_there) {
    vms_.end_process(record.vm, pid, std::chrono::seconds(10));
    (void)vms_.set_migration_state(record.vm, v1::VM_STATE_MIGRATED, "", record.peer);
  } else if (!process_gone) {
    Result<nlohmann::json> status = vms_.control(record.vm, {{"op", "status"}});
    bool paused = status.ok() && status->value("paused", false);
    (void)vms_.set_migration_state(record.vm, paused ? v1::VM_STATE_PAUSED : v1::VM_STATE_RUNNING,
                                   "");
  }
  spdlog::info("VM {}: migration {} settled: {}", record.vm, record.id, record.detail);
  return true;
}

void OutgoingMigrations::wake_settler() {
  cv_.notify_all();
}

void OutgoingMigrations::settle_in_doubt() {
  std::chrono::milliseconds wait = 500ms;
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, wait, [&] { return stopping_; });
    if (stopping_) return;
    lock.unlock();
    bool pending = false;
    for (migrate::MigrationRecord r : journal_.load_all()) {
      if (r.role != migrate::MigrationRole::kSource || r.phase != MigrationPhase::kInDoubt) {
        continue;
      }
      Result<bool> settled = settle(r);
      if (!settled.ok()) {
        spdlog::warn("VM {}: migration {} still in doubt: {}", r.vm, r.id,
                     settled.error().message());
      }
      pending |= !settled.ok() || !*settled;
    }
    lock.lock();
    // Back off while a destination stays unreachable; look again soon once it answers.
    wait = pending ? std::min<std::chrono::milliseconds>(wait * 2, 10s) : 2000ms;
  }
}

Result<v1::VmInfo> OutgoingMigrations::recover_vm(const std::string& vm) {
  Result<v1::VmInfo> info = vms_.get(vm);
  if (!info.ok()) return info.error();
  if (info->state() != v1::VM_STATE_MIGRATION_IN_DOUBT) {
    return Error::conflict(
        fmt::format("VM {} is {}: nothing to recover", vm, vm_state_name(info->state())));
  }
  Result<std::optional<migrate::MigrationRecord>> record = journal_.load(info->migration_id());
  if (!record.ok()) return record.error();
  if (!*record) {
    return Error::failure(fmt::format("VM {} is in doubt but migration {} has no record here", vm,
                                      info->migration_id()));
  }
  bool settled = TRY(settle(**record));
  if (!settled) {
    return Error::failure(
        fmt::format("VM {}: the destination gave no usable answer yet; still in doubt", vm));
  }
  return vms_.get(vm);
}

void OutgoingMigrations::recover() {
  std::vector<std::string> problems;
  for (migrate::MigrationRecord r : journal_.load_all(&problems)) {
    if (r.role != migrate::MigrationRole::kSource || migrate::is_final(r.phase)) continue;
    if (r.phase == MigrationPhase::kSwitchover || r.phase == MigrationPhase::kInDoubt) {
      // SWITCHOVER may have left: only the destination knows (rule 4).
      r.phase = MigrationPhase::kInDoubt;
      r.detail = "vmctld restarted after the switchover began";
      (void)journal_.save(r);
      (void)vms_.set_migration_state(r.vm, v1::VM_STATE_MIGRATION_IN_DOUBT, r.id, r.detail);
      spdlog::warn("VM {}: migration {} is in doubt: {}", r.vm, r.id, r.detail);
      continue;
    }
    // No SWITCHOVER was sent: the VM runs on here (its process resumed it when its daemon went
    // away, or waits for this rollback).
    (void)vms_.control(
        r.vm, {{"op", "migration_decision"}, {"migration_id", r.id}, {"decision", "rollback"}});
    Result<nlohmann::json> status = vms_.control(r.vm, {{"op", "status"}});
    if (status.ok()) {
      (void)vms_.set_migration_state(
          r.vm, status->value("paused", false) ? v1::VM_STATE_PAUSED : v1::VM_STATE_RUNNING, "");
    }
    r.phase = MigrationPhase::kRolledBack;
    r.detail = "vmctld restarted before the switchover";
    (void)journal_.save(r);
    spdlog::info("VM {}: migration {} rolled back: {}", r.vm, r.id, r.detail);
  }
  for (const std::string& p : problems) spdlog::warn("migration journal: {}", p);
  wake_settler();
}

}  // namespace vmctl::daemon
