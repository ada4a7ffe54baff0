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
  return outgoing_.migrate(context, *r, writer);
}

grpc::Status VmctlService::CancelMigration(grpc::ServerContext*, const v1::VmRef* r,
                                           v1::VmInfo* out) {
  return reply(outgoing_.cancel(r->name()), out);
}

grpc::Status VmctlService::RecoverMigration(grpc::ServerContext*, const v1::VmRef* r,
                                            v1::VmInfo* out) {
  return reply(outgoing_.recover_vm(r->name()), out);
}

grpc::Status VmctlService::GetHostInfo(grpc::ServerContext*, const v1::HostInfoRequest*,
                                       v1::HostInfo* out) {
  Result<nlohmann::json> report = cached_host_report();
  if (!report.ok()) return to_grpc(report.error());
  std::string cached = report->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  out->set_report_json(cached);
  return grpc::Status::OK;
}

}  // namespace vmctl::daemon
