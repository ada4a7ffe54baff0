#include "vmprocess/migration_receiver.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include <fmt/format.h>

#include "base/fd.h"
#include "base/size.h"
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
  return TRY_CTX(vmm::Vm::create(config), "preparing the VM the migration fills");
}

}  // namespace

int receive_migration(const ReceiveOptions& o) {
  block_stop_signals();
  Result<std::function<void(const uint8_t*, size_t)>> console =
      console_output(o.console_log, o.console_log_max);
  if (!console.ok()) return fail(console.error());
  if (o.control.empty() || o.migration_id.empty()) {
    return fail(Error::user("receive needs --control and --migration-id (vmctld runs it)"));
  }
  Fd verdict_fd(::dup(o.stream_fd));
  auto verdict = [&](const std::string& line) {
    std::string text = line + "\n";
    if (::write(verdict_fd.get(), text.data(), text.size()) < 0) {
      // The daemon is gone. Before READY that ends this process (the stream is cut); after it
      // the VM waits for the restarted daemon.
    }
  };
  std::unique_ptr<state::FileSource> source =
      state::FileSource::adopt(Fd(o.stream_fd), "migration stream");
  state::RecordReader reader(*source, "migration stream");
  state::RestoreOptions options;
  options.console_output = *console;
  Result<vmm::DirtyTracking> tracking = vmm::parse_dirty_tracking(o.dirty_tracking);
  if (!tracking.ok()) return fail(tracking.error());
  options.dirty_tracking = *tracking;
  options.dirty_ring_entries = o.dirty_ring_entries;
  options.budget.max_guest_memory = o.max_guest_memory;
  // The machine is built now, from the offer, while the source sends its first round: the
  // stream then only fills it (and must describe exactly this machine).
  Result<std::unique_ptr<vmm::Vm>> prepared = prepare_vm(o, options);
  if (!prepared.ok()) {
    verdict("FAILED " + prepared.error().message());
    return fail(prepared.error());
  }
  auto start = std::chrono::steady_clock::now();
  Result<std::unique_ptr<vmm::Vm>> vm =
      state::restore_vm(reader, options, nullptr, std::move(prepared).value());
  if (!vm.ok()) {
    verdict("FAILED " + vm.error().message());
    return fail(vm.error());
  }
  source.reset();
  // Paused, then the control socket: once READY is said, the switchover (which resumes it) may
  // come at once.
  (*vm)->pause();
  Result<std::unique_ptr<ControlServer>> server = ControlServer::start(
      **vm, o.control, /*vm_paused=*/true, IncomingMigration{o.migration_id, o.stay_paused});
  if (!server.ok()) {
    verdict("FAILED " + server.error().message());
    return fail(server.error());
  }
  double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  verdict(fmt::format("READY {:.3f}", ms));
  verdict_fd.reset();
  std::fprintf(stderr,
               "vmctl: received the VM (%s, %u vCPUs); paused until migration %s switches "
               "over\n",
               format_size((*vm)->memory().ram_size()).c_str(), (*vm)->num_cpus(),
               o.migration_id.c_str());
  return run_session(**vm, SessionOptions{false, false, /*start_paused=*/true, o.control},
                     std::move(server).value());
}

}  // namespace vmctl::vmprocess
