// The CMOS RTC at 0x70/0x71: the time registers follow the host's UTC clock (read at each access,
// so a restored or migrated guest sees the new host's time), and the BIOS memory-size bytes
// describe guest RAM the way guests and firmware expect.
#pragma once

#include <array>
#include <cstdint>
#include <ctime>
#include <functional>
#include <mutex>

#include "vmm/devices/port_io.h"

namespace vmctl::vmm {

struct CmosRtcState {
  std::array<uint8_t, 128> bytes{};
  uint8_t index = 0;
};

class CmosRtc : public PortIoDevice {
 public:
  CmosRtc(uint64_t low_ram_bytes, uint64_t high_ram_bytes);

  void read(uint16_t offset, uint8_t* data, size_t size) override;
  void write(uint16_t offset, const uint8_t* data, size_t size) override;

  CmosRtcState save() const;
  void restore(const CmosRtcState& state);

  // Tests pin the clock; the default reads the host's time.
  void set_clock_for_testing(std::function<std::time_t()> clock) { clock_ = std::move(clock); }

 private:
  uint8_t read_register(uint8_t index) const;

  mutable std::mutex mu_;
  std::array<uint8_t, 128> bytes_{};
  uint8_t index_ = 0;
  std::function<std::time_t()> clock_;
};

}  // namespace vmctl::vmm
