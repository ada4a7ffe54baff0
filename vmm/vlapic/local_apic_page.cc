// Save and restore through KVM's 1 KiB register page (struct kvm_lapic_state, registers at their
// xAPIC offsets) plus IA32_APIC_BASE and IA32_TSC_DEADLINE: the same form state/lapic.cc decodes
// from the in-kernel LAPIC, so one snapshot restores into either.
#include <cstring>

#include <fmt/format.h>

#include "vmm/vlapic/local_apic.h"

namespace vmctl::vmm::vlapic {
namespace {

uint32_t get(const kvm_lapic_state& page, uint32_t offset) {
  uint32_t v;
  std::memcpy(&v, page.regs + offset, 4);
  return v;
}
void put(kvm_lapic_state& page, uint32_t offset, uint32_t v) {
  std::memcpy(page.regs + offset, &v, 4);
}

VectorSet get_vectors(const kvm_lapic_state& page, uint32_t base) {
  VectorSet set;
  for (int i = 0; i < 8; ++i) set.set_word32(i, get(page, base + 0x10 * i));
  return set;
}
void put_vectors(kvm_lapic_state& page, uint32_t base, const VectorSet& set) {
  for (int i = 0; i < 8; ++i) put(page, base + 0x10 * i, set.word32(i));
}

Error bad_page(const std::string& what) {
  return Error::user("local APIC register page: " + what);
}

}  // namespace

LapicSnapshot LocalApic::save_page(ApicIdFormat format) const {
  // The state as of now: fire what has expired on a copy, so that a timer interrupt due before the
  // snapshot is in IRR rather than lost between a zero count and a disarmed deadline.
  LocalApic at_now = *this;
  at_now.on_time();
  const LocalApic& a = at_now;
  GuestTime now = clock_.now();

  LapicSnapshot out;
  kvm_lapic_state& page = out.page;
  bool full_id = a.mode() == ApicMode::kX2apic && format == ApicIdFormat::kX2apicApi;
  put(page, reg::kId, full_id ? a.id_ : a.id_ << 24);
  put(page, reg::kVersion, a.version());
  put(page, reg::kTpr, a.tpr_);
  put(page, reg::kApr, 0);
  put(page, reg::kPpr, a.ppr());
  put(page, reg::kLdr, a.ldr());
  put(page, reg::kDfr, a.dfr_);
  put(page, reg::kSvr, a.svr_);
  put_vectors(page, reg::kIsr, a.isr_);
  put_vectors(page, reg::kTmr, a.tmr_);
  put_vectors(page, reg::kIrr, a.irr_);
  put(page, reg::kEsr, a.esr_);
  put(page, reg::kLvtCmci, a.lvt(reg::kLvtCmci));
  put(page, reg::kIcrLow, a.icr_low_);
  put(page, reg::kIcrHigh, a.icr_high_);
  put(page, reg::kLvtTimer, a.lvt_timer_);
  put(page, reg::kLvtThermal, a.lvt_thermal_);
  put(page, reg::kLvtPerf, a.lvt_perf_);
  put(page, reg::kLvtLint0, a.lvt_lint0_);
  put(page, reg::kLvtLint1, a.lvt_lint1_);
  put(page, reg::kLvtError, a.lvt_error_);
  put(page, reg::kTimerInitial, a.timer_.initial_count());
  put(page, reg::kTimerCurrent, a.timer_.current_count(now));
  put(page, reg::kTimerDivide, a.timer_.divide_config());
  out.apic_base = a.apic_base_;
  out.tsc_deadline = a.mode() == ApicMode::kDisabled ? 0 : a.timer_.tsc_deadline(now);
  return out;
}

Status LocalApic::load_page(const kvm_lapic_state& page, uint64_t apic_base, uint64_t tsc_deadline,
                            ApicIdFormat format) {
  // Validate everything before changing anything.
  constexpr uint64_t kDefined =
      kApicBaseAddressMask | kApicBaseBsp | kApicBaseExtd | kApicBaseEnable;
  if (apic_base & ~kDefined) {
    return bad_page(fmt::format("IA32_APIC_BASE 0x{:x} sets reserved bits", apic_base));
  }
  if ((apic_base & kApicBaseExtd) && !(apic_base & kApicBaseEnable)) {
    return bad_page(fmt::format(
        "IA32_APIC_BASE 0x{:x} sets x2APIC (EXTD) without enable (EN), a mode no CPU can be in",
        apic_base));
  }
  bool x2apic = (apic_base & kApicBaseEnable) && (apic_base & kApicBaseExtd);
  VectorSet isr = get_vectors(page, reg::kIsr), tmr = get_vectors(page, reg::kTmr),
            irr = get_vectors(page, reg::kIrr);
  for (auto [name, set] :
       {std::pair<const char*, const VectorSet*>{"ISR", &isr}, {"TMR", &tmr}, {"IRR", &irr}}) {
    if (set->has_reserved_vector()) {
      return bad_page(
          fmt::format("{} has a vector below 16 set (0x{:04x}); vectors 0-15 are reserved", name,
                      set->word32(0) & 0xffff));
    }
  }
  uint32_t raw_id = get(page, reg::kId);
  uint32_t id = (x2apic && format == ApicIdFormat::kX2apicApi) ? raw_id : raw_id >> 24;
  if (x2apic && id != config_.initial_id) {
    return bad_page(fmt::format("x2APIC ID {} is not this APIC's ({}); the x2APIC ID is read-only",
                                id, config_.initial_id));
  }
  uint32_t lvt_timer = get(page, reg::kLvtTimer) & kLvtTimerWritable;
  auto timer_mode = static_cast<TimerMode>((lvt_timer & kLvtTimerModeMask) >> kLvtTimerModeShift);
  uint32_t initial = get(page, reg::kTimerInitial), current = get(page, reg::kTimerCurrent);
  bool counting = timer_mode == TimerMode::kOneShot || timer_mode == TimerMode::kPeriodic;
  if (counting && current > initial) {
    return bad_page(
        fmt::format("timer current count {} is above its initial count {}", current, initial));
  }

  apic_base_ = (apic_base & ~kApicBaseBsp) | (config_.bsp ? kApicBaseBsp : 0);
  id_ = id;
  tpr_ = static_cast<uint8_t>(get(page, reg::kTpr));
  ldr_ = get(page, reg::kLdr) & 0xff000000;  // x2APIC mode derives the LDR from the ID instead
  dfr_ = (get(page, reg::kDfr) & 0xf0000000) | kDfrFixedOnes;
  svr_ = get(page, reg::kSvr) & kSvrWritable;
  isr_ = isr;
  tmr_ = tmr;
  irr_ = irr;
  esr_ = get(page, reg::kEsr);
  esr_pending_ = 0;  // errors not yet latched by an ESR write are not in the page
  icr_low_ = get(page, reg::kIcrLow) & kIcrLowWritable;
  icr_high_ = get(page, reg::kIcrHigh) & (x2apic ? 0xffffffff : kIcrHighXapicWritable);
  // LVTs as saved (reserved bits dropped). The software-disable mask is not forced here: KVM's BSP
  // comes out of reset with LINT0 unmasked before the guest enables its APIC.
  lvt_timer_ = lvt_timer;
  lvt_thermal_ = get(page, reg::kLvtThermal) & kLvtWithModeWritable;
  lvt_perf_ = get(page, reg::kLvtPerf) & kLvtWithModeWritable;
  lvt_lint0_ = get(page, reg::kLvtLint0) & kLvtLintWritable;
  lvt_lint1_ = get(page, reg::kLvtLint1) & kLvtLintWritable;
  lvt_error_ = get(page, reg::kLvtError) & kLvtErrorWritable;
  lvt_cmci_ = config_.cmci ? get(page, reg::kLvtCmci) & kLvtWithModeWritable : kLvtMasked;
  timer_.restore(timer_mode, get(page, reg::kTimerDivide), initial, current, tsc_deadline,
                 clock_.now());
  return ok_status();
}

}  // namespace vmctl::vmm::vlapic
