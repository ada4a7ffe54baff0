#include "state/lapic.h"

#include <cstring>

#include <fmt/format.h>

namespace vmctl::state {
namespace {

// Register offsets in the APIC page (Intel SDM table 10-1).
constexpr uint32_t kId = 0x20, kVersion = 0x30, kTpr = 0x80, kApr = 0x90, kPpr = 0xa0, kLdr = 0xd0,
                   kDfr = 0xe0, kSvr = 0xf0, kIsr = 0x100, kTmr = 0x180, kIrr = 0x200, kEsr = 0x280,
                   kLvtCmci = 0x2f0, kIcrLow = 0x300, kIcrHigh = 0x310, kLvtTimer = 0x320,
                   kLvtThermal = 0x330, kLvtPerf = 0x340, kLvtLint0 = 0x350, kLvtLint1 = 0x360,
                   kLvtError = 0x370, kTimerInitial = 0x380, kTimerCurrent = 0x390,
                   kTimerDivide = 0x3e0;

uint32_t get(const kvm_lapic_state& page, uint32_t reg) {
  uint32_t v;
  std::memcpy(&v, page.regs + reg, 4);
  return v;
}
void set(kvm_lapic_state& page, uint32_t reg, uint32_t v) {
  std::memcpy(page.regs + reg, &v, 4);
}

// ISR, TMR and IRR are eight 32-bit registers 0x10 apart.
VectorSet get_set(const kvm_lapic_state& page, uint32_t base) {
  VectorSet s;
  for (int word = 0; word < 8; ++word) {
    uint32_t bits = get(page, base + 0x10 * word);
    for (int bit = 0; bit < 32; ++bit) {
      if (bits & (1u << bit)) s.set(word * 32 + bit);
    }
  }
  return s;
}
void put_set(kvm_lapic_state& page, uint32_t base, const VectorSet& s) {
  for (int word = 0; word < 8; ++word) {
    uint32_t bits = 0;
    for (int bit = 0; bit < 32; ++bit) {
      if (s.test(word * 32 + bit)) bits |= 1u << bit;
    }
    set(page, base + 0x10 * word, bits);
  }
}

void set_to_words(const VectorSet& s, capnp::List<uint64_t>::Builder out) {
  for (int w = 0; w < 4; ++w) {
    uint64_t v = 0;
    for (int b = 0; b < 64; ++b) {
      if (s.test(w * 64 + b)) v |= 1ull << b;
    }
    out.set(w, v);
  }
}
VectorSet words_to_set(capnp::List<uint64_t>::Reader in) {
  VectorSet s;
  for (unsigned w = 0; w < in.size() && w < 4; ++w) {
    for (int b = 0; b < 64; ++b) {
      if (in[w] & (1ull << b)) s.set(w * 64 + b);
    }
  }
  return s;
}

}  // namespace

const char* apic_mode_name(ApicMode mode) {
  switch (mode) {
    case ApicMode::kDisabled:
      return "disabled";
    case ApicMode::kXapic:
      return "xAPIC";
    case ApicMode::kX2apic:
      return "x2APIC";
  }
  return "?";
}

ApicMode mode_from_apic_base(uint64_t apic_base) {
  if (!(apic_base & kApicBaseEnable)) return ApicMode::kDisabled;
  return (apic_base & kApicBaseExtd) ? ApicMode::kX2apic : ApicMode::kXapic;
}

int highest_vector(const VectorSet& set) {
  for (int v = 255; v >= 0; --v) {
    if (set.test(v)) return v;
  }
  return -1;
}

uint8_t derive_ppr(uint8_t tpr, const VectorSet& isr) {
  int isrv = highest_vector(isr);
  uint8_t isr_class = isrv < 0 ? 0 : static_cast<uint8_t>(isrv & 0xf0);
  return (tpr & 0xf0) >= isr_class ? tpr : isr_class;
}

LapicState decode_lapic(const kvm_lapic_state& page, uint64_t apic_base, uint64_t tsc_deadline,
                        bool x2apic_ids) {
  LapicState s;
  s.apic_base = apic_base;
  s.mode = mode_from_apic_base(apic_base);
  uint32_t id = get(page, kId);
  s.id = (s.mode == ApicMode::kX2apic && x2apic_ids) ? id : id >> 24;
  s.version = get(page, kVersion);
  s.tpr = static_cast<uint8_t>(get(page, kTpr));
  s.apr = static_cast<uint8_t>(get(page, kApr));
  s.ppr = static_cast<uint8_t>(get(page, kPpr));
  s.ldr = get(page, kLdr);
  s.dfr = get(page, kDfr);
  s.svr = get(page, kSvr);
  s.isr = get_set(page, kIsr);
  s.tmr = get_set(page, kTmr);
  s.irr = get_set(page, kIrr);
  s.esr = get(page, kEsr);
  s.icr_low = get(page, kIcrLow);
  s.icr_high = get(page, kIcrHigh);
  s.lvt_timer = get(page, kLvtTimer);
  s.lvt_thermal = get(page, kLvtThermal);
  s.lvt_perf = get(page, kLvtPerf);
  s.lvt_lint0 = get(page, kLvtLint0);
  s.lvt_lint1 = get(page, kLvtLint1);
  s.lvt_error = get(page, kLvtError);
  s.lvt_cmci = get(page, kLvtCmci);
  s.timer_initial_count = get(page, kTimerInitial);
  s.timer_current_count = get(page, kTimerCurrent);
  s.timer_divide = get(page, kTimerDivide);
  s.tsc_deadline = tsc_deadline;
  return s;
}

kvm_lapic_state encode_lapic(const LapicState& s, bool x2apic_ids) {
  kvm_lapic_state page{};
  set(page, kId, (s.mode == ApicMode::kX2apic && x2apic_ids) ? s.id : s.id << 24);
  set(page, kVersion, s.version);
  set(page, kTpr, s.tpr);
  set(page, kApr, s.apr);
  // PPR is derived state: KVM recomputes it from TPR and ISR on KVM_SET_LAPIC.
  set(page, kPpr, derive_ppr(s.tpr, s.isr));
  set(page, kLdr, s.ldr);
  set(page, kDfr, s.dfr);
  set(page, kSvr, s.svr);
  put_set(page, kIsr, s.isr);
  put_set(page, kTmr, s.tmr);
  put_set(page, kIrr, s.irr);
  set(page, kEsr, s.esr);
  set(page, kIcrLow, s.icr_low);
  set(page, kIcrHigh, s.icr_high);
  set(page, kLvtTimer, s.lvt_timer);
  set(page, kLvtThermal, s.lvt_thermal);
  set(page, kLvtPerf, s.lvt_perf);
  set(page, kLvtLint0, s.lvt_lint0);
  set(page, kLvtLint1, s.lvt_lint1);
  set(page, kLvtError, s.lvt_error);
  set(page, kLvtCmci, s.lvt_cmci);
  set(page, kTimerInitial, s.timer_initial_count);
  set(page, kTimerCurrent, s.timer_current_count);
  set(page, kTimerDivide, s.timer_divide);
  return page;
}

Status validate_lapic(const LapicState& s, uint32_t vcpu) {
  auto bad = [&](const std::string& what) {
    return Error::user(fmt::format("vCPU {} local APIC record is inconsistent: {}", vcpu, what));
  };
  if ((s.apic_base & kApicBaseExtd) && !(s.apic_base & kApicBaseEnable)) {
    return bad(fmt::format(
        "APIC base 0x{:x} sets x2APIC (EXTD) without enable (EN), a mode no CPU can be in",
        s.apic_base));
  }
  if (s.mode != mode_from_apic_base(s.apic_base)) {
    return bad(fmt::format("mode {} does not match APIC base 0x{:x} ({})", apic_mode_name(s.mode),
                           s.apic_base, apic_mode_name(mode_from_apic_base(s.apic_base))));
  }
  for (auto [name, set] : {std::pair<const char*, const VectorSet*>{"ISR", &s.isr},
                           {"IRR", &s.irr},
                           {"TMR", &s.tmr}}) {
    for (int v = 0; v < 16; ++v) {
      if (set->test(v)) {
        return bad(fmt::format("{} has vector {} set; vectors 0-15 are reserved", name, v));
      }
    }
  }
  for (int cls = 1; cls < 16; ++cls) {
    int in_service = 0;
    for (int v = cls * 16; v < cls * 16 + 16; ++v) in_service += s.isr.test(v);
    if (in_service > 1) {
      return bad(fmt::format(
          "ISR has {} vectors in priority class {}; only a higher class can preempt a handler, so "
          "at most one per class can be in service",
          in_service, cls));
    }
  }
  uint8_t derived = derive_ppr(s.tpr, s.isr);
  if (s.ppr != derived) {
    return bad(fmt::format(
        "recorded PPR 0x{:02x} but TPR 0x{:02x} and highest in-service vector {} give 0x{:02x}",
        s.ppr, s.tpr, highest_vector(s.isr), derived));
  }
  return ok_status();
}

void to_record(const LapicState& s, uint32_t vcpu, proto::state::Lapic::Builder out) {
  out.setVcpuIndex(vcpu);
  out.setApicBase(s.apic_base);
  out.setMode(s.mode == ApicMode::kDisabled ? proto::state::ApicMode::DISABLED
              : s.mode == ApicMode::kXapic  ? proto::state::ApicMode::XAPIC
                                            : proto::state::ApicMode::X2APIC);
  out.setId(s.id);
  out.setVersion(s.version);
  out.setTpr(s.tpr);
  out.setApr(s.apr);
  out.setPpr(s.ppr);
  out.setLdr(s.ldr);
  out.setDfr(s.dfr);
  out.setSvr(s.svr);
  set_to_words(s.isr, out.initIsr(4));
  set_to_words(s.tmr, out.initTmr(4));
  set_to_words(s.irr, out.initIrr(4));
  out.setEsr(s.esr);
  out.setIcrLow(s.icr_low);
  out.setIcrHigh(s.icr_high);
  out.setLvtTimer(s.lvt_timer);
  out.setLvtThermal(s.lvt_thermal);
  out.setLvtPerf(s.lvt_perf);
  out.setLvtLint0(s.lvt_lint0);
  out.setLvtLint1(s.lvt_lint1);
  out.setLvtError(s.lvt_error);
  out.setLvtCmci(s.lvt_cmci);
  out.setTimerInitialCount(s.timer_initial_count);
  out.setTimerCurrentCount(s.timer_current_count);
  out.setTimerDivide(s.timer_divide);
  out.setTscDeadline(s.tsc_deadline);
}

LapicState from_record(proto::state::Lapic::Reader in) {
  LapicState s;
  s.apic_base = in.getApicBase();
  switch (in.getMode()) {
    case proto::state::ApicMode::DISABLED:
      s.mode = ApicMode::kDisabled;
      break;
    case proto::state::ApicMode::XAPIC:
      s.mode = ApicMode::kXapic;
      break;
    default:
      s.mode = ApicMode::kX2apic;
      break;
  }
  s.id = in.getId();
  s.version = in.getVersion();
  s.tpr = in.getTpr();
  s.apr = in.getApr();
  s.ppr = in.getPpr();
  s.ldr = in.getLdr();
  s.dfr = in.getDfr();
  s.svr = in.getSvr();
  s.isr = words_to_set(in.getIsr());
  s.tmr = words_to_set(in.getTmr());
  s.irr = words_to_set(in.getIrr());
  s.esr = in.getEsr();
  s.icr_low = in.getIcrLow();
  s.icr_high = in.getIcrHigh();
  s.lvt_timer = in.getLvtTimer();
  s.lvt_thermal = in.getLvtThermal();
  s.lvt_perf = in.getLvtPerf();
  s.lvt_lint0 = in.getLvtLint0();
  s.lvt_lint1 = in.getLvtLint1();
  s.lvt_error = in.getLvtError();
  s.lvt_cmci = in.getLvtCmci();
  s.timer_initial_count = in.getTimerInitialCount();
  s.timer_current_count = in.getTimerCurrentCount();
  s.timer_divide = in.getTimerDivide();
  s.tsc_deadline = in.getTscDeadline();
  return s;
}

std::vector<int> vectors(const VectorSet& set) {
  std::vector<int> out;
  for (int v = 0; v < 256; ++v) {
    if (set.test(v)) out.push_back(v);
  }
  return out;
}

std::string format_vectors(const VectorSet& set) {
  std::string out;
  for (int v : vectors(set)) out += fmt::format("{}0x{:02x}", out.empty() ? "" : " ", v);
  return out.empty() ? "-" : out;
}

}  // namespace vmctl::state
