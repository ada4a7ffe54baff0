// Thin, typed wrappers over the KVM ioctl API: one method per ioctl, named after it, no policy.
//
// KvmSystem (/dev/kvm) → VmFd → VcpuFd, each exposing only the ioctls legal on that fd. Every
// failure is an Error naming the ioctl, the vCPU where there is one, and the errno text. This
// folder is the only place in the project that includes <linux/kvm.h> or calls ioctl().
#pragma once

#include "vmm/kvm/kvm_uapi.h"

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/fd.h"
#include "vmm/cpuid.h"

namespace vmctl::vmm::kvm {

struct MsrEntry {
  uint32_t index;
  uint64_t value;
};

class VcpuFd;
class VmFd;

class KvmSystem {
 public:
  // Opens the KVM device and checks the API version and every capability the VMM relies on; the
  // error says what is missing and what to do (load kvm_intel/kvm_amd, add the user to group kvm).
  static Result<KvmSystem> open(const std::string& path = "/dev/kvm");
  // Opens (and checks) the device now and keeps it for this process: later open() calls of
  // /dev/kvm duplicate it. For a VM process that gives up its privileges and its view of /dev
  // (vmprocess/jail.h) after this.
  static Status open_early(const std::string& path = "/dev/kvm");

  int check_extension(long capability) const;
  Result<std::vector<CpuidEntry>> get_supported_cpuid() const;
  Result<std::vector<uint32_t>> get_msr_index_list() const;
  Result<VmFd> create_vm() const;
  int vcpu_mmap_size() const { return vcpu_mmap_size_; }
  int fd() const { return fd_.get(); }

 private:
  explicit KvmSystem(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
  int vcpu_mmap_size_ = 0;
};

class VmFd {
 public:
  VmFd(Fd fd, int vcpu_mmap_size) : fd_(std::move(fd)), vcpu_mmap_size_(vcpu_mmap_size) {}

  int check_extension(long capability) const;
  Status enable_cap(uint32_t capability, uint64_t arg0 = 0);
  // KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING_ACQ_REL, or KVM_CAP_DIRTY_LOG_RING where only that is
  // offered) with a ring of `entries` (a power of two) per vCPU. Only before the first vCPU;
  // every vCPU created afterwards maps its ring (VcpuFd::dirty_ring()).
  Status enable_dirty_ring(uint32_t entries);
  uint32_t dirty_ring_entries() const { return dirty_ring_entries_; }
  // KVM_RESET_DIRTY_RINGS: re-protects the pages of every ring entry marked reset and frees those
  // entries; returns how many there were.
  Result<uint32_t> reset_dirty_rings();
  Status set_tss_addr(uint64_t address);
  Status set_identity_map_addr(uint64_t address);
  Status create_irqchip();
  Status create_pit2();
  Status set_user_memory_region(uint32_t slot, uint32_t flags, uint64_t guest_phys, uint64_t size,
                                void* host);
  Status irq_line(uint32_t gsi, bool level);
  // KVM_X86_SET_MSR_FILTER: accesses to `denied` (reads and writes) exit to userspace (with
  // KVM_CAP_X86_USER_SPACE_MSR's KVM_MSR_EXIT_REASON_FILTER); every other MSR stays KVM's.
  Status deny_msrs(const std::vector<uint32_t>& denied);
  Result<VcpuFd> create_vcpu(int index);
  Result<Fd> get_stats_fd() const;

  // VM-level device state of the in-kernel irqchip (chip 0: PIC master, 1: PIC slave, 2: IOAPIC).
  Result<kvm_irqchip> get_irqchip(uint32_t chip_id) const;
  Status set_irqchip(const kvm_irqchip& chip);
  Result<kvm_pit_state2> get_pit2() const;
  Status set_pit2(const kvm_pit_state2& pit);
  Result<kvm_clock_data> get_clock() const;
  Status set_clock(const kvm_clock_data& clock);
  // KVM_GET_DIRTY_LOG for one slot into `bitmap` (one bit per page, 64-bit words).
  Status get_dirty_log(uint32_t slot, uint64_t* bitmap);
  // With KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled: clears (and write-protects again) the pages
  // set in `bitmap`, which describes `num_pages` pages from `first_page` (a multiple of 64).
  Status clear_dirty_log(uint32_t slot, uint64_t first_page, uint32_t num_pages, uint64_t* bitmap);
  int fd() const { return fd_.get(); }

 private:
  Fd fd_;
  int vcpu_mmap_size_;
  uint32_t dirty_ring_entries_ = 0;
};

// A vCPU's dirty ring (KVM_CAP_DIRTY_LOG_RING), mapped from the vCPU fd at
// KVM_DIRTY_LOG_PAGE_OFFSET. KVM pushes an entry (memory slot, page offset in the slot) when the
// vCPU first writes a page of a slot with KVM_MEM_LOG_DIRTY_PAGES since it was last protected, and
// publishes it by setting KVM_DIRTY_GFN_F_DIRTY with release semantics. The VMM reads entries in
// ring order from where it stopped, with an acquire load of the flags, and hands each one back by
// storing KVM_DIRTY_GFN_F_RESET with release semantics; KVM_RESET_DIRTY_RINGS then re-protects
// the pages and frees the entries. Not thread-safe: one harvester at a time per ring.
class DirtyRing {
 public:
  DirtyRing() = default;
  DirtyRing(Mapping mapping, uint32_t entries) : mapping_(std::move(mapping)), entries_(entries) {}

  bool enabled() const { return entries_ != 0; }
  uint32_t entries() const { return entries_; }
  // Calls `visit(slot, offset)` for every published entry from the harvest position on, marks
  // each reset, and returns how many there were (at most entries(): one lap).
  template <typename Visit>
  uint32_t harvest(Visit&& visit) {
    uint32_t n = 0;
    while (n < entries_) {
      kvm_dirty_gfn& gfn = gfns()[next_ & (entries_ - 1)];
      std::atomic_ref<uint32_t> flags(gfn.flags);
      if ((flags.load(std::memory_order_acquire) & KVM_DIRTY_GFN_F_DIRTY) == 0) break;
      visit(gfn.slot, gfn.offset);
      flags.store(KVM_DIRTY_GFN_F_RESET, std::memory_order_release);
      ++next_;
      ++n;
    }
    return n;
  }

 private:
  kvm_dirty_gfn* gfns() { return reinterpret_cast<kvm_dirty_gfn*>(mapping_.data()); }
  Mapping mapping_;
  uint32_t entries_ = 0;
  uint32_t next_ = 0;  // the next entry to look at, counting from the ring's start
};

class VcpuFd {
 public:
  VcpuFd(Fd fd, Mapping run, int index, DirtyRing ring = {})
      : fd_(std::move(fd)), run_(std::move(run)), index_(index), dirty_ring_(std::move(ring)) {}

  int index() const { return index_; }
  kvm_run* run_struct() const { return reinterpret_cast<kvm_run*>(run_.data()); }
  // The vCPU's dirty ring (not enabled() unless the VM enabled the ring before creating it).
  DirtyRing& dirty_ring() { return dirty_ring_; }

  // KVM_RUN. EINTR (a kick, or immediate_exit) is returned as an Error whose sys_errno() is EINTR;
  // callers treat that as "back at a safe point", not as a failure.
  Status run();
  // KVM_INTERRUPT (no in-kernel irqchip only): `vector` is injected at the next entry. Only
  // when kvm_run's ready_for_interrupt_injection says so: a second one before delivery replaces
  // the first.
  Status interrupt(uint32_t vector);
  // KVM_NMI (no in-kernel irqchip only).
  Status nmi();

  Result<kvm_regs> get_regs() const;
  Status set_regs(const kvm_regs& regs);
  Result<kvm_sregs> get_sregs() const;
  Status set_sregs(const kvm_sregs& sregs);
  Result<kvm_lapic_state> get_lapic() const;
  Status set_lapic(const kvm_lapic_state& lapic);
  Status set_cpuid2(const std::vector<CpuidEntry>& entries);
  // Fails unless every MSR was set, naming the first one KVM refused.
  Status set_msrs(const std::vector<MsrEntry>& msrs);
  Result<std::vector<MsrEntry>> get_msrs(const std::vector<uint32_t>& indices) const;
  Result<kvm_mp_state> get_mp_state() const;
  Status set_mp_state(const kvm_mp_state& state);
  Result<kvm_vcpu_events> get_vcpu_events() const;
  Status set_vcpu_events(const kvm_vcpu_events& events);
  Result<kvm_debugregs> get_debugregs() const;
  Status set_debugregs(const kvm_debugregs& regs);
  Result<kvm_xcrs> get_xcrs() const;
  Status set_xcrs(const kvm_xcrs& xcrs);
  // KVM_GET_XSAVE2 sized by KVM_CAP_XSAVE2 (larger than 4 KiB with AMX); `size` from the VM.
  Result<std::vector<uint8_t>> get_xsave2(size_t size) const;
  Status set_xsave(const std::vector<uint8_t>& xsave);
  Result<std::vector<CpuidEntry>> get_cpuid2() const;
  // TSC frequency in kHz (KVM_GET_TSC_KHZ / KVM_SET_TSC_KHZ).
  Result<uint32_t> get_tsc_khz() const;
  Status set_tsc_khz(uint32_t khz);
  Status kvmclock_ctrl();
  Result<kvm_translation> translate(uint64_t linear_address) const;
  Result<Fd> get_stats_fd() const;

 private:
  std::string what(const char* ioctl_name) const;
  Fd fd_;
  Mapping run_;
  int index_;
  DirtyRing dirty_ring_;
};

}  // namespace vmctl::vmm::kvm
