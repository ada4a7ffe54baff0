#include "vmm/devices/i8042.h"

namespace vmctl::vmm {
namespace {

constexpr uint16_t kDataOffset = 0;
constexpr uint16_t kCommandOffset = 4;
constexpr uint8_t kStatusOutputFull = 0x01, kStatusSystem = 0x04, kStatusCommand = 0x08;
constexpr uint8_t kReadCommandByte = 0x20, kWriteCommandByte = 0x60, kWriteOutputPort = 0xd1,
                  kPulseReset = 0xfe;

}  // namespace

void I8042::read(uint16_t offset, uint8_t* data, size_t size) {
  uint8_t value = 0;
  {
    std::lock_guard lock(mu_);
    if (offset == kCommandOffset) {
      value = kStatusSystem | kStatusCommand | (output_full_ ? kStatusOutputFull : 0);
    } else if (offset == kDataOffset) {
      value = output_;
      output_full_ = false;
    } else {
      value = 0xff;  // 0x61-0x63 belong to other devices on a PC; nothing here
    }
  }
  for (size_t i = 0; i < size; ++i) data[i] = i == 0 ? value : 0;
}

void I8042::write(uint16_t offset, const uint8_t* data, size_t size) {
  if (size == 0) return;
  bool reset = false;
  {
    std::lock_guard lock(mu_);
    uint8_t value = data[0];
    if (offset == kCommandOffset) {
      pending_command_ = 0;
      switch (value) {
        case kReadCommandByte:
          output_ = command_byte_;
          output_full_ = true;
          break;
        case kWriteCommandByte:
        case kWriteOutputPort:
          pending_command_ = value;
          break;
        case kPulseReset:
          reset = true;
          break;
        default:
          break;
      }
    } else if (offset == kDataOffset) {
      if (pending_command_ == kWriteCommandByte) command_byte_ = value;
      // Output port bit 0 is the CPU reset line (active low).
      if (pending_command_ == kWriteOutputPort && !(value & 0x01)) reset = true;
      pending_command_ = 0;
    }
  }
  if (reset) on_reset_();
}

}  // namespace vmctl::vmm
