#include "base/text.h"

#include <algorithm>
#include <cstdint>

namespace vmctl {
namespace {

// The length of the well-formed UTF-8 character at the start of `in` (1-4), or 0 if the bytes
// there are not one (RFC 3629, table 3-7 of the Unicode standard).
size_t utf8_char_length(std::string_view in) {
  auto byte = [&](size_t i) { return static_cast<uint8_t>(in[i]); };
  auto in_range = [&](size_t i, uint8_t lo, uint8_t hi) {
    return i < in.size() && byte(i) >= lo && byte(i) <= hi;
  };
  uint8_t b0 = byte(0);
  if (b0 < 0x80) return 1;
  if (b0 >= 0xc2 && b0 <= 0xdf) return in_range(1, 0x80, 0xbf) ? 2 : 0;
  if (b0 >= 0xe0 && b0 <= 0xef) {
    uint8_t lo = b0 == 0xe0 ? 0xa0 : 0x80;  // E0 80..9F would be overlong
    uint8_t hi = b0 == 0xed ? 0x9f : 0xbf;  // ED A0..BF are UTF-16 surrogates
    return in_range(1, lo, hi) && in_range(2, 0x80, 0xbf) ? 3 : 0;
  }
  if (b0 >= 0xf0 && b0 <= 0xf4) {
    uint8_t lo = b0 == 0xf0 ? 0x90 : 0x80;  // F0 80..8F would be overlong
    uint8_t hi = b0 == 0xf4 ? 0x8f : 0xbf;  // F4 90.. is above U+10FFFF
    return in_range(1, lo, hi) && in_range(2, 0x80, 0xbf) && in_range(3, 0x80, 0xbf) ? 4 : 0;
  }
  return 0;
}

// Characters that are valid but must not reach a log line or a terminal as they are.
bool must_escape(std::string_view ch) {
  auto b = [&](size_t i) { return static_cast<uint8_t>(ch[i]); };
  if (ch.size() == 1) return (b(0) < 0x20 && b(0) != '\t') || b(0) == 0x7f;
  // C1 controls U+0080..U+009F (U+009B is a one-byte CSI on some terminals).
  if (ch.size() == 2) return b(0) == 0xc2 && b(1) <= 0x9f;
  if (ch.size() == 3 && b(0) == 0xe2 && b(1) == 0x80) {
    // U+2028, U+2029 (line, paragraph separators), U+202A..U+202E (bidirectional embeddings and
    // overrides, which make text display in another order than it is stored).
    return b(2) >= 0xa8 && b(2) <= 0xae;
  }
  if (ch.size() == 3 && b(0) == 0xe2 && b(1) == 0x81) {
    return b(2) >= 0xa6 && b(2) <= 0xa9;  // U+2066..U+2069, the bidirectional isolates
  }
  return false;
}

void append_escaped(std::string& out, std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (char c : bytes) {
    uint8_t b = static_cast<uint8_t>(c);
    out += "\\x";
    out += kHex[b >> 4];
    out += kHex[b & 0xf];
  }
}

}  // namespace

std::string sanitize_text(std::string_view in, size_t max_bytes) {
  static constexpr std::string_view kEllipsis = "...";
  std::string out;
  out.reserve(std::min(in.size(), max_bytes));
  // Where the output may be cut so that the ellipsis still fits.
  size_t cut = 0;
  for (size_t i = 0; i < in.size();) {
    size_t len = utf8_char_length(in.substr(i));
    std::string piece;
    if (len == 0) {
      append_escaped(piece, in.substr(i, 1));
      len = 1;
    } else if (must_escape(in.substr(i, len))) {
      append_escaped(piece, in.substr(i, len));
    } else {
      piece.assign(in.substr(i, len));
    }
    if (out.size() + piece.size() + kEllipsis.size() <= max_bytes) cut = out.size() + piece.size();
    if (out.size() + piece.size() > max_bytes) {
      if (max_bytes < kEllipsis.size()) return std::string(max_bytes, '.');
      out.resize(cut);
      out += kEllipsis;
      return out;
    }
    out += piece;
    i += len;
  }
  return out;
}

bool is_valid_utf8(std::string_view in) {
  for (size_t i = 0; i < in.size();) {
    size_t len = utf8_char_length(in.substr(i));
    if (len == 0) return false;
    i += len;
  }
  return true;
}

}  // namespace vmctl
