// Shared by the vlapic tests: a settable clock and register helpers.
#pragma once

#include <cstdint>
#include <cstring>

#include "vmm/vlapic/local_apic.h"

namespace vmctl::vmm::vlapic::testing {

// Guest time that moves only when told; the TSC runs at 2 GHz from an arbitrary offset.
class FakeClock : public GuestClock {
 public:
  static constexpr uint64_t kTscHz = 2'000'000'000;
  static constexpr uint64_t kTscAtZero = 1'000'000;

  GuestTime now() const override { return {ns_, kTscAtZero + ns_ * (kTscHz / 1'000'000'000)}; }
  uint64_t tsc_hz() const override { return kTscHz; }
  void advance(uint64_t ns) { ns_ += ns; }
  void set(uint64_t ns) { ns_ = ns; }

 private:
  uint64_t ns_ = 5'000'000'000;  // not zero, so nothing relies on time starting at 0
};

inline uint32_t mmio_read(LocalApic& apic, uint32_t offset) {
  uint32_t v = 0;
  apic.read_mmio(offset, &v, 4);
  return v;
}

inline ApicWriteEffect mmio_write(LocalApic& apic, uint32_t offset, uint32_t value) {
  return apic.write_mmio(offset, &value, 4);
}

// Software-enables the APIC with spurious vector 0xff.
inline void software_enable(LocalApic& apic) {
  mmio_write(apic, reg::kSvr, 0x1ff);
}

inline uint32_t msr_for(uint32_t offset) {
  return kMsrX2apicFirst + (offset >> 4);
}

}  // namespace vmctl::vmm::vlapic::testing
