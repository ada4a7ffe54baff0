// File paths as the operator typed them, made absolute for a process with another working
// directory (a VM process, the daemon).
#pragma once

#include <string>

namespace vmctl {

// `path` prefixed with the current directory unless it is absolute; "" stays "" (no file given).
std::string absolute_path(const std::string& path);

}  // namespace vmctl
