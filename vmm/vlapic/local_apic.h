// A local APIC in userspace, for vCPUs run without KVM's in-kernel irqchip (`--irqchip user`). Pure
// architectural model: no KVM calls, time from an injected GuestClock, one instance per vCPU. It is
// not thread-safe; the owner serializes access to all APICs on a bus.
//
// Follows the Intel SDM vol. 3A chapter 10 "Advanced Programmable Interrupt Controller (APIC)"
// (chapter 11 in recent editions, sections renumbered 11.x):
// - 10.4.3-10.4.4: IA32_APIC_BASE, global enable and disable; 10.4.7: power-up, INIT reset and
//   software-disabled state;
// - 10.5.1-10.5.3: LVT and ESR; 10.5.4: the timer (apic_timer.h);
// - 10.6: IPIs and their destinations (apic_bus.h);
// - 10.8.3-10.8.5: TPR and PPR, IRR/ISR/TMR, EOI; 10.8.6: CR8;
// - 10.12: x2APIC, its MSR interface (10.12.1), IDs (10.12.2), ICR (10.12.9), LDR (10.12.10.2),
//   SELF IPI (10.12.11) and mode transitions (10.12.5).
//
// State is only what the architecture defines. ISR bits are the only record of in-service
// interrupts (no stack of delivered vectors, the bhyve/illumos 12936 lesson); PPR is derived from
// TPR and the highest ISR bit whenever it is read, so nothing can go stale across save and restore.
//
// Latitude taken where the SDM allows it or leaves it open (mostly as KVM's in-kernel APIC does):
// - Software-disabled (SVR bit 8 clear): fixed and lowest-priority interrupts that arrive are
//   dropped (as KVM); vectors already in IRR/ISR stay and are still delivered and EOIed; NMI, INIT
//   and SIPI are received; every LVT is masked and cannot be unmasked.
// - Version 0x50014 (version 0x14, max LVT entry 5: no CMCI) like KVM; with `cmci` 0x60014 and the
//   CMCI LVT exists. No EOI-broadcast suppression (SVR bit 12 reserved), no focus-processor
//   checking, no remote IRR on LINT0/1; delivery status always reads idle (delivery is immediate).
// - APR (P6-era arbitration priority) reads 0 and ignores writes in xAPIC mode; x2APIC has none.
// - xAPIC MMIO: reads are byte-granular (a byte in the first 4 bytes of a register's 16-byte slot
//   reads that byte of the register, every other byte 0); only 4-byte writes at a register's
//   offset take effect, other writes are ignored. In x2APIC mode or globally disabled the page is
//   not decoded: reads return all ones, writes are ignored.
// - x2APIC MSRs: #GP for reserved and xAPIC-only registers, reads of write-only and writes of
//   read-only registers, bits 63:32 set in any register but ICR, non-zero writes to ESR and EOI;
//   other reserved bits are dropped rather than faulting.
// - A fixed/lowest-priority IPI with a vector below 16 is not sent (ESR "send illegal vector").
//   An error raises the LVT error interrupt when that LVT is unmasked.
// - Lowest-priority delivery goes to the lowest PPR among the addressed APICs (apic_bus.h).
// - The BSP's LINT0 resets to ExtINT unmasked (virtual-wire mode), as KVM does, so a guest without
//   firmware receives PIC interrupts; the SDM's power-up state masks it.
// - APs start in wait-for-SIPI; INIT puts an AP there and leaves the BSP runnable (the vCPU itself
//   is reset by the run loop). TSC-deadline mode is always available.
// - set_cr8() keeps TPR[3:0] when the priority class does not change, because the run loop calls
//   it on every exit and cannot tell a guest MOV CR8 from an unchanged value.
// - No spurious-vector delivery: the run loop takes pending_interrupt() and acknowledge()s it with
//   no guest instruction in between, so an interrupt cannot be masked between the two.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>

#include "base/error.h"
#include "vmm/kvm/kvm_uapi.h"
#include "vmm/vlapic/apic_registers.h"
#include "vmm/vlapic/apic_timer.h"
#include "vmm/vlapic/guest_clock.h"
#include "vmm/vlapic/interrupt_command.h"
#include "vmm/vlapic/vector_set.h"

namespace vmctl::vmm::vlapic {

enum class ApicMode : uint8_t { kDisabled, kXapic, kX2apic };
enum class MpState : uint8_t { kRunnable, kWaitForSipi };

// How the register page holds the ID in x2APIC mode: KVM's legacy layout (id << 24 as in xAPIC
// mode, 8-bit ids) or, with KVM_CAP_X2APIC_API, the full 32-bit id. xAPIC mode is always id << 24.
enum class ApicIdFormat : uint8_t { kLegacy, kX2apicApi };

struct LocalApicConfig {
  uint32_t initial_id = 0;  // the APIC ID at power-up; the x2APIC ID
  bool bsp = false;
  bool cmci = false;  // the CMCI LVT (version 0x60014)
};

// What a register write asks of the rest of the VM.
struct ApicWriteEffect {
  std::optional<InterruptCommand> ipi;  // ICR or SELF_IPI written: route it through the ApicBus
  std::optional<uint8_t> level_eoi;     // EOI retired a level-triggered vector: tell the IOAPIC

  bool operator==(const ApicWriteEffect&) const = default;
};

// The saved form: KVM's register page plus the two MSRs that live outside it.
struct LapicSnapshot {
  kvm_lapic_state page{};
  uint64_t apic_base = 0;
  uint64_t tsc_deadline = 0;
};

class LocalApic {
 public:
  LocalApic(const LocalApicConfig& config, const GuestClock& clock);

  // Identity and mode.
  uint32_t initial_id() const { return config_.initial_id; }
  uint32_t id() const { return id_; }  // 8-bit in xAPIC mode, 32-bit in x2APIC mode
  ApicMode mode() const;
  bool software_enabled() const { return svr_ & kSvrSoftwareEnable; }
  uint32_t ldr() const;
  uint32_t dfr() const { return dfr_; }
  uint64_t apic_base() const { return apic_base_; }
  uint64_t mmio_base() const { return apic_base_ & kApicBaseAddressMask; }
  // IA32_APIC_BASE write; false is #GP (reserved bits, EXTD without EN, x2APIC -> xAPIC,
  // disabled -> x2APIC). Enabling from disabled resets the APIC (SDM 10.4.3); BSP is not writable.
  bool set_apic_base(uint64_t value);

  // Fixed interrupts. accept(): into IRR, TMR set for level, cleared for edge; false if dropped
  // (vector < 16 sets ESR "receive illegal vector"; APIC disabled globally or by software).
  bool accept(uint8_t vector, bool level_triggered);
  // The vector the CPU would take now: the highest in IRR if its priority class is above PPR's.
  std::optional<uint8_t> pending_interrupt() const;
  // At injection: IRR -> ISR. False (nothing changes) if `vector` is not pending in IRR.
  bool acknowledge(uint8_t vector);
  // Retires the highest in-service vector; returns it if it was level-triggered (TMR).
  std::optional<uint8_t> eoi();

  uint8_t tpr() const { return tpr_; }
  void set_tpr(uint8_t value) { tpr_ = value; }
  uint8_t ppr() const;
  // CR8 is TPR[7:4] (SDM 10.8.6.1). The run loop calls set_cr8(kvm_run->cr8) after every exit and
  // writes cr8() back before KVM_RUN.
  void set_cr8(uint64_t cr8);
  uint64_t cr8() const { return tpr_ >> 4; }
  const VectorSet& irr() const { return irr_; }
  const VectorSet& isr() const { return isr_; }
  const VectorSet& tmr() const { return tmr_; }
  // The LVT register at `offset` (reg::kLvt*), or 0 for CMCI without `cmci`.
  uint32_t lvt(uint32_t offset) const;
  uint32_t version() const;

  // Local interrupt pins through LVT LINT0/LINT1 (fixed, NMI or ExtINT). With the APIC globally
  // disabled the pins pass through: LINT0 is INTR (ExtINT), LINT1 is NMI (SDM 10.4.3).
  void signal_lint(int pin);

  // CPU-level events, set by delivery and taken by the vCPU's run loop.
  void receive_nmi() { nmi_pending_ = true; }
  bool take_nmi() { return std::exchange(nmi_pending_, false); }
  void receive_extint() { extint_pending_ = true; }  // the run loop asks the PIC for the vector
  bool take_extint() { return std::exchange(extint_pending_, false); }
  // INIT: registers back to their power-up values except the ID and IA32_APIC_BASE (SDM 10.4.7.3),
  // pending NMI/ExtINT dropped; an AP waits for SIPI. take_init() tells the run loop to reset the
  // vCPU itself.
  void receive_init();
  bool take_init() { return std::exchange(init_pending_, false); }
  // SIPI: in wait-for-SIPI, the vCPU becomes runnable at `vector` << 12 (the start page's address,
  // also returned by take_sipi()); otherwise ignored and nothing returned.
  std::optional<uint64_t> receive_sipi(uint8_t vector);
  std::optional<uint64_t> take_sipi() { return std::exchange(sipi_start_, std::nullopt); }
  MpState mp_state() const { return mp_state_; }
  // A restore: the vCPU's state as saved (an AP that had not started waits for its SIPI again).
  void set_mp_state(MpState state) { mp_state_ = state; }

  // xAPIC MMIO on the 4 KiB page at mmio_base(): any offset and length is safe (see the latitude
  // notes above for what odd ones do).
  void read_mmio(uint64_t offset, void* data, size_t len);
  ApicWriteEffect write_mmio(uint64_t offset, const void* data, size_t len);
  // MSRs: the x2APIC range 0x800-0x8ff, IA32_APIC_BASE (0x1b) and IA32_TSC_DEADLINE (0x6e0).
  // nullopt is #GP for the run loop to inject.
  std::optional<uint64_t> read_msr(uint32_t index);
  std::optional<ApicWriteEffect> write_msr(uint32_t index, uint64_t value);

  // Timer: fires expired timers (IRR for the LVT timer vector unless masked). Every register
  // access does this first; the run loop also calls it when a host timer armed at
  // next_timer_deadline_ns() fires.
  void on_time();
  // When on_time() next has something to do, or nothing while the timer is idle or masked.
  std::optional<uint64_t> next_timer_deadline_ns() const;

  // Architectural state as KVM's register page at the clock's now, as if on_time() had just run
  // (an expired timer shows as its vector in IRR, not as a lost interrupt). PPR is derived; the
  // timer's current count is computed.
  LapicSnapshot save_page(ApicIdFormat format) const;
  // Replaces all register state from a saved page. Refuses (and changes nothing) a page with
  // vectors below 16 in ISR/IRR/TMR, an illegal IA32_APIC_BASE, an x2APIC id that is not this
  // APIC's, or a timer count above its initial count. PPR, APR and the version are not taken from
  // the page.
  Status load_page(const kvm_lapic_state& page, uint64_t apic_base, uint64_t tsc_deadline,
                   ApicIdFormat format);

 private:
  void reset_registers(bool keep_id);
  void write_svr(uint32_t value);
  void write_lvt(uint32_t offset, uint32_t value);
  void record_error(uint32_t esr_bit);
  const uint32_t* lvt_slot(uint32_t offset) const;
  uint32_t* lvt_slot(uint32_t offset) {
    return const_cast<uint32_t*>(std::as_const(*this).lvt_slot(offset));
  }
  void update_timer_mode();
  ApicWriteEffect send_ipi(uint32_t icr_low, uint32_t icr_high, bool x2apic);

  // Register file shared by the MMIO and MSR paths (local_apic_access.cc).
  std::optional<uint32_t> read_register(uint32_t offset, bool x2apic);
  std::optional<ApicWriteEffect> write_register(uint32_t offset, uint32_t value, bool x2apic);

  LocalApicConfig config_;
  const GuestClock& clock_;
  ApicTimer timer_;

  uint64_t apic_base_ = 0;
  uint32_t id_ = 0;
  uint8_t tpr_ = 0;
  uint32_t ldr_ = 0;  // xAPIC LDR; in x2APIC mode ldr() derives it from the ID
  uint32_t dfr_ = 0xffffffff;
  uint32_t svr_ = 0xff;
  VectorSet irr_, isr_, tmr_;
  uint32_t esr_ = 0;          // what ESR reads: errors latched by the last ESR write
  uint32_t esr_pending_ = 0;  // errors since the last ESR write
  uint32_t icr_low_ = 0, icr_high_ = 0;
  uint32_t lvt_timer_ = kLvtMasked, lvt_thermal_ = kLvtMasked, lvt_perf_ = kLvtMasked,
           lvt_lint0_ = kLvtMasked, lvt_lint1_ = kLvtMasked, lvt_error_ = kLvtMasked,
           lvt_cmci_ = kLvtMasked;

  MpState mp_state_ = MpState::kRunnable;
  bool nmi_pending_ = false;
  bool extint_pending_ = false;
  bool init_pending_ = false;
  std::optional<uint64_t> sipi_start_;
};

}  // namespace vmctl::vmm::vlapic
