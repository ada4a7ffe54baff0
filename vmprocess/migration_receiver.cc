#include "vmprocess/migration_receiver.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include <fmt/format.h>

#include "base/size.h"
#include "state/stream.h"
#include "state/vm_state.h"
#include "vmprocess/console.h"
#include "vmprocess/session.h"

namespace vmctl::vmprocess {
namespace {

int fail(const Error& error) {
  std::fprintf(stderr, "vmctl: %s\n", error.message().c_str());
  return error.exit_code();
}

}  // namespace

int receive_migration(const ReceiveOptions& o) {
  block_stop_signals();
  if (!o.console_log.empty()) {
    Status redirected = redirect_console(o.console_log);
    if (!redirected.ok()) return fail(redirected.error());
  }
  // The verdict goes back on the stream's descriptor: one line, RESTORED or FAILED.
  int verdict_fd = ::dup(o.stream_fd);
  auto verdict = [&](const std::string& line) {
    std::string text = line + "\n";
    if (::write(verdict_fd, text.data(), text.size()) < 0) {
      // The daemon is gone; the VM's fate is decided by what follows (the session, or exit).
    }
  };
  std::unique_ptr<state::FileSource> source =
      state::FileSource::adopt(Fd(o.stream_fd), "migration stream");
  state::RecordReader reader(*source, "migration stream");
  state::RestoreOptions options;
  options.console_output = write_stdout;
  Result<vmm::DirtyTracking> tracking = vmm::parse_dirty_tracking(o.dirty_tracking);
  if (!tracking.ok()) return fail(tracking.error());
  options.dirty_tracking = *tracking;
  options.dirty_ring_entries = o.dirty_ring_entries;
  auto start = std::chrono::steady_clock::now();
  Result<std::unique_ptr<vmm::Vm>> vm = state::restore_vm(reader, options);
  if (!vm.ok()) {
    verdict("FAILED " + vm.error().message());
    ::close(verdict_fd);
    return fail(vm.error());
  }
  double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  // The session starts the vCPUs right after the verdict: acknowledged, then resumed.
  verdict(fmt::format("RESTORED {:.3f}", ms));
  ::close(verdict_fd);
  std::fprintf(stderr, "vmctl: received the VM (%s, %u vCPUs); it runs here now\n",
               format_size((*vm)->memory().ram_size()).c_str(), (*vm)->num_cpus());
  return run_session(**vm, SessionOptions{false, false, false, o.control});
}

}  // namespace vmctl::vmprocess
