// Names of API enums as operators read them, shared by vmctl and vmctld.
#pragma once

#include <cctype>
#include <string>

#include "proto/vmctl.pb.h"

namespace vmctl {

// "running" for VM_STATE_RUNNING: the enum's own name, lower case, without its prefix.
inline std::string vm_state_name(::vmctl::v1::VmState s) {
  std::string name = ::vmctl::v1::VmState_Name(s);
  if (name.rfind("VM_STATE_", 0) == 0) name = name.substr(9);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name.empty() ? "unknown" : name;
}

}  // namespace vmctl
