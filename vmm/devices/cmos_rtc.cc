#include "vmm/devices/cmos_rtc.h"

#include <algorithm>

namespace vmctl::vmm {
namespace {

constexpr uint8_t kSeconds = 0x00, kMinutes = 0x02, kHours = 0x04, kWeekday = 0x06, kDay = 0x07,
                  kMonth = 0x08, kYear = 0x09, kRegA = 0x0a, kRegB = 0x0b, kRegC = 0x0c,
                  kRegD = 0x0d, kCentury = 0x32;
constexpr uint8_t kRegBBinary = 0x04, kRegB24Hour = 0x02;

uint8_t to_bcd(int v) {
  return static_cast<uint8_t>(((v / 10) << 4) | (v % 10));
}

void put16(std::array<uint8_t, 128>& b, uint8_t at, uint64_t v) {
  b[at] = static_cast<uint8_t>(v);
  b[at + 1] = static_cast<uint8_t>(v >> 8);
}

}  // namespace

CmosRtc::CmosRtc(uint64_t low_ram_bytes, uint64_t high_ram_bytes)
    : clock_([] { return std::time(nullptr); }) {
  bytes_[kRegA] = 0x26;  // 32.768 kHz time base, 1024 Hz rate; update-in-progress clear
  bytes_[kRegB] = kRegB24Hour;
  bytes_[kRegD] = 0x80;  // valid RAM and time
  // Memory sizes as PC firmware reads them (the layout QEMU uses too).
  constexpr uint64_t kMiB = 1 << 20;
  put16(bytes_, 0x15, 640);  // base memory in KiB
  uint64_t extended_kib = low_ram_bytes > kMiB ? (low_ram_bytes - kMiB) / 1024 : 0;
  extended_kib = std::min<uint64_t>(extended_kib, 0xffff);
  put16(bytes_, 0x17, extended_kib);
  put16(bytes_, 0x30, extended_kib);
  uint64_t above_16m = low_ram_bytes > 16 * kMiB ? (low_ram_bytes - 16 * kMiB) / 65536 : 0;
  put16(bytes_, 0x34, std::min<uint64_t>(above_16m, 0xffff));
  uint64_t above_4g = high_ram_bytes / 65536;
  bytes_[0x5b] = static_cast<uint8_t>(above_4g);
  bytes_[0x5c] = static_cast<uint8_t>(above_4g >> 8);
  bytes_[0x5d] = static_cast<uint8_t>(above_4g >> 16);
}

uint8_t CmosRtc::read_register(uint8_t index) const {
  switch (index) {
    case kSeconds:
    case kMinutes:
    case kHours:
    case kWeekday:
    case kDay:
    case kMonth:
    case kYear:
    case kCentury: {
      std::time_t now = clock_();
      std::tm tm{};
      gmtime_r(&now, &tm);
      int value = 0;
      switch (index) {
        case kSeconds:
          value = tm.tm_sec;
          break;
        case kMinutes:
          value = tm.tm_min;
          break;
        case kHours:
          value = tm.tm_hour;
          break;
        case kWeekday:
          value = tm.tm_wday + 1;
          break;
        case kDay:
          value = tm.tm_mday;
          break;
        case kMonth:
          value = tm.tm_mon + 1;
          break;
        case kYear:
          value = tm.tm_year % 100;
          break;
        default:
          value = (tm.tm_year + 1900) / 100;
          break;
      }
      return (bytes_[kRegB] & kRegBBinary) ? static_cast<uint8_t>(value) : to_bcd(value);
    }
    case kRegC:
      return 0;  // no interrupt flags: the RTC raises no interrupts
    default:
      return bytes_[index];
  }
}

void CmosRtc::read(uint16_t offset, uint8_t* data, size_t size) {
  uint8_t value;
  {
    std::lock_guard lock(mu_);
    value = offset == 0 ? index_ : read_register(index_);
  }
  for (size_t i = 0; i < size; ++i) data[i] = i == 0 ? value : 0;
}

void CmosRtc::write(uint16_t offset, const uint8_t* data, size_t size) {
  if (size == 0) return;
  std::lock_guard lock(mu_);
  if (offset == 0) {
    index_ = data[0] & 0x7f;  // bit 7 is the NMI mask, not part of the index
  } else if (index_ != kRegC && index_ != kRegD) {
    uint8_t value = data[0];
    if (index_ == kRegA) value &= 0x7f;  // update-in-progress is read-only
    bytes_[index_] = value;
  }
}

CmosRtcState CmosRtc::save() const {
  std::lock_guard lock(mu_);
  return CmosRtcState{bytes_, index_};
}

void CmosRtc::restore(const CmosRtcState& state) {
  std::lock_guard lock(mu_);
  bytes_ = state.bytes;
  index_ = state.index & 0x7f;
}

}  // namespace vmctl::vmm
