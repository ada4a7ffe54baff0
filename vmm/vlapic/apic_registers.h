// Local APIC register offsets and bit fields (Intel SDM vol. 3A table 10-1; LVT 10.5.1, ICR 10.6.1,
// SVR 10.9, IA32_APIC_BASE 10.4.4 and 10.12.1). The xAPIC MMIO page and KVM's 1 KiB register page
// use the same offsets; the x2APIC MSR for the register at offset `o` is 0x800 + o / 16
// (SDM 10.12.1.2).
#pragma once

#include <cstdint>

namespace vmctl::vmm::vlapic {

namespace reg {
inline constexpr uint32_t kId = 0x20;
inline constexpr uint32_t kVersion = 0x30;
inline constexpr uint32_t kTpr = 0x80;
inline constexpr uint32_t kApr = 0x90;
inline constexpr uint32_t kPpr = 0xa0;
inline constexpr uint32_t kEoi = 0xb0;
inline constexpr uint32_t kLdr = 0xd0;
inline constexpr uint32_t kDfr = 0xe0;
inline constexpr uint32_t kSvr = 0xf0;
inline constexpr uint32_t kIsr = 0x100;  // eight registers 0x10 apart, up to 0x170
inline constexpr uint32_t kTmr = 0x180;  // up to 0x1f0
inline constexpr uint32_t kIrr = 0x200;  // up to 0x270
inline constexpr uint32_t kEsr = 0x280;
inline constexpr uint32_t kLvtCmci = 0x2f0;
inline constexpr uint32_t kIcrLow = 0x300;
inline constexpr uint32_t kIcrHigh = 0x310;
inline constexpr uint32_t kLvtTimer = 0x320;
inline constexpr uint32_t kLvtThermal = 0x330;
inline constexpr uint32_t kLvtPerf = 0x340;
inline constexpr uint32_t kLvtLint0 = 0x350;
inline constexpr uint32_t kLvtLint1 = 0x360;
inline constexpr uint32_t kLvtError = 0x370;
inline constexpr uint32_t kTimerInitial = 0x380;
inline constexpr uint32_t kTimerCurrent = 0x390;
inline constexpr uint32_t kTimerDivide = 0x3e0;
inline constexpr uint32_t kSelfIpi = 0x3f0;  // x2APIC only
}  // namespace reg

// MSRs.
inline constexpr uint32_t kMsrApicBase = 0x1b;
inline constexpr uint32_t kMsrTscDeadline = 0x6e0;
inline constexpr uint32_t kMsrX2apicFirst = 0x800;
inline constexpr uint32_t kMsrX2apicLast = 0x8ff;
inline constexpr uint32_t kMsrX2apicIcr = 0x830;

// IA32_APIC_BASE.
inline constexpr uint64_t kApicBaseBsp = 1ull << 8;
inline constexpr uint64_t kApicBaseExtd = 1ull << 10;
inline constexpr uint64_t kApicBaseEnable = 1ull << 11;
inline constexpr uint64_t kApicBaseAddressMask = 0x000ffffffffff000ull;  // MAXPHYADDR 52
inline constexpr uint64_t kApicBaseDefault = 0xfee00000;

// SVR.
inline constexpr uint32_t kSvrSoftwareEnable = 1u << 8;
inline constexpr uint32_t kSvrWritable = 0x3ff;  // vector, enable, focus checking; no directed EOI

// LVT and ICR fields.
inline constexpr uint32_t kLvtMasked = 1u << 16;
inline constexpr uint32_t kLvtLevelTriggered = 1u << 15;
inline constexpr uint32_t kLvtTimerModeShift = 17;
inline constexpr uint32_t kLvtTimerModeMask = 3u << kLvtTimerModeShift;
// Writable bits per LVT kind; delivery status (bit 12) and remote IRR (bit 14) read 0 here because
// delivery is instantaneous and LINT level tracking is not modelled.
inline constexpr uint32_t kLvtTimerWritable = 0xff | kLvtMasked | kLvtTimerModeMask;
inline constexpr uint32_t kLvtWithModeWritable = 0x7ff | kLvtMasked;  // thermal, perf, CMCI
inline constexpr uint32_t kLvtLintWritable = 0x7ff | (1u << 13) | kLvtLevelTriggered | kLvtMasked;
inline constexpr uint32_t kLvtErrorWritable = 0xff | kLvtMasked;
inline constexpr uint32_t kIcrLowWritable = 0xfff | (1u << 14) | (1u << 15) | (3u << 18);
inline constexpr uint32_t kIcrHighXapicWritable = 0xff000000;
inline constexpr uint32_t kDfrFixedOnes = 0x0fffffff;
inline constexpr uint32_t kDfrModelFlat = 0xf;
inline constexpr uint32_t kTimerDivideWritable = 0xb;

// ESR bits (SDM 10.5.3).
inline constexpr uint32_t kEsrSendIllegalVector = 1u << 5;
inline constexpr uint32_t kEsrReceiveIllegalVector = 1u << 6;

// Delivery modes of LVT entries, ICR and MSI/IOAPIC messages (bits 10:8).
enum class DeliveryMode : uint8_t {
  kFixed = 0,
  kLowestPriority = 1,
  kSmi = 2,
  kReserved3 = 3,
  kNmi = 4,
  kInit = 5,
  kStartup = 6,
  kExtInt = 7,
};

inline DeliveryMode delivery_mode_of(uint32_t lvt_or_icr) {
  return static_cast<DeliveryMode>((lvt_or_icr >> 8) & 7);
}

}  // namespace vmctl::vmm::vlapic
