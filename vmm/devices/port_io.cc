#include "vmm/devices/port_io.h"

#include <cstring>

namespace vmctl::vmm {

bool PortIoBus::add(uint16_t base, uint16_t count, std::shared_ptr<PortIoDevice> device) {
  for (const Range& r : ranges_) {
    if (base < r.base + r.count && r.base < base + count) return false;
  }
  ranges_.push_back(Range{base, count, std::move(device)});
  return true;
}

const PortIoBus::Range* PortIoBus::find(uint16_t port) const {
  for (const Range& r : ranges_) {
    if (port >= r.base && port < r.base + r.count) return &r;
  }
  return nullptr;
}

void PortIoBus::read(uint16_t port, uint8_t* data, size_t size) const {
  if (const Range* r = find(port)) {
    r->device->read(static_cast<uint16_t>(port - r->base), data, size);
  } else {
    std::memset(data, 0xff, size);
  }
}

void PortIoBus::write(uint16_t port, const uint8_t* data, size_t size) const {
  if (const Range* r = find(port))
    r->device->write(static_cast<uint16_t>(port - r->base), data, size);
}

}  // namespace vmctl::vmm
