#include "vmprocess/migration_sender.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "migrate/journal.h"
#include "migrate/precopy.h"
#include "vmprocess/control_client.h"

namespace vmctl::vmprocess {
namespace {

nlohmann::json progress_json(const migrate::Progress& p, const std::string& id) {
  nlohmann::json j = {{"phase", p.phase},
                      {"migration_id", id},
                      {"round", p.round},
                      {"bytes_sent", p.bytes_sent},
                      {"pages_sent", p.pages_sent},
                      {"remaining_bytes", p.remaining_bytes},
                      {"bandwidth_mib_s", p.bandwidth_mib_s},
                      {"dirty_rate_mib_s", p.dirty_rate_mib_s},
                      {"expected_downtime_ms", p.expected_downtime_ms},
                      {"throttle_percent", p.throttle_percent},
                      {"elapsed_seconds", p.elapsed_seconds}};
  if (!p.error.empty()) j["error"] = p.error;
  if (p.phase == "sent") {
    j["paused_at_ns"] = p.paused_at_ns;
    j["last_page_at_ns"] = p.last_page_at_ns;
    j["state_at_ns"] = p.state_at_ns;
  }
  return j;
}

}  // namespace

MigrationSender::~MigrationSender() {
  cancel_ = true;
  {
    std::lock_guard lock(mu_);
    if (streams_) streams_->abort("the VM process is ending");
  }
  if (thread_.joinable()) thread_.join();
}

MigrationSender::Stage MigrationSender::stage() const {
  std::lock_guard lock(mu_);
  return stage_;
}

std::string MigrationSender::migration_id() const {
  std::lock_guard lock(mu_);
  return id_;
}

const char* MigrationSender::stage_name() const {
  switch (stage()) {
    case Stage::kIdle:
      return "idle";
    case Stage::kSending:
      return "sending";
    case Stage::kSent:
      return "sent";
  }
  return "idle";
}

Status MigrationSender::start(const MigrateArgs& args, Fd conn) {
  const std::string& id = args.migration_id;
  std::lock_guard lock(mu_);
  if (stage_ != Stage::kIdle) {
    return Error::conflict(
        fmt::format("migration {} of this VM is {} already", id_,
                    stage_ == Stage::kSent ? "waiting for its switchover" : "in progress"));
  }
  if (thread_.joinable()) thread_.join();  // the previous one has ended (stage idle)
  stage_ = Stage::kSending;
  ++generation_;
  id_ = id;
  cancel_ = false;
  thread_ = std::thread([this, args, c = std::move(conn)]() mutable { run(args, std::move(c)); });
  return ok_status();
}

Status MigrationSender::cancel() {
  std::lock_guard lock(mu_);
  if (stage_ == Stage::kSent) {
    return Error::conflict(
        "the migration has sent everything: vmctld decides its switchover now (vmctl cancel asks "
        "it)");
  }
  if (stage_ != Stage::kSending) return Error::conflict("no migration is in progress");
  cancel_ = true;
  if (streams_) streams_->abort("cancelled");
  return ok_status();
}

Status MigrationSender::decide(const std::string& id, bool commit) {
  {
    std::lock_guard lock(mu_);
    if (stage_ != Stage::kSent || id != id_) {
      return Error::conflict(fmt::format(
          "no migration {} waits for a decision here (this VM's "
          "migration is {}{})",
          id, id_.empty() ? "none" : id_, stage_ == Stage::kSending ? ", still sending" : ""));
    }
    stage_ = Stage::kIdle;
  }
  if (commit) {
    spdlog::info("migration {}: the destination runs the VM now; it ends here", id);
    vm_.stop();
  } else {
    spdlog::info("migration {}: rolled back; the VM runs on here", id);
    vm_.resume();  // the migration's own pause (a pause of the operator's stays)
  }
  return ok_status();
}

// The daemon never writes on the migration's connection: readable means it closed it (it went
// away). Before "sent" that cancels the migration (protocol.md, rule 6).
void MigrationSender::watch_daemon(int conn) {
  while (stage() == Stage::kSending && !cancel_) {
    pollfd p{conn, POLLRDHUP, 0};
    int r = ::poll(&p, 1, 200);
    if (r > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
      std::lock_guard lock(mu_);
      if (stage_ != Stage::kSending) return;
      spdlog::warn("migration {}: vmctld went away while sending: cancelled, the VM runs on", id_);
      cancel_ = true;
      if (streams_) streams_->abort("vmctld went away");
      return;
    }
  }
}

void MigrationSender::run(MigrateArgs args, Fd conn) {
  const std::string id = args.migration_id;
  migrate::PrecopyOptions options;
  options.downtime_ms = args.downtime_ms;
  options.max_rounds = args.max_rounds;
  options.max_seconds = args.max_seconds;
  options.auto_converge = args.auto_converge;
  options.compression_level = args.compression;
  migrate::DataLaneOptions data;
  data.endpoint = args.destination;
  data.migration_id = id;
  data.secret = args.secret;
  data.count = args.streams;
  data.stall_timeout = std::chrono::milliseconds(args.stall_timeout_ms);
  data.tls = args.tls;
  data.plaintext = args.plaintext;
  std::thread watcher([this, fd = conn.get()] { watch_daemon(fd); });
  auto send = [&](const nlohmann::json& line) { (void)send_json_line(conn.get(), line); };
  spdlog::info("migration {}: sending to {} over {} {}data connection{}", id, data.endpoint,
               data.count, data.plaintext ? "plaintext (trusted network) " : "",
               data.count == 1 ? "" : "s");

  Result<std::unique_ptr<migrate::DataLanes>> streams = migrate::DataLanes::connect(data);
  Result<migrate::Progress> result = Error::failure("not started");
  if (!streams.ok()) {
    result = std::move(streams).error();
  } else {
    {
      std::lock_guard lock(mu_);
      streams_ = streams->get();
      if (cancel_) streams_->abort("cancelled");
    }
    result = migrate::migrate_vm(
        vm_, **streams, options,
        [&](const migrate::Progress& p) {
          if (p.phase != "sent") send(progress_json(p, id));
        },
        cancel_);
    std::lock_guard lock(mu_);
    streams_ = nullptr;
  }
  if (!result.ok()) {
    migrate::Progress failed;
    failed.phase = cancel_ ? "cancelled" : "failed";
    failed.error = result.error().message();
    spdlog::warn("migration {} {}: {}; the VM runs on here", id, failed.phase, failed.error);
    {
      std::lock_guard lock(mu_);
      stage_ = Stage::kIdle;
    }
    send(progress_json(failed, id));
  } else {
    {
      std::lock_guard lock(mu_);
      stage_ = Stage::kSent;
    }
    send(progress_json(*result, id));
  }
  watcher.join();
  streams = Error::failure("done");  // close the data streams before the daemon hears the end
  conn.reset();
}

}  // namespace vmctl::vmprocess
