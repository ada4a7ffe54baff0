// Pre-copy live migration of a running VM into a MigrationTarget.
//
// Round 0 sends every non-zero page while the guest runs, with KVM dirty logging on (manual
// protect: KVM_GET_DIRTY_LOG, then KVM_CLEAR_DIRTY_LOG in chunks just before the pages are read).
// Each later round sends the pages dirtied during the previous one, and measures the bandwidth
// and the guest's dirty rate. When the dirty pages left could be sent within the downtime target,
// the VM is paused for the stop-and-copy: the last dirty pages, then the device and vCPU records
// and the trailer. The destination restores, resumes and acknowledges; only then does the source
// give the VM up. Any failure or cancellation before that acknowledgement resumes the source VM
// and leaves it as it was.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "base/error.h"
#include "state/stream.h"
#include "vmm/vm.h"

namespace vmctl::migrate {

struct PrecopyOptions {
  double downtime_ms = 30;     // target
  unsigned max_rounds = 30;    // then the policy decides
  double max_seconds = 120;    // time budget for the pre-copy rounds
  bool auto_converge = false;  // throttle the vCPUs instead of giving up
  int compression_level = 0;   // zstd for pages; 0 = off (loopback is faster than zstd)
  double ack_timeout_seconds = 60;
};

struct DowntimeBreakdown {
  double pause_to_last_page_ms = 0;
  double last_page_to_state_ms = 0;
  double state_to_resumed_ms = 0;
  double total_ms = 0;
};

struct Progress {
  std::string phase;  // precopy, stop-and-copy, done, failed, cancelled
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
};

// Where the stream goes. The sink carries the records; restored() blocks until the destination
// says the VM runs there (returns its restore time in ms) or fails; commit() tells it the source
// has let the VM go.
class MigrationTarget {
 public:
  virtual ~MigrationTarget() = default;
  virtual state::ByteSink& sink() = 0;
  virtual Status flush() = 0;
  virtual Result<double> restored(double timeout_seconds) = 0;
  virtual void commit() = 0;
};

// Migrates `vm` (running or paused). On success the VM is left paused and must not run here
// again; on failure the VM runs as before (unless it was paused) and the error says why.
// `cancel` is polled between rounds and between records.
Result<Progress> migrate_vm(vmm::Vm& vm, MigrationTarget& target, const PrecopyOptions& options,
                            const std::function<void(const Progress&)>& report,
                            const std::atomic<bool>& cancel);

}  // namespace vmctl::migrate
