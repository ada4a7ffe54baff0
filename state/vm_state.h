// Capture and restore of a whole VM as a record stream (see stream.h for the framing and
// proto/state.capnp for the records).
//
// Stream order: Header, MemoryPages..., then the VM-level records (Irqchip, Pit, Clock, Device),
// one Vcpu and one Lapic record per vCPU, and the Trailer. Memory comes first so a receiver can
// write pages into guest RAM as they arrive and buffer only the small CPU and device records.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "base/error.h"
#include "state/dirty_tracker.h"
#include "state/restore_budget.h"
#include "state/stream.h"
#include "vmm/vm.h"

namespace vmctl::state {

struct CaptureOptions {
  proto::state::StreamKind kind = proto::state::StreamKind::FULL_SNAPSHOT;
  std::string parent_id;
  // For diff streams: only these pages are written (a DirtyLog record lists them first).
  const DirtyBitmaps* dirty = nullptr;
  // Full snapshots only: guest RAM goes to this file (a MemoryFile record names it as
  // `memory_file_name`) instead of MemoryPages records.
  FileSink* memory_file = nullptr;
  std::string memory_file_name;
  // The stream's id; empty: a fresh one.
  std::string snapshot_id;
};

struct CaptureStats {
  uint64_t records = 0;
  uint64_t bytes = 0;
  uint64_t pages = 0;       // non-zero pages written
  uint64_t zero_pages = 0;  // elided
  std::string snapshot_id;
  std::chrono::nanoseconds duration{0};
};

// Writes the VM's complete state. The VM must be paused (the caller holds a PauseGuard).
Result<CaptureStats> capture_vm(vmm::Vm& vm, RecordWriter& writer, const CaptureOptions& options);

// The pieces of capture_vm, for live migration, which sends memory in rounds while the VM runs
// and the rest once it is paused: the header; pages (all non-zero ones, or a DirtyLog record and
// the dirty pages); then the VM-level records, every vCPU and the trailer (VM paused).
struct PageStats {
  uint64_t pages = 0, zero_pages = 0;
};
Status write_stream_header(vmm::Vm& vm, RecordWriter& writer, const CaptureOptions& options,
                           const std::string& stream_id);
Result<PageStats> write_pages(vmm::Vm& vm, RecordWriter& writer, const DirtyBitmaps* dirty);
Status write_machine_state(vmm::Vm& vm, RecordWriter& writer, const PageStats& pages);
// A fresh random stream/snapshot id (32 hex digits).
std::string new_stream_id();

struct SnapshotOptions {
  int compression_level = 0;  // zstd level for memory; 0 = off (the default: see cli --compression)
  bool leave_paused = false;  // `vmctl snapshot --stop`
  // Pages dirtied since the previous snapshot; after this snapshot it tracks from here. With
  // `diff`, only those pages are written and the snapshot names the previous one as its parent.
  DirtyTracker* tracker = nullptr;
  bool diff = false;
  // Write guest RAM raw to this file instead of into the snapshot (restorable with lazy mapping).
  std::string memory_file;
};

// Pauses the VM, writes a full snapshot to `path` atomically (temporary file, fsync, rename) and
// resumes it unless asked not to. On any error the previous file at `path` is untouched. With a
// memory file the two commit as a pair (state/memory_file.h).
Result<CaptureStats> save_snapshot(vmm::Vm& vm, const std::string& path,
                                   const SnapshotOptions& options);
// save_snapshot's crash points (base/crash_point.h), in the order it reaches them: both files
// written, not renamed; the memory file under its pending name; the snapshot renamed (the commit
// point); the memory file in place. The memory-file ones exist only with a memory file.
inline constexpr std::array<const char*, 4> kSnapshotCrashPoints = {
    "snapshot-written", "memory-file-pending", "snapshot-committed", "memory-file-installed"};

// What a stream's header says about the machine it describes.
struct StreamInfo {
  uint16_t major = 0, minor = 0;
  std::string producer;
  std::string snapshot_id, parent_id;
  proto::state::StreamKind kind = proto::state::StreamKind::FULL_SNAPSHOT;
  uint64_t memory_size = 0;
  unsigned vcpus = 0;
  std::string cmdline;
};

// The order a vCPU's state goes back into KVM. KVM accepts each piece on its own, but some pieces
// reset or reinterpret others, so the order is part of correctness (see KVM-STATE.md):
//  - the TSC rate before anything that writes the TSC (the TSC MSR is scaled by it);
//  - CPUID before all CPU state: KVM checks XSAVE sizes, MSR availability and CR4 bits against it;
//  - special registers (which carry the APIC base MSR, hence the LAPIC mode) before the LAPIC page;
//  - XCRs before XSAVE, since XCR0 says which XSAVE components are valid;
//  - the LAPIC before the MSRs, and the TSC-deadline MSR after both: setting the LAPIC resets the
//    timer and with it the deadline;
//  - vCPU events last: an injected or pending exception or interrupt must not be dropped by a later
//    register write, and NMI/SMM state refers to the final mode;
//  - then PPR, which KVM derives, is checked against TPR and the highest ISR vector.
enum class VcpuRestoreStep {
  kTscRate,
  kCpuid,
  kMpState,
  kRegs,
  kSregs,
  kXcrs,
  kXsave,
  kDebugRegs,
  kLapic,
  kMsrs,
  kTscDeadline,
  kEvents,
  kVerifyPpr,
};
inline constexpr std::array kVcpuRestoreOrder = {
    VcpuRestoreStep::kTscRate,   VcpuRestoreStep::kCpuid,       VcpuRestoreStep::kMpState,
    VcpuRestoreStep::kRegs,      VcpuRestoreStep::kSregs,       VcpuRestoreStep::kXcrs,
    VcpuRestoreStep::kXsave,     VcpuRestoreStep::kDebugRegs,   VcpuRestoreStep::kLapic,
    VcpuRestoreStep::kMsrs,      VcpuRestoreStep::kTscDeadline, VcpuRestoreStep::kEvents,
    VcpuRestoreStep::kVerifyPpr,
};
const char* vcpu_restore_step_name(VcpuRestoreStep step);

struct RestoreOptions {
  std::function<void(const uint8_t*, size_t)> console_output;
  // A host without TSC scaling runs the guest's TSC at the host's rate. By default that is a
  // warning (as in QEMU: guests on kvmclock cope, and refusing would strand the snapshot); strict
  // makes it an error for guests that calibrated against the TSC.
  bool strict_tsc = false;
  // A snapshot with a memory file: map it copy-on-write instead of reading it, so restore time
  // does not grow with RAM (pages are read when the guest touches them).
  bool lazy = false;
  // How the restored VM tracks dirty pages: a property of this host, not of the snapshot.
  vmm::DirtyTracking dirty_tracking = vmm::DirtyTracking::kAuto;
  uint32_t dirty_ring_entries = 0;
  // Which LAPIC the restored VM gets: a snapshot restores into either (state/user_irqchip_state.h).
  vmm::IrqchipMode irqchip = vmm::IrqchipMode::kKernel;
  // What the stream may make this host spend (guest RAM, vCPUs, records held until the trailer).
  RestoreBudget budget;
  // A migration over several data connections: called at the trailer of the main one, it waits
  // until every other connection has delivered all its pages, and returns how many (or why one
  // failed).
  std::function<Result<uint64_t>()> other_page_lanes;
};

// Reads a whole stream from a peer (a migration) and builds a VM in its state, not yet started. Bad
// input (truncated, corrupt, newer format, a CPU that lacks features the guest uses, inconsistent
// LAPIC state, a record missing or out of place, more than the budget allows) is a user error
// naming what is wrong; a partly restored VM is destroyed. The stream must number its records and
// may not name a memory file, whatever kind its header claims (see state/stream_contents.h).
Result<std::unique_ptr<vmm::Vm>> restore_vm(RecordReader& reader, const RestoreOptions& options,
                                            StreamInfo* info = nullptr,
                                            std::unique_ptr<vmm::Vm> prepared = nullptr);

// Restores a full snapshot followed by any number of diff snapshots, each the child of the one
// before it (checked by snapshot id).
Result<std::unique_ptr<vmm::Vm>> restore_snapshot(const std::vector<std::string>& chain,
                                                  const RestoreOptions& options,
                                                  StreamInfo* info = nullptr);

}  // namespace vmctl::state
