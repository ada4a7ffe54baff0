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
#include "daemon/host_report_cache.h"
#include "vmprocess/control_client.h"

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

// The caller's paths, resolved and checked against the daemon's policy (daemon/path_policy.h);
// the request the daemon acts on carries the resolved paths.
Status VmctlService::resolve_paths(v1::VmConfig& config) const {
  if (!config.kernel().empty())
    config.set_kernel(TRY(access_.paths.existing(config.kernel(), "kernel")));
  if (!config.initrd().empty())
    config.set_initrd(TRY(access_.paths.existing(config.initrd(), "initrd")));
  return ok_status();
}

grpc::Status VmctlService::CreateVm(grpc::ServerContext* context, const v1::CreateVmRequest* r,
                                    v1::VmInfo* out) {
  return guarded(context, "CreateVm", [&] {
    v1::VmConfig config = r->config();
    if (Status paths = resolve_paths(config); !paths.ok()) return to_grpc(paths.error());
    Result<v1::VmInfo> created = manager_.create(r->name(), config);
    if (!created.ok() || !r->start()) return reply(std::move(created), out);
    return reply(manager_.start(r->name()), out);
  });
}

grpc::Status VmctlService::StartVm(grpc::ServerContext* context, const v1::VmRef* r,
                                   v1::VmInfo* out) {
  return guarded(context, "StartVm", [&] { return reply(manager_.start(r->name()), out); });
}
grpc::Status VmctlService::PauseVm(grpc::ServerContext* context, const v1::VmRef* r,
                                   v1::VmInfo* out) {
  return guarded(context, "PauseVm", [&] { return reply(manager_.pause(r->name()), out); });
}
grpc::Status VmctlService::ResumeVm(grpc::ServerContext* context, const v1::VmRef* r,
                                    v1::VmInfo* out) {
  return guarded(context, "ResumeVm", [&] { return reply(manager_.resume(r->name()), out); });
}
grpc::Status VmctlService::StopVm(grpc::ServerContext* context, const v1::VmRef* r,
                                  v1::VmInfo* out) {
  return guarded(context, "StopVm", [&] { return reply(manager_.stop(r->name()), out); });
}
grpc::Status VmctlService::DeleteVm(grpc::ServerContext* context, const v1::VmRef* r,
                                    v1::VmInfo* out) {
  return guarded(context, "DeleteVm", [&] { return reply(manager_.remove(r->name()), out); });
}
grpc::Status VmctlService::GetVm(grpc::ServerContext* context, const v1::VmRef* r,
                                 v1::VmInfo* out) {
  return guarded(context, "GetVm",
                 [&] { return reply(manager_.get(r->name(), /*with_stats=*/true), out); });
}
grpc::Status VmctlService::ListVms(grpc::ServerContext* context, const v1::ListVmsRequest*,
                                   v1::ListVmsResponse* out) {
  return guarded(context, "ListVms", [&] {
    for (v1::VmInfo& i : manager_.list()) *out->add_vms() = std::move(i);
    return grpc::Status::OK;
  });
}

grpc::Status VmctlService::SendConsole(grpc::ServerContext* context, const v1::ConsoleInput* r,
                                       v1::VmInfo* out) {
  return guarded(context, "SendConsole", [&] {
    Status sent = manager_.console_input(r->name(), r->data());
    if (!sent.ok()) return to_grpc(sent.error());
    return reply(manager_.get(r->name()), out);
  });
}

grpc::Status VmctlService::Snapshot(grpc::ServerContext* context, const v1::SnapshotRequest* r,
                                    v1::SnapshotResponse* out) {
  return guarded(context, "Snapshot", [&] {
    v1::SnapshotRequest checked = *r;
    Result<std::string> path = access_.paths.new_file(r->path(), "snapshot");
    if (!path.ok()) return to_grpc(path.error());
    checked.set_path(*path);
    if (!r->memory_file().empty()) {
      Result<std::string> memory = access_.paths.new_file(r->memory_file(), "memory file");
      if (!memory.ok()) return to_grpc(memory.error());
      checked.set_memory_file(*memory);
    }
    return reply(manager_.snapshot(checked), out);
  });
}

grpc::Status VmctlService::Restore(grpc::ServerContext* context, const v1::RestoreRequest* r,
                                   v1::VmInfo* out) {
  return guarded(context, "Restore", [&] {
    v1::RestoreRequest checked = *r;
    for (int i = 0; i < checked.files_size(); ++i) {
      Result<std::string> file = access_.paths.existing(r->files(i), "snapshot");
      if (!file.ok()) return to_grpc(file.error());
      checked.set_files(i, *file);
    }
    return reply(manager_.restore(checked), out);
  });
}

grpc::Status VmctlService::WatchVm(grpc::ServerContext* context, const v1::WatchVmRequest* r,
                                   grpc::ServerWriter<v1::VmEvent>* writer) {
  return guarded(context, "WatchVm", [&] { return watch(context, *r, writer); });
}

grpc::Status VmctlService::watch(grpc::ServerContext* context, const v1::WatchVmRequest& request,
                                 grpc::ServerWriter<v1::VmEvent>* writer) {
  const v1::WatchVmRequest* r = &request;
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
  return guarded(context, "Migrate", [&] {
    v1::MigrateRequest checked = *r;
    // A local destination is a unix socket on this host: only those the policy allows, so a
    // caller cannot make the VM process stream the guest into any socket it likes.
    if (r->destination().rfind("unix:", 0) == 0) {
      Result<std::string> socket = access_.migration_sockets.existing(
          r->destination().substr(5), "local migration destination");
      if (!socket.ok()) return to_grpc(socket.error());
      checked.set_destination("unix:" + *socket);
    }
    return outgoing_.migrate(context, checked, writer);
  });
}

grpc::Status VmctlService::CancelMigration(grpc::ServerContext* context, const v1::VmRef* r,
                                           v1::VmInfo* out) {
  return guarded(context, "CancelMigration",
                 [&] { return reply(outgoing_.cancel(r->name()), out); });
}

grpc::Status VmctlService::RecoverMigration(grpc::ServerContext* context, const v1::VmRef* r,
                                            v1::VmInfo* out) {
  return guarded(context, "RecoverMigration",
                 [&] { return reply(outgoing_.recover_vm(r->name()), out); });
}

grpc::Status VmctlService::GetHostInfo(grpc::ServerContext* context, const v1::HostInfoRequest*,
                                       v1::HostInfo* out) {
  return guarded(context, "GetHostInfo", [&] {
    Result<nlohmann::json> report = cached_host_report();
    if (!report.ok()) return to_grpc(report.error());
    out->set_report_json(report->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return grpc::Status::OK;
  });
}

}  // namespace vmctl::daemon
