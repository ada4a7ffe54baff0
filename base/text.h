// Text that comes from outside (a snapshot file, a migration stream, a peer's report) made safe to
// put into a log line, an error message, JSON or a protobuf string field.
//
// nlohmann::json::dump throws on invalid UTF-8 and protobuf string fields must be valid UTF-8, so
// a crafted hostname or snapshot id that reached either would crash or break the reporting path;
// a newline or an escape sequence would forge log lines or drive the operator's terminal.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace vmctl {

// `in` as valid UTF-8 on one line: bytes that are not part of a well-formed UTF-8 character
// (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF), control characters other
// than tab (C0, DEL, C1), the line and paragraph separators and the bidirectional overrides are
// written as \xNN (each of their bytes). Longer than `max_bytes` after that, it is cut at a
// character boundary and ends with "..."; the result never exceeds `max_bytes`.
std::string sanitize_text(std::string_view in, size_t max_bytes = 512);

// Whether `in` is well-formed UTF-8 (the same rule as above).
bool is_valid_utf8(std::string_view in);

}  // namespace vmctl
