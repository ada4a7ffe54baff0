#include "vmm/vlapic/apic_timer.h"

#include <algorithm>

namespace vmctl::vmm::vlapic {
namespace {

uint64_t ceil_div(uint64_t a, uint64_t b) {
  return a / b + (a % b != 0);
}

}  // namespace

void ApicTimer::reset() {
  mode_ = TimerMode::kOneShot;
  divide_config_ = 0;
  initial_count_ = 0;
  armed_ = false;
  expiry_ns_ = 0;
  tsc_deadline_ = 0;
}

void ApicTimer::set_mode(TimerMode mode) {
  if ((mode_ == TimerMode::kTscDeadline) != (mode == TimerMode::kTscDeadline)) {
    initial_count_ = 0;
    armed_ = false;
    tsc_deadline_ = 0;
  }
  mode_ = mode;
  if (!counting()) armed_ = false;
}

uint32_t ApicTimer::divisor() const {
  // Bits 3, 1, 0 form a 3-bit code: 000 = 2, 001 = 4, ... 110 = 128, 111 = 1 (SDM 10.5.4, divide
  // configuration register).
  uint32_t code = ((divide_config_ >> 1) & 4) | (divide_config_ & 3);
  return 1u << ((code + 1) & 7);
}

void ApicTimer::set_divide_config(uint32_t value, GuestTime now) {
  // The SDM leaves a divide change mid-count unspecified; like KVM, keep the remaining count and
  // continue it at the new rate.
  uint32_t remaining = current_count(now);
  divide_config_ = value & 0xb;
  if (armed_ && remaining != 0) expiry_ns_ = now.ns + uint64_t{remaining} * count_ns();
}

void ApicTimer::set_initial_count(uint32_t count, GuestTime now) {
  if (mode_ == TimerMode::kTscDeadline) return;  // SDM 10.5.4.1: writes are ignored
  initial_count_ = count;
  armed_ = count != 0 && counting();
  if (armed_) expiry_ns_ = now.ns + uint64_t{count} * count_ns();
}

uint64_t ApicTimer::next_expiry_after(uint64_t now_ns) const {
  uint64_t period = uint64_t{initial_count_} * count_ns();
  uint64_t periods = (now_ns - expiry_ns_) / period + 1;
  return expiry_ns_ + periods * period;
}

uint32_t ApicTimer::current_count(GuestTime now) const {
  if (!armed_) return 0;
  uint64_t expiry = expiry_ns_;
  if (now.ns >= expiry) {
    if (mode_ == TimerMode::kOneShot) return 0;
    expiry = next_expiry_after(now.ns);
  }
  return static_cast<uint32_t>(ceil_div(expiry - now.ns, count_ns()));
}

uint64_t ApicTimer::tsc_deadline(GuestTime now) const {
  if (mode_ != TimerMode::kTscDeadline || now.tsc >= tsc_deadline_) return 0;
  return tsc_deadline_;
}

void ApicTimer::set_tsc_deadline(uint64_t deadline, GuestTime) {
  if (mode_ != TimerMode::kTscDeadline) return;
  tsc_deadline_ = deadline;
}

bool ApicTimer::expire(GuestTime now) {
  if (mode_ == TimerMode::kTscDeadline) {
    if (tsc_deadline_ == 0 || now.tsc < tsc_deadline_) return false;
    tsc_deadline_ = 0;  // the timer disarms itself and the MSR reads 0 (SDM 10.5.4.1)
    return true;
  }
  if (!armed_ || now.ns < expiry_ns_) return false;
  if (mode_ == TimerMode::kPeriodic) {
    expiry_ns_ = next_expiry_after(now.ns);
  } else {
    armed_ = false;
  }
  return true;
}

std::optional<uint64_t> ApicTimer::next_deadline_ns(GuestTime now) const {
  if (mode_ == TimerMode::kTscDeadline) {
    if (tsc_deadline_ == 0) return std::nullopt;
    if (now.tsc >= tsc_deadline_ || tsc_hz_ == 0) return now.ns;
    unsigned __int128 ticks = tsc_deadline_ - now.tsc;
    unsigned __int128 ns = (ticks * 1'000'000'000u + tsc_hz_ - 1) / tsc_hz_;
    return now.ns + static_cast<uint64_t>(std::min<unsigned __int128>(ns, UINT64_MAX - now.ns));
  }
  if (!armed_) return std::nullopt;
  return expiry_ns_;
}

void ApicTimer::restore(TimerMode mode, uint32_t divide_config, uint32_t initial_count,
                        uint32_t current_count, uint64_t tsc_deadline, GuestTime now) {
  reset();
  mode_ = mode;
  divide_config_ = divide_config & 0xb;
  if (mode_ == TimerMode::kTscDeadline) {
    tsc_deadline_ = tsc_deadline;
    return;
  }
  initial_count_ = initial_count;
  if (!counting() || initial_count == 0) return;
  uint32_t remaining = std::min(current_count, initial_count);
  if (remaining == 0 && mode_ == TimerMode::kPeriodic) remaining = initial_count;
  if (remaining == 0) return;  // a one-shot that already expired
  armed_ = true;
  expiry_ns_ = now.ns + uint64_t{remaining} * count_ns();
}

}  // namespace vmctl::vmm::vlapic
