// The local APIC timer (Intel SDM vol. 3A 10.5.4): one-shot and periodic countdown from the
// initial-count register at the bus clock divided by the divide configuration, and TSC-deadline
// mode (10.5.4.1) against IA32_TSC_DEADLINE.
//
// The bus clock is fixed at 1 GHz, one count per nanosecond before division, as KVM's in-kernel
// APIC (APIC_BUS_CYCLE_NS = 1), so a guest sees the same timer rate under either irqchip and a
// snapshot's counts mean the same time in both.
//
// The timer keeps no "current count" register: it keeps the time of its next expiry and derives the
// count from it, so reads follow time without any tick. Expiry is reported by expire(), which the
// owner calls before every access and when a host timer armed at next_deadline_ns() fires; missed
// periods coalesce into one expiry (the IRR holds one bit per vector anyway).
#pragma once

#include <cstdint>
#include <optional>

#include "vmm/vlapic/guest_clock.h"

namespace vmctl::vmm::vlapic {

enum class TimerMode : uint8_t {
  kOneShot = 0,
  kPeriodic = 1,
  kTscDeadline = 2,
  kReserved = 3,  // LVT timer mode 11b: the model keeps the bits, the timer does not count
};

class ApicTimer {
 public:
  static constexpr uint64_t kNsPerBusCycle = 1;

  explicit ApicTimer(uint64_t tsc_hz) : tsc_hz_(tsc_hz) {}

  // Power-up and INIT state: one-shot, divide by 2, counts 0, deadline 0, stopped.
  void reset();

  TimerMode mode() const { return mode_; }
  // From the LVT timer register. A switch into or out of TSC-deadline mode disarms the timer
  // (SDM 10.5.4.1); one-shot <-> periodic keeps the count running.
  void set_mode(TimerMode mode);

  // Divide configuration register, bits 0, 1 and 3 (others reserved).
  uint32_t divide_config() const { return divide_config_; }
  void set_divide_config(uint32_t value, GuestTime now);
  // 1, 2, 4, ... 128 for the current divide configuration.
  uint32_t divisor() const;

  uint32_t initial_count() const { return initial_count_; }
  // Starts (non-zero) or stops (zero) the countdown; ignored in TSC-deadline mode.
  void set_initial_count(uint32_t count, GuestTime now);
  uint32_t current_count(GuestTime now) const;

  // IA32_TSC_DEADLINE: reads 0 outside TSC-deadline mode and once the deadline has passed; writes
  // outside TSC-deadline mode are ignored, 0 disarms.
  uint64_t tsc_deadline(GuestTime now) const;
  void set_tsc_deadline(uint64_t deadline, GuestTime now);

  // Whether the timer expired since the last call (at most one expiry is reported per call). A
  // periodic timer reloads; a one-shot or TSC-deadline timer disarms.
  bool expire(GuestTime now);
  // When the timer next expires, in GuestTime::ns, or nothing if it is not armed.
  std::optional<uint64_t> next_deadline_ns(GuestTime now) const;

  // Restores a saved timer: `current_count` of the counts remains at `now` (for one-shot and
  // periodic; a periodic timer at 0 restarts from its initial count), or the TSC deadline.
  void restore(TimerMode mode, uint32_t divide_config, uint32_t initial_count,
               uint32_t current_count, uint64_t tsc_deadline, GuestTime now);

 private:
  uint64_t count_ns() const { return uint64_t{divisor()} * kNsPerBusCycle; }
  bool counting() const { return mode_ == TimerMode::kOneShot || mode_ == TimerMode::kPeriodic; }
  // For a periodic timer whose expiry has passed unreported: the expiry after `now`.
  uint64_t next_expiry_after(uint64_t now_ns) const;

  uint64_t tsc_hz_;
  TimerMode mode_ = TimerMode::kOneShot;
  uint32_t divide_config_ = 0;
  uint32_t initial_count_ = 0;
  bool armed_ = false;         // one-shot/periodic counting
  uint64_t expiry_ns_ = 0;     // when the count reaches 0, if armed_
  uint64_t tsc_deadline_ = 0;  // armed in TSC-deadline mode when non-zero
};

}  // namespace vmctl::vmm::vlapic
