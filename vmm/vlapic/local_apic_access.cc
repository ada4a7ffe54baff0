// The register file as the guest reaches it: xAPIC MMIO and x2APIC MSRs share read_register() and
// write_register(), which know which registers exist, which are read-only, and which exist in only
// one mode (Intel SDM table 10-1 and table 10-6).
#include <cstring>

#include "vmm/vlapic/local_apic.h"

namespace vmctl::vmm::vlapic {
namespace {

constexpr uint64_t kPageSize = 0x1000;

// ISR, TMR and IRR: which of the eight 32-bit registers of `base` `offset` is, if any.
std::optional<int> vector_register(uint32_t offset, uint32_t base) {
  if (offset < base || offset >= base + 0x80 || (offset & 0xf)) return std::nullopt;
  return static_cast<int>((offset - base) >> 4);
}

}  // namespace

std::optional<uint32_t> LocalApic::read_register(uint32_t offset, bool x2apic) {
  if (auto i = vector_register(offset, reg::kIsr)) return isr_.word32(*i);
  if (auto i = vector_register(offset, reg::kTmr)) return tmr_.word32(*i);
  if (auto i = vector_register(offset, reg::kIrr)) return irr_.word32(*i);
  if (uint32_t* lvt = lvt_slot(offset)) return *lvt;
  switch (offset) {
    case reg::kId:
      return x2apic ? id_ : id_ << 24;
    case reg::kVersion:
      return version();
    case reg::kTpr:
      return tpr_;
    case reg::kPpr:
      return ppr();
    case reg::kLdr:
      return ldr();
    case reg::kSvr:
      return svr_;
    case reg::kEsr:
      return esr_;
    case reg::kIcrLow:
      return icr_low_;
    case reg::kTimerInitial:
      return timer_.initial_count();
    case reg::kTimerCurrent:
      return timer_.current_count(clock_.now());
    case reg::kTimerDivide:
      return timer_.divide_config();
    // xAPIC only.
    case reg::kApr:
    case reg::kEoi:  // write-only: an xAPIC read returns 0
      if (x2apic) return std::nullopt;
      return 0;
    case reg::kDfr:
      if (x2apic) return std::nullopt;
      return dfr_;
    case reg::kIcrHigh:
      if (x2apic) return std::nullopt;
      return icr_high_;
    default:  // reserved, and SELF_IPI (write-only)
      return std::nullopt;
  }
}

std::optional<ApicWriteEffect> LocalApic::write_register(uint32_t offset, uint32_t value,
                                                         bool x2apic) {
  if (lvt_slot(offset)) {
    write_lvt(offset, value);
    return ApicWriteEffect{};
  }
  GuestTime now = clock_.now();
  switch (offset) {
    case reg::kTpr:
      tpr_ = value & 0xff;
      return ApicWriteEffect{};
    case reg::kEoi:
      if (x2apic && value != 0) return std::nullopt;
      return ApicWriteEffect{.ipi = std::nullopt, .level_eoi = eoi()};
    case reg::kSvr:
      write_svr(value);
      return ApicWriteEffect{};
    case reg::kEsr:
      // Write-then-read (SDM 10.5.3): the write latches the errors seen since the last write.
      if (x2apic && value != 0) return std::nullopt;
      esr_ = esr_pending_;
      esr_pending_ = 0;
      return ApicWriteEffect{};
    case reg::kTimerInitial:
      timer_.set_initial_count(value, now);
      return ApicWriteEffect{};
    case reg::kTimerDivide:
      timer_.set_divide_config(value, now);
      return ApicWriteEffect{};
    // xAPIC only (x2APIC: the ID and LDR are read-only, ICR is one 64-bit MSR, no APR or DFR).
    case reg::kId:
      if (x2apic) return std::nullopt;
      id_ = value >> 24;
      return ApicWriteEffect{};
    case reg::kApr:
      if (x2apic) return std::nullopt;
      return ApicWriteEffect{};
    case reg::kLdr:
      if (x2apic) return std::nullopt;
      ldr_ = value & 0xff000000;
      return ApicWriteEffect{};
    case reg::kDfr:
      if (x2apic) return std::nullopt;
      dfr_ = (value & 0xf0000000) | kDfrFixedOnes;
      return ApicWriteEffect{};
    case reg::kIcrHigh:
      if (x2apic) return std::nullopt;
      icr_high_ = value & kIcrHighXapicWritable;
      return ApicWriteEffect{};
    case reg::kIcrLow:
      if (x2apic) return std::nullopt;
      icr_low_ = value & kIcrLowWritable;  // writing the low half sends (SDM 10.6.1)
      return send_ipi(icr_low_, icr_high_, /*x2apic=*/false);
    // x2APIC only.
    case reg::kSelfIpi:
      if (!x2apic) return std::nullopt;
      // SDM 10.12.11: a fixed, edge-triggered IPI to self with vector bits 7:0.
      return send_ipi((value & 0xff) | (uint32_t{static_cast<uint8_t>(Shorthand::kSelf)} << 18), 0,
                      /*x2apic=*/true);
    default:  // read-only (version, PPR, ISR/TMR/IRR, current count) and reserved
      return std::nullopt;
  }
}

void LocalApic::read_mmio(uint64_t offset, void* data, size_t len) {
  on_time();
  auto* out = static_cast<uint8_t*>(data);
  if (mode() != ApicMode::kXapic) {
    std::memset(out, 0xff, len);  // not decoded: what an unclaimed MMIO read returns
    return;
  }
  for (size_t i = 0; i < len; ++i) {
    out[i] = 0;
    if (offset >= kPageSize || i >= kPageSize - offset) continue;
    uint64_t byte = offset + i;
    if ((byte & 0xf) >= 4) continue;
    std::optional<uint32_t> value = read_register(static_cast<uint32_t>(byte & ~0xfull), false);
    if (value) out[i] = static_cast<uint8_t>(*value >> (8 * (byte & 3)));
  }
}

ApicWriteEffect LocalApic::write_mmio(uint64_t offset, const void* data, size_t len) {
  on_time();
  if (mode() != ApicMode::kXapic || len != 4 || offset >= kPageSize || (offset & 0xf)) return {};
  uint32_t value;
  std::memcpy(&value, data, 4);
  std::optional<ApicWriteEffect> effect =
      write_register(static_cast<uint32_t>(offset), value, /*x2apic=*/false);
  on_time();
  return effect.value_or(ApicWriteEffect{});  // an xAPIC write to a read-only register is ignored
}

std::optional<uint64_t> LocalApic::read_msr(uint32_t index) {
  on_time();
  if (index == kMsrApicBase) return apic_base_;
  if (index == kMsrTscDeadline) {
    return mode() == ApicMode::kDisabled ? 0 : timer_.tsc_deadline(clock_.now());
  }
  if (index < kMsrX2apicFirst || index > kMsrX2apicLast || mode() != ApicMode::kX2apic) {
    return std::nullopt;
  }
  if (index == kMsrX2apicIcr) return (uint64_t{icr_high_} << 32) | icr_low_;
  return read_register((index - kMsrX2apicFirst) << 4, /*x2apic=*/true);
}

std::optional<ApicWriteEffect> LocalApic::write_msr(uint32_t index, uint64_t value) {
  on_time();
  if (index == kMsrApicBase) {
    if (!set_apic_base(value)) return std::nullopt;
    return ApicWriteEffect{};
  }
  if (index == kMsrTscDeadline) {
    if (mode() != ApicMode::kDisabled) timer_.set_tsc_deadline(value, clock_.now());
    on_time();  // a deadline already passed fires now
    return ApicWriteEffect{};
  }
  if (index < kMsrX2apicFirst || index > kMsrX2apicLast || mode() != ApicMode::kX2apic) {
    return std::nullopt;
  }
  std::optional<ApicWriteEffect> effect;
  if (index == kMsrX2apicIcr) {
    icr_low_ = static_cast<uint32_t>(value) & kIcrLowWritable;
    icr_high_ = static_cast<uint32_t>(value >> 32);
    effect = send_ipi(icr_low_, icr_high_, /*x2apic=*/true);
  } else if (value >> 32) {
    return std::nullopt;  // bits 63:32 are reserved in every other x2APIC register
  } else {
    effect = write_register((index - kMsrX2apicFirst) << 4, static_cast<uint32_t>(value),
                            /*x2apic=*/true);
  }
  on_time();
  return effect;
}

}  // namespace vmctl::vmm::vlapic
