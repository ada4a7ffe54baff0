// Human sizes for flags: "512M", "2G", "65536", "4k". Binary units (K = 1024).
#pragma once

#include <cstdint>
#include <string>

#include "base/error.h"

namespace vmctl {

Result<uint64_t> parse_size(const std::string& text);
std::string format_size(uint64_t bytes);

}  // namespace vmctl
