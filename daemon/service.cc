#include "daemon/service.h"

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "base/fd.h"
#include "base/rotating_log.h"
#include "cli/control.h"
#include "state/host_report.h"
#include "state/stream.h"
#include "vmm/dirty_pages.h"

namespace vmctl::daemon {
namespace {

int64_t now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

template <typename T>
grpc::Status reply(Result<T> result, T* out) {
  if (!result.ok()) return to_grpc(result.error());
  *out = std::move(result).value();
  return grpc::Status::OK;
}

void fill_progress(const nlohmann::json& j, v1::MigrationProgress* p) {
  p->set_phase(j.value("phase", ""));
  p->set_round(j.value("round", 0u));
  p->set_bytes_sent(j.value("bytes_sent", uint64_t{0}));
  p->set_pages_sent(j.value("pages_sent", uint64_t{0}));
  p->set_remaining_bytes(j.value("remaining_bytes", uint64_t{0}));
  p->set_bandwidth_mib_s(j.value("bandwidth_mib_s", 0.0));
  p->set_dirty_rate_mib_s(j.value("dirty_rate_mib_s", 0.0));
  p->set_expected_downtime_ms(j.value("expected_downtime_ms", 0.0));
  p->set_throttle_percent(j.value("throttle_percent", 0u));
  p->set_error(j.value("error", ""));
  p->set_elapsed_seconds(j.value("elapsed_seconds", 0.0));
  if (j.contains("downtime")) {
    const nlohmann::json& d = j["downtime"];
    v1::DowntimeBreakdown* b = p->mutable_downtime();
    b->set_pause_to_last_page_ms(d.value("pause_to_last_page_ms", 0.0));
    b->set_last_page_to_state_ms(d.value("last_page_to_state_ms", 0.0));
    b->set_state_to_resumed_ms(d.value("state_to_resumed_ms", 0.0));
    b->set_total_ms(d.value("total_ms", 0.0));
  }
}

}  // namespace

grpc::Status to_grpc(const Error& error) {
  switch (error.kind()) {
    case ErrorKind::kUser:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, error.message());
    case ErrorKind::kNotFound:
      return grpc::Status(grpc::StatusCode::NOT_FOUND, error.message());
    case ErrorKind::kConflict:
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, error.message());
    case ErrorKind::kFailure:
      break;
  }
  return grpc::Status(grpc::StatusCode::INTERNAL, error.message());
}

grpc::Status VmctlService::CreateVm(grpc::ServerContext*, const v1::CreateVmRequest* r,
                                    v1::VmInfo* out) {
  Result<v1::VmInfo> created = manager_.create(r->name(), r->config());
  if (!created.ok() || !r->start()) return reply(std::move(created), out);
  return reply(manager_.start(r->name()), out);
}

grpc::Status VmctlService::StartVm(grpc::ServerContext*, const v1::VmRef* r, v1::VmInfo* out) {
  return reply(manager_.start(r->name()), out);
}
grpc::Status VmctlService::PauseVm(grpc::ServerContext*, const v1::VmRef* r, v1::VmInfo* out) {
  return reply(manager_.pause(r->name()), out);
}
grpc::Status VmctlService::ResumeVm(grpc::ServerContext*, const v1::VmRef* r, v1::VmInfo* out) {
  return reply(manager_.resume(r->name()), out);
}
grpc::Status VmctlService::StopVm(grpc::ServerContext*, const v1::VmRef* r, v1::VmInfo* out) {
  return reply(manager_.stop(r->name()), out);
}
grpc::Status VmctlService::DeleteVm(grpc::ServerContext*, const v1::VmRef* r, v1::VmInfo* out) {
  return reply(manager_.remove(r->name()), out);
}
grpc::Status VmctlService::GetVm(grpc::ServerContext*, const v1::VmRef* r, v1::VmInfo* out) {
  return reply(manager_.get(r->name(), /*with_stats=*/true), out);
}
grpc::Status VmctlService::ListVms(grpc::ServerContext*, const v1::ListVmsRequest*,
                                   v1::ListVmsResponse* out) {
  for (v1::VmInfo& i : manager_.list()) *out->add_vms() = std::move(i);
  return grpc::Status::OK;
}

grpc::Status VmctlService::SendConsole(grpc::ServerContext*, const v1::ConsoleInput* r,
                                       v1::VmInfo* out) {
  Status sent = manager_.console_input(r->name(), r->data());
  if (!sent.ok()) return to_grpc(sent.error());
  return reply(manager_.get(r->name()), out);
}

grpc::Status VmctlService::Snapshot(grpc::ServerContext*, const v1::SnapshotRequest* r,
                                    v1::SnapshotResponse* out) {
  return reply(manager_.snapshot(*r), out);
}

grpc::Status VmctlService::Restore(grpc::ServerContext*, const v1::RestoreRequest* r,
                                   v1::VmInfo* out) {
  return reply(manager_.restore(*r), out);
}

grpc::Status VmctlService::WatchVm(grpc::ServerContext* context, const v1::WatchVmRequest* r,
                                   grpc::ServerWriter<v1::VmEvent>* writer) {
  Result<std::pair<v1::VmInfo, uint64_t>> current = manager_.wait_for_change(r->name(), ~0ull, 0);
  if (!current.ok()) return to_grpc(current.error());
  uint64_t version = current->second;
  v1::VmEvent event;
  event.set_unix_ms(now_unix_ms());
  *event.mutable_state() = current->first;
  if (!writer->Write(event)) return grpc::Status::OK;
  // Console lines from the start of the current log, then as they come (across rotations).
  RotatingLogFollower console(current->first.console_log());
  while (!context->IsCancelled()) {
    Result<std::pair<v1::VmInfo, uint64_t>> next =
        manager_.wait_for_change(r->name(), version, r->console() ? 50 : 500);
    if (!next.ok()) return to_grpc(next.error());  // deleted
    if (r->console()) {
      for (std::string& line : console.new_lines()) {
        v1::VmEvent e;
        e.set_unix_ms(now_unix_ms());
        e.set_console_line(std::move(line));
        if (!writer->Write(e)) return grpc::Status::OK;
      }
    }
    if (next->second != version) {
      version = next->second;
      v1::VmEvent e;
      e.set_unix_ms(now_unix_ms());
      *e.mutable_state() = next->first;
      if (!writer->Write(e)) return grpc::Status::OK;
    }
  }
  return grpc::Status::OK;
}

grpc::Status VmctlService::Migrate(grpc::ServerContext* context, const v1::MigrateRequest* r,
                                   grpc::ServerWriter<v1::MigrationProgress>* writer) {
  Result<v1::VmInfo> vm = manager_.get(r->name());
  if (!vm.ok()) return to_grpc(vm.error());
  if (vm->state() != v1::VM_STATE_RUNNING && vm->state() != v1::VM_STATE_PAUSED) {
    return to_grpc(
        Error::conflict(fmt::format("VM {} is {}: only a running or paused VM can be "
                                    "migrated",
                                    r->name(), vm_state_name(vm->state()))));
  }
  if (r->streams() > 16) {
    return to_grpc(
        Error::user(fmt::format("{} parallel streams requested: use 1 to 16", r->streams())));
  }
  if (r->destination().empty()) {
    return to_grpc(Error::user("migrate needs a destination daemon (unix:/path or host:port)"));
  }
  Result<std::string> socket = manager_.control_socket(r->name());
  if (!socket.ok()) return to_grpc(socket.error());
  nlohmann::json request = {
      {"op", "migrate"},
      {"destination", r->destination()},
      {"destination_name", r->destination_name().empty() ? r->name() : r->destination_name()},
      {"downtime_ms", r->downtime_ms() ? r->downtime_ms() : 30},
      {"max_rounds", r->max_rounds() ? r->max_rounds() : 30},
      {"max_seconds", r->max_seconds() ? r->max_seconds() : 120},
      {"streams", r->streams() ? r->streams() : 1},
      {"compression", r->compression() < 0 ? 0 : r->compression()},
      {"auto_converge", r->policy() == v1::CONVERGENCE_AUTO_CONVERGE},
      {"tls", {{"ca", tls_.ca}, {"cert", tls_.cert}, {"key", tls_.key}}}};
  if (!r->dirty_tracking().empty()) {
    Result<vmm::DirtyTracking> mode = vmm::parse_dirty_tracking(r->dirty_tracking());
    if (!mode.ok()) return to_grpc(mode.error());
    request["dirty_tracking"] = r->dirty_tracking();
  }
  v1::VmState before = vm->state();
  (void)manager_.set_state(r->name(), v1::VM_STATE_MIGRATING);
  spdlog::info("VM {}: migrating to {}", r->name(), r->destination());
  nlohmann::json last;
  Status streamed = cli::control_stream(*socket, request, [&](const nlohmann::json& line) {
    last = line;
    v1::MigrationProgress p;
    fill_progress(line, &p);
    if (!context->IsCancelled()) writer->Write(p);
  });
  std::string phase = last.value("phase", "");
  if (streamed.ok() && phase == "done") {
    (void)manager_.set_state(r->name(), v1::VM_STATE_MIGRATED, r->destination());
    spdlog::info("VM {}: migrated to {}", r->name(), r->destination());
    return grpc::Status::OK;
  }
  // The VM process resumed the guest: it keeps running here.
  (void)manager_.set_state(r->name(), before);
  std::string why = !streamed.ok() ? streamed.error().message()
                                   : last.value("error", "the migration ended without a result");
  spdlog::warn("VM {}: migration to {} failed: {}", r->name(), r->destination(), why);
  if (!streamed.ok()) {
    v1::MigrationProgress p;
    p.set_phase("failed");
    p.set_error(why);
    writer->Write(p);
  }
  return grpc::Status(
      phase == "cancelled" ? grpc::StatusCode::CANCELLED : grpc::StatusCode::ABORTED,
      fmt::format("migration of {} failed, the VM keeps running here: {}", r->name(), why));
}

grpc::Status VmctlService::CancelMigration(grpc::ServerContext*, const v1::VmRef* r,
                                           v1::VmInfo* out) {
  Result<v1::VmInfo> vm = manager_.get(r->name());
  if (!vm.ok()) return to_grpc(vm.error());
  if (vm->state() != v1::VM_STATE_MIGRATING) {
    return to_grpc(Error::conflict(
        fmt::format("VM {} is {}: no migration to cancel", r->name(), vm_state_name(vm->state()))));
  }
  Result<std::string> socket = manager_.control_socket(r->name());
  if (!socket.ok()) return to_grpc(socket.error());
  Result<nlohmann::json> answer = cli::control_request(*socket, {{"op", "cancel_migration"}});
  if (!answer.ok()) return to_grpc(answer.error());
  return reply(manager_.get(r->name()), out);
}

grpc::Status VmctlService::GetHostInfo(grpc::ServerContext*, const v1::HostInfoRequest*,
                                       v1::HostInfo* out) {
  // The report only holds facts fixed while this daemon runs (KVM's capabilities, the CPU), and
  // making it creates and destroys a probe VM: every migration here asks for it, so it is made
  // once.
  static std::mutex mu;
  static std::string cached;
  std::lock_guard lock(mu);
  if (cached.empty()) {
    Result<nlohmann::json> report = state::host_report();
    if (!report.ok()) return to_grpc(report.error());
    cached = report->dump();
  }
  out->set_report_json(cached);
  return grpc::Status::OK;
}

bool MigrationReceiverService::Reassembly::push(uint64_t sequence, std::string bytes) {
  std::lock_guard lock(mu_);
  if (closed_) return false;
  // A chunk seen before, or one so far ahead that the chunks in between would pile up here, is
  // not something a source sends: stop rather than buffer without bound.
  if (sequence < next_ || pending_.count(sequence) || pending_.size() >= kMaxPendingChunks) {
    spdlog::warn("parallel migration stream: chunk {} out of bounds (next {}, {} pending)",
                 sequence, next_, pending_.size());
    closed_ = true;
    pending_.clear();
    return false;
  }
  pending_.emplace(sequence, std::move(bytes));
  for (auto it = pending_.find(next_); it != pending_.end(); it = pending_.find(next_)) {
    const std::string& chunk = it->second;
    size_t done = 0;
    while (done < chunk.size()) {
      ssize_t n = ::send(fd_, chunk.data() + done, chunk.size() - done, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        closed_ = true;
        return false;
      }
      done += static_cast<size_t>(n);
    }
    pending_.erase(it);
    ++next_;
  }
  return true;
}

void MigrationReceiverService::Reassembly::close() {
  std::lock_guard lock(mu_);
  closed_ = true;
  pending_.clear();
}

grpc::Status MigrationReceiverService::receive_secondary(
    const v1::MigrationOffer& offer,
    grpc::ServerReaderWriter<v1::MigrationEvent, v1::MigrationChunk>* stream) {
  std::shared_ptr<Reassembly> target;
  {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10),
                 [&] { return parallel_.count(offer.migration_id()) > 0; });
    auto it = parallel_.find(offer.migration_id());
    if (it != parallel_.end()) target = it->second;
  }
  v1::MigrationEvent answer;
  if (!target) {
    answer.set_kind(v1::MigrationEvent::FAILED);
    answer.set_error("no migration " + offer.migration_id() + " is being received here");
    stream->Write(answer);
    return grpc::Status(grpc::StatusCode::NOT_FOUND, answer.error());
  }
  answer.set_kind(v1::MigrationEvent::ACCEPTED);
  stream->Write(answer);
  v1::MigrationChunk chunk;
  while (stream->Read(&chunk)) {
    if (!target->push(chunk.sequence(), std::move(*chunk.mutable_records()))) break;
  }
  return grpc::Status::OK;
}

// The receiving side: the record stream goes to a new `vmctl receive` process over a socketpair;
// that process restores the VM and reports one line back: "RESTORED <ms>" or "FAILED <why>".
grpc::Status MigrationReceiverService::Receive(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::MigrationEvent, v1::MigrationChunk>* stream) {
  auto fail = [&](const std::string& why) {
    v1::MigrationEvent e;
    e.set_kind(v1::MigrationEvent::FAILED);
    e.set_error(why);
    stream->Write(e);
    return grpc::Status(grpc::StatusCode::ABORTED, why);
  };
  v1::MigrationChunk chunk;
  if (!stream->Read(&chunk) || !chunk.has_offer()) {
    return fail("the migration stream must start with an offer");
  }
  const v1::MigrationOffer offer = chunk.offer();
  if (offer.stream_count() > 1 && offer.stream_index() > 0) return receive_secondary(offer, stream);
  if (offer.format_major() != state::format_major()) {
    return fail(fmt::format(
        "this daemon reads state format {}.x, the source sends {}.{}: use matching vmctl "
        "versions",
        state::format_major(), offer.format_major(), offer.format_minor()));
  }
  Status name_ok = validate_vm_name(offer.vm_name());
  if (!name_ok.ok()) return fail(name_ok.error().message());

  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    return fail(fmt::format("socketpair: {}", std::strerror(errno)));
  }
  Fd ours(pair[0]), theirs(pair[1]);
  Launch how{{"receive", "--stream-fd", "3"},
             fmt::format("receiving a migration from {}", offer.source())};
  if (!offer.dirty_tracking().empty()) {
    Result<vmm::DirtyTracking> mode = vmm::parse_dirty_tracking(offer.dirty_tracking());
    if (!mode.ok()) return fail(mode.error().message());
    how.args.insert(how.args.end(), {"--dirty-tracking", offer.dirty_tracking()});
  }
  if (offer.dirty_ring_entries() != 0) {
    how.args.insert(how.args.end(),
                    {"--dirty-ring-entries", std::to_string(offer.dirty_ring_entries())});
  }
  how.wait_ready = false;
  Result<v1::VmInfo> started = manager_.start_new(offer.vm_name(), how, {theirs.get()});
  theirs.reset();
  if (!started.ok()) return fail(started.error().message());
  const std::string name = offer.vm_name();
  spdlog::info(
      "VM {}: receiving a migration from {}{}", name, offer.source(),
      offer.stream_count() > 1 ? fmt::format(" over {} streams", offer.stream_count()) : "");
  std::shared_ptr<Reassembly> reassembly;
  if (offer.stream_count() > 1) {
    reassembly = std::make_shared<Reassembly>(ours.get());
    std::lock_guard lock(mu_);
    parallel_[offer.migration_id()] = reassembly;
    cv_.notify_all();
  }
  // However the migration ends, the secondaries stop feeding it.
  struct Unregister {
    MigrationReceiverService* self;
    std::string id;
    std::shared_ptr<Reassembly> r;
    ~Unregister() {
      if (!r) return;
      r->close();
      std::lock_guard lock(self->mu_);
      self->parallel_.erase(id);
    }
  } unregister{this, offer.migration_id(), reassembly};
  {
    v1::MigrationEvent accepted;
    accepted.set_kind(v1::MigrationEvent::ACCEPTED);
    stream->Write(accepted);
  }

  // The VM process's verdict arrives on the socketpair while records still flow; it is passed
  // on to the source at once (the source waits for it before it stops its VM).
  std::string verdict;
  std::thread verdict_reader([&] {
    char c;
    while (::read(ours.get(), &c, 1) == 1 && c != '\n') verdict += c;
    v1::MigrationEvent e;
    bool restored = verdict.rfind("RESTORED", 0) == 0;
    if (restored) {
      e.set_kind(v1::MigrationEvent::RESTORED);
      e.set_restore_ms(std::atof(verdict.c_str() + 8));
    } else {
      e.set_kind(v1::MigrationEvent::FAILED);
      e.set_error(verdict.rfind("FAILED ", 0) == 0 ? verdict.substr(7)
                                                   : "the receiving VM process ended");
    }
    stream->Write(e);
    // The control socket comes up as the VM starts: learn the machine's shape from it.
    for (int i = 0; restored && i < 200 && !manager_.refresh_from_process(name).ok(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  while (stream->Read(&chunk)) {
    if (chunk.has_commit()) break;
    if (reassembly) {
      if (!reassembly->push(chunk.sequence(), std::move(*chunk.mutable_records()))) break;
      continue;
    }
    const std::string& bytes = chunk.records();
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::send(ours.get(), bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    if (done < bytes.size()) break;  // the VM process is gone; its verdict says why
  }
  ::shutdown(ours.get(), SHUT_WR);  // the source is done (or gone): end of the record stream
  verdict_reader.join();
  if (verdict.rfind("RESTORED", 0) != 0) {
    // Clean up: the half-received VM goes away.
    (void)manager_.stop(name);
    (void)manager_.remove(name);
    std::string why = verdict.rfind("FAILED ", 0) == 0 ? verdict.substr(7)
                      : context->IsCancelled()         ? "the source went away"
                                                       : "the stream ended before the VM was "
                                                         "restored";
    spdlog::warn("VM {}: incoming migration failed: {}", name, why);
    return grpc::Status(grpc::StatusCode::ABORTED, why);
  }
  spdlog::info("VM {}: incoming migration complete", name);
  return grpc::Status::OK;
}

}  // namespace vmctl::daemon
