// Pre-copy live migration of a running VM into a MigrationTarget (the source VM process's part of
// migrate/protocol.md).
//
// Round 0 sends every non-zero page while the guest runs, with KVM dirty logging on (manual
// protect: KVM_GET_DIRTY_LOG, then KVM_CLEAR_DIRTY_LOG in chunks just before the pages are read).
// Each later round sends the pages dirtied during the previous one, and measures the bandwidth
// and the guest's dirty rate. When the dirty pages left could be sent within the downtime target,
// the VM is paused for the stop-and-copy: the last dirty pages, then the device and vCPU records
// and the trailer. Then the VM stays paused: whether it runs again here (rollback) or ends here
// (the destination resumed it) is decided by the switchover, not by this engine. Any failure or
// cancellation before the end resumes the VM and leaves it as it was.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "base/error.h"
#include "state/stream.h"
#include "state/vm_state.h"
#include "vmm/vm.h"

namespace vmctl::migrate {

struct PrecopyOptions {
  double downtime_ms = 30;     // target
  unsigned max_rounds = 30;    // then the policy decides
  double max_seconds = 120;    // time budget for the pre-copy rounds
  bool auto_converge = false;  // throttle the vCPUs instead of giving up
  int compression_level = 0;   // zstd for pages; 0 = off (loopback is faster than zstd)
};

struct DowntimeBreakdown {
  double pause_to_last_page_ms = 0;
  double last_page_to_state_ms = 0;
  double state_to_resumed_ms = 0;
  double total_ms = 0;
  double state_to_ready_ms = 0;
  double switchover_ms = 0;
};

struct Progress {
  // precopy, stop-and-copy, sent (the VM is paused here with everything sent), failed, cancelled
  std::string phase;
  unsigned round = 0;
  uint64_t bytes_sent = 0;
  uint64_t pages_sent = 0;
  uint64_t remaining_bytes = 0;
  double bandwidth_mib_s = 0;
  double dirty_rate_mib_s = 0;
  double expected_downtime_ms = 0;
  unsigned throttle_percent = 0;
  double elapsed_seconds = 0;
  DowntimeBreakdown downtime;
  std::string error;
  // "sent": when the VM paused and when the last page and the last state record went out
  // (steady clock, the same in every process of the host), for the downtime breakdown.
  int64_t paused_at_ns = 0, last_page_at_ns = 0, state_at_ns = 0;
};

// Where the stream goes. The sink carries the records; flush() hands everything written to the
// transport; abort() makes every later write fail at once (cancel).
class MigrationTarget {
 public:
  virtual ~MigrationTarget() = default;
  virtual state::ByteSink& sink() = 0;
  virtual Status flush() = 0;
  virtual void abort(const std::string& why) = 0;
  // One round's pages (all non-zero pages without `dirty`). By default memory records on the
  // record stream; a target with several data connections spreads page runs over them.
  virtual Result<state::PageStats> send_pages(vmm::Vm& vm, state::RecordWriter& writer,
                                              const state::DirtyBitmaps* dirty) {
    return state::write_pages(vm, writer, dirty);
  }
  // After the last round's pages, before the machine state: ends the page-only connections.
  virtual Status end_pages() { return ok_status(); }
  // Bytes sent other than through sink() (the page-only connections), for the bandwidth.
  virtual uint64_t side_bytes() const { return 0; }
};

// Migrates `vm` (running or paused) up to the end of the stop-and-copy. On success (phase
// "sent") the VM is left paused by one level of Vm::pause(): the caller resumes it (rollback) or
// ends it (the destination took it over). On failure the VM runs as before (unless it was paused)
// and the error says why. `cancel` is honoured before every record written (whoever sets it
// should also abort() the target, so that a write blocked on a stalled peer returns).
Result<Progress> migrate_vm(vmm::Vm& vm, MigrationTarget& target, const PrecopyOptions& options,
                            const std::function<void(const Progress&)>& report,
                            const std::atomic<bool>& cancel);

}  // namespace vmctl::migrate
