#include "vmm/vlapic/local_apic.h"

namespace vmctl::vmm::vlapic {

LocalApic::LocalApic(const LocalApicConfig& config, const GuestClock& clock)
    : config_(config), clock_(clock), timer_(clock.tsc_hz()) {
  apic_base_ = kApicBaseDefault | kApicBaseEnable | (config_.bsp ? kApicBaseBsp : 0);
  reset_registers(/*keep_id=*/false);
  // After power-up the BSP runs the reset vector and APs wait for INIT-SIPI (SDM 8.4, MP
  // initialization).
  mp_state_ = config_.bsp ? MpState::kRunnable : MpState::kWaitForSipi;
}

ApicMode LocalApic::mode() const {
  if (!(apic_base_ & kApicBaseEnable)) return ApicMode::kDisabled;
  return (apic_base_ & kApicBaseExtd) ? ApicMode::kX2apic : ApicMode::kXapic;
}

uint32_t LocalApic::ldr() const {
  // x2APIC: cluster id[19:4] in bits 31:16, one bit for id[3:0] in 15:0 (SDM 10.12.10.2).
  if (mode() == ApicMode::kX2apic) return ((id_ >> 4) << 16) | (1u << (id_ & 0xf));
  return ldr_;
}

uint32_t LocalApic::version() const {
  uint32_t max_lvt = config_.cmci ? 6 : 5;
  return (max_lvt << 16) | 0x14;
}

void LocalApic::reset_registers(bool keep_id) {
  if (!keep_id) {
    id_ = mode() == ApicMode::kX2apic ? config_.initial_id : config_.initial_id & 0xff;
  }
  tpr_ = 0;
  ldr_ = 0;
  dfr_ = 0xffffffff;
  svr_ = 0xff;
  irr_.clear_all();
  isr_.clear_all();
  tmr_.clear_all();
  esr_ = esr_pending_ = 0;
  icr_low_ = icr_high_ = 0;
  lvt_timer_ = lvt_thermal_ = lvt_perf_ = lvt_lint0_ = lvt_lint1_ = lvt_error_ = lvt_cmci_ =
      kLvtMasked;
  // Virtual-wire mode on the BSP, as KVM's reset does (see the latitude notes).
  if (config_.bsp) lvt_lint0_ = static_cast<uint32_t>(DeliveryMode::kExtInt) << 8;
  timer_.reset();
}

bool LocalApic::set_apic_base(uint64_t value) {
  constexpr uint64_t kDefined =
      kApicBaseAddressMask | kApicBaseBsp | kApicBaseExtd | kApicBaseEnable;
  if (value & ~kDefined) return false;
  bool enable = value & kApicBaseEnable, extd = value & kApicBaseExtd;
  if (extd && !enable) return false;  // no such state (SDM 10.12.5)
  ApicMode from = mode();
  ApicMode to = !enable ? ApicMode::kDisabled : extd ? ApicMode::kX2apic : ApicMode::kXapic;
  if (from == ApicMode::kX2apic && to == ApicMode::kXapic) return false;
  if (from == ApicMode::kDisabled && to == ApicMode::kX2apic) return false;
  on_time();
  apic_base_ = (value & ~kApicBaseBsp) | (config_.bsp ? kApicBaseBsp : 0);
  if (from == to) return true;
  switch (to) {
    case ApicMode::kDisabled:
      timer_.reset();  // a disabled APIC counts nothing; re-enabling resets it anyway
      break;
    case ApicMode::kXapic:
      reset_registers(/*keep_id=*/false);  // disabled -> xAPIC: power-up state (SDM 10.4.3)
      break;
    case ApicMode::kX2apic:
      id_ = config_.initial_id;  // xAPIC -> x2APIC: the x2APIC ID is the initial ID (10.12.5.1)
      break;
  }
  return true;
}

bool LocalApic::accept(uint8_t vector, bool level_triggered) {
  if (mode() == ApicMode::kDisabled) return false;
  if (vector < 16) {
    record_error(kEsrReceiveIllegalVector);
    return false;
  }
  if (!software_enabled()) return false;
  irr_.set(vector);
  if (level_triggered) {
    tmr_.set(vector);
  } else {
    tmr_.clear(vector);
  }
  return true;
}

uint8_t LocalApic::ppr() const {
  // SDM 10.8.3.1: PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4]:0.
  std::optional<uint8_t> isrv = isr_.highest();
  uint8_t isr_class = isrv ? (*isrv & 0xf0) : 0;
  return (tpr_ & 0xf0) >= isr_class ? tpr_ : isr_class;
}

std::optional<uint8_t> LocalApic::pending_interrupt() const {
  if (mode() == ApicMode::kDisabled) return std::nullopt;
  // Only the highest IRR vector can beat PPR: any lower one has a class no higher.
  std::optional<uint8_t> v = irr_.highest();
  if (!v || (*v & 0xf0) <= (ppr() & 0xf0)) return std::nullopt;
  return v;
}

bool LocalApic::acknowledge(uint8_t vector) {
  if (!irr_.test(vector)) return false;
  irr_.clear(vector);
  isr_.set(vector);
  return true;
}

std::optional<uint8_t> LocalApic::eoi() {
  std::optional<uint8_t> v = isr_.highest();
  if (!v) return std::nullopt;
  isr_.clear(*v);
  if (tmr_.test(*v)) return v;
  return std::nullopt;
}

void LocalApic::set_cr8(uint64_t cr8) {
  uint8_t priority_class = cr8 & 0xf;
  if (priority_class != (tpr_ >> 4)) tpr_ = static_cast<uint8_t>(priority_class << 4);
}

const uint32_t* LocalApic::lvt_slot(uint32_t offset) const {
  switch (offset) {
    case reg::kLvtTimer:
      return &lvt_timer_;
    case reg::kLvtThermal:
      return &lvt_thermal_;
    case reg::kLvtPerf:
      return &lvt_perf_;
    case reg::kLvtLint0:
      return &lvt_lint0_;
    case reg::kLvtLint1:
      return &lvt_lint1_;
    case reg::kLvtError:
      return &lvt_error_;
    case reg::kLvtCmci:
      return config_.cmci ? &lvt_cmci_ : nullptr;
    default:
      return nullptr;
  }
}

uint32_t LocalApic::lvt(uint32_t offset) const {
  const uint32_t* slot = lvt_slot(offset);
  return slot ? *slot : 0;
}

void LocalApic::write_lvt(uint32_t offset, uint32_t value) {
  uint32_t* slot = lvt_slot(offset);
  if (!slot) return;
  uint32_t writable = kLvtWithModeWritable;
  if (offset == reg::kLvtTimer) writable = kLvtTimerWritable;
  if (offset == reg::kLvtLint0 || offset == reg::kLvtLint1) writable = kLvtLintWritable;
  if (offset == reg::kLvtError) writable = kLvtErrorWritable;
  value &= writable;
  if (!software_enabled()) value |= kLvtMasked;  // SDM 10.4.7.2: cannot be unmasked
  *slot = value;
  if (offset == reg::kLvtTimer) update_timer_mode();
}

void LocalApic::update_timer_mode() {
  timer_.set_mode(static_cast<TimerMode>((lvt_timer_ & kLvtTimerModeMask) >> kLvtTimerModeShift));
}

void LocalApic::write_svr(uint32_t value) {
  bool was_enabled = software_enabled();
  svr_ = value & kSvrWritable;
  if (was_enabled && !software_enabled()) {
    for (uint32_t* lvt : {&lvt_timer_, &lvt_thermal_, &lvt_perf_, &lvt_lint0_, &lvt_lint1_,
                          &lvt_error_, &lvt_cmci_}) {
      *lvt |= kLvtMasked;
    }
  }
}

void LocalApic::record_error(uint32_t esr_bit) {
  esr_pending_ |= esr_bit;
  if ((lvt_error_ & kLvtMasked) || !software_enabled()) return;
  uint8_t vector = lvt_error_ & 0xff;
  if (vector < 16) {
    esr_pending_ |= kEsrReceiveIllegalVector;  // and no interrupt: that would recurse
    return;
  }
  accept(vector, /*level_triggered=*/false);
}

void LocalApic::signal_lint(int pin) {
  if (pin != 0 && pin != 1) return;
  if (mode() == ApicMode::kDisabled) {
    pin == 0 ? receive_extint() : receive_nmi();
    return;
  }
  uint32_t lvt = pin == 0 ? lvt_lint0_ : lvt_lint1_;
  if (lvt & kLvtMasked) return;
  switch (delivery_mode_of(lvt)) {
    case DeliveryMode::kFixed:
      accept(lvt & 0xff, lvt & kLvtLevelTriggered);
      break;
    case DeliveryMode::kNmi:
      receive_nmi();
      break;
    case DeliveryMode::kExtInt:
      receive_extint();
      break;
    case DeliveryMode::kInit:
      receive_init();
      break;
    default:  // SMI (no SMM in vmctl) and reserved modes
      break;
  }
}

void LocalApic::receive_init() {
  reset_registers(/*keep_id=*/true);
  nmi_pending_ = extint_pending_ = false;
  sipi_start_.reset();
  init_pending_ = true;
  mp_state_ = config_.bsp ? MpState::kRunnable : MpState::kWaitForSipi;
}

std::optional<uint64_t> LocalApic::receive_sipi(uint8_t vector) {
  if (mp_state_ != MpState::kWaitForSipi)
    return std::nullopt;  // ignored outside wait-for-SIPI (SDM 8.4)
  mp_state_ = MpState::kRunnable;
  sipi_start_ = uint64_t{vector} << 12;
  return sipi_start_;
}

ApicWriteEffect LocalApic::send_ipi(uint32_t icr_low, uint32_t icr_high, bool x2apic) {
  InterruptCommand command = InterruptCommand::from_icr(icr_low, icr_high, x2apic);
  bool has_vector =
      command.delivery == DeliveryMode::kFixed || command.delivery == DeliveryMode::kLowestPriority;
  if (has_vector && command.vector < 16) {
    record_error(kEsrSendIllegalVector);
    return {};
  }
  ApicWriteEffect effect;
  effect.ipi = command;
  return effect;
}

void LocalApic::on_time() {
  if (!timer_.expire(clock_.now())) return;
  if (!(lvt_timer_ & kLvtMasked)) accept(lvt_timer_ & 0xff, /*level_triggered=*/false);
}

std::optional<uint64_t> LocalApic::next_timer_deadline_ns() const {
  if (mode() == ApicMode::kDisabled || (lvt_timer_ & kLvtMasked)) return std::nullopt;
  return timer_.next_deadline_ns(clock_.now());
}

}  // namespace vmctl::vmm::vlapic
