// The PS/2 controller at 0x60/0x64, only as far as guests use it to reset the machine: command
// 0xFE (pulse the reset line) and writing the output port with the reset bit low. No keyboard.
#pragma once

#include <functional>
#include <mutex>

#include "vmm/devices/port_io.h"

namespace vmctl::vmm {

class I8042 : public PortIoDevice {
 public:
  explicit I8042(std::function<void()> on_reset) : on_reset_(std::move(on_reset)) {}

  // Registered at 0x60 with 5 ports: offset 0 is data, offset 4 is status/command.
  void read(uint16_t offset, uint8_t* data, size_t size) override;
  void write(uint16_t offset, const uint8_t* data, size_t size) override;

 private:
  std::function<void()> on_reset_;
  std::mutex mu_;
  uint8_t command_byte_ = 0x45;  // translate, system flag, keyboard interrupt
  uint8_t pending_command_ = 0;  // a command waiting for its data byte
  bool output_full_ = false;
  uint8_t output_ = 0;
};

}  // namespace vmctl::vmm
