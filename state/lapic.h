// The local APIC as architectural state, decoded from and encoded to KVM's register page by named
// register offsets. No implementation structure is kept (KVM's page is never stored raw, there is
// no in-service stack); PPR is derived from TPR and the highest in-service vector.
#pragma once

#include <array>
#include <bitset>
#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "proto/state.capnp.h"
#include "vmm/kvm/kvm_uapi.h"

namespace vmctl::state {

enum class ApicMode { kDisabled, kXapic, kX2apic };
const char* apic_mode_name(ApicMode mode);

// IA32_APIC_BASE bits.
inline constexpr uint64_t kApicBaseBsp = 1ull << 8;
inline constexpr uint64_t kApicBaseExtd = 1ull << 10;
inline constexpr uint64_t kApicBaseEnable = 1ull << 11;

using VectorSet = std::bitset<256>;

struct LapicState {
  uint64_t apic_base = 0;
  ApicMode mode = ApicMode::kXapic;
  uint32_t id = 0;
  uint32_t version = 0;
  uint8_t tpr = 0;
  uint8_t apr = 0;
  uint8_t ppr = 0;  // as captured; validate() checks it against derive_ppr()
  uint32_t ldr = 0;
  uint32_t dfr = 0;
  uint32_t svr = 0;
  VectorSet isr, tmr, irr;
  uint32_t esr = 0;
  uint32_t icr_low = 0, icr_high = 0;
  uint32_t lvt_timer = 0, lvt_thermal = 0, lvt_perf = 0, lvt_lint0 = 0, lvt_lint1 = 0,
           lvt_error = 0, lvt_cmci = 0;
  uint32_t timer_initial_count = 0, timer_current_count = 0, timer_divide = 0;
  uint64_t tsc_deadline = 0;
};

ApicMode mode_from_apic_base(uint64_t apic_base);
// The highest set vector, or -1.
int highest_vector(const VectorSet& set);
// PPR[7:0] = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4]:0, where ISRV is the highest in-service
// vector (Intel SDM 10.8.3.1).
uint8_t derive_ppr(uint8_t tpr, const VectorSet& isr);

// `x2apic_ids` is whether KVM_CAP_X2APIC_API's 32-bit IDs are enabled on the VM.
LapicState decode_lapic(const kvm_lapic_state& page, uint64_t apic_base, uint64_t tsc_deadline,
                        bool x2apic_ids);
kvm_lapic_state encode_lapic(const LapicState& state, bool x2apic_ids);

// Architectural consistency of a saved LAPIC before it is given to KVM: the recorded PPR matches
// the derived one, no vector below 16 in ISR/IRR/TMR, at most one in-service vector per priority
// class (a class can only preempt a lower one), a legal APIC base mode, and the mode field agrees
// with the APIC base. Errors name the vCPU and the register.
Status validate_lapic(const LapicState& state, uint32_t vcpu);

void to_record(const LapicState& state, uint32_t vcpu, proto::state::Lapic::Builder out);
LapicState from_record(proto::state::Lapic::Reader in);

// "0x31 0x51 0x61" for inspect output.
std::string format_vectors(const VectorSet& set);
std::vector<int> vectors(const VectorSet& set);

}  // namespace vmctl::state
