// Where the userspace local APIC takes time from. The model never reads a host clock itself, so its
// tests are deterministic and the run loop decides what "now" is (host CLOCK_MONOTONIC and the
// guest's TSC, sampled together).
#pragma once

#include <cstdint>

namespace vmctl::vmm::vlapic {

// One instant on both of the guest's time bases.
struct GuestTime {
  uint64_t ns = 0;   // monotonic nanoseconds; what host timers are armed in
  uint64_t tsc = 0;  // the guest's TSC at the same instant (what IA32_TSC_DEADLINE compares to)
};

class GuestClock {
 public:
  virtual ~GuestClock() = default;
  virtual GuestTime now() const = 0;
  // The guest's TSC frequency, to turn a TSC deadline into a host-timer time.
  virtual uint64_t tsc_hz() const = 0;
};

}  // namespace vmctl::vmm::vlapic
