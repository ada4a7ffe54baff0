// The debug-exit port (0xf4): a guest ends the VM with a status by writing it here. Test guests use
// it to report pass/fail as the process exit code. Unlike QEMU's isa-debug-exit, which exits with
// (value << 1) | 1, the status is the written value itself.
#pragma once

#include <functional>

#include "vmm/devices/port_io.h"

namespace vmctl::vmm {

class DebugExit : public PortIoDevice {
 public:
  explicit DebugExit(std::function<void(uint32_t status)> on_exit) : on_exit_(std::move(on_exit)) {}

  void read(uint16_t, uint8_t* data, size_t size) override {
    for (size_t i = 0; i < size; ++i) data[i] = 0;
  }
  void write(uint16_t offset, const uint8_t* data, size_t size) override {
    if (offset != 0) return;
    uint32_t status = 0;
    for (size_t i = 0; i < size && i < 4; ++i) status |= uint32_t{data[i]} << (8 * i);
    on_exit_(status);
  }

 private:
  std::function<void(uint32_t)> on_exit_;
};

}  // namespace vmctl::vmm
