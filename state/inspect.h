// Decodes a record stream for people and scripts (`vmctl inspect`).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "state/stream.h"

namespace vmctl::state {

// Reads every record: the header, the list of records with their sizes, and decoded vCPU
// registers and LAPIC state (ISR/IRR/TMR vectors, TPR, derived PPR, LVTs, mode).
Result<nlohmann::json> inspect_stream(RecordReader& reader);
// The same as aligned text.
std::string format_inspection(const nlohmann::json& inspection);

}  // namespace vmctl::state
