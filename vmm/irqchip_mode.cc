#include "vmm/irqchip_mode.h"

#include <fmt/format.h>

namespace vmctl::vmm {

const char* irqchip_mode_name(IrqchipMode mode) {
  return mode == IrqchipMode::kUser ? "user" : "kernel";
}

Result<IrqchipMode> parse_irqchip_mode(const std::string& text) {
  if (text == "kernel") return IrqchipMode::kKernel;
  if (text == "user") return IrqchipMode::kUser;
  return Error::user(fmt::format(
      "irqchip \"{}\": give kernel (KVM's in-kernel irqchip) or user (vmctl's local APIC in "
      "userspace)",
      text.size() > 40 ? text.substr(0, 40) + "..." : text));
}

}  // namespace vmctl::vmm
