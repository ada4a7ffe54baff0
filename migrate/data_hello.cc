#include "migrate/data_hello.h"

#include <charconv>
#include <vector>

#include <fmt/format.h>

#include "base/text.h"

namespace vmctl::migrate {

std::string format_hello(const DataHello& h) {
  return fmt::format("VMCTL-DATA {} {} {} {} {}", h.version, h.migration_id,
                     h.version == 2 ? h.nonce : h.secret, h.index, h.count);
}

Result<DataHello> parse_hello(std::string_view line) {
  auto refuse = [&](const char* why) {
    return Error::user(fmt::format("not a data connection hello ({}): \"{}\"", why,
                                   sanitize_text(std::string(line), 120)));
  };
  std::vector<std::string_view> words;
  size_t at = 0;
  while (at < line.size() && words.size() <= 6) {
    size_t space = line.find(' ', at);
    if (space == std::string_view::npos) space = line.size();
    words.push_back(line.substr(at, space - at));
    at = space + 1;
  }
  if (words.size() != 6 || words[0] != "VMCTL-DATA") return refuse("six words expected");
  if (words[1] != "1" && words[1] != "2") return refuse("version 1 or 2 expected");
  auto hex_id = [](std::string_view w) {
    if (w.empty() || w.size() > 128) return false;
    for (char c : w) {
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
        return false;
      }
    }
    return true;
  };
  if (!hex_id(words[2])) return refuse("the migration id is not alphanumeric");
  if (!hex_id(words[3])) {
    return refuse(words[1] == "2" ? "the nonce is not alphanumeric"
                                  : "the secret is not alphanumeric");
  }
  auto number = [](std::string_view w, unsigned& out) {
    auto [p, ec] = std::from_chars(w.data(), w.data() + w.size(), out);
    return ec == std::errc() && p == w.data() + w.size();
  };
  DataHello h;
  h.version = words[1] == "2" ? 2 : 1;
  h.migration_id = std::string(words[2]);
  (h.version == 2 ? h.nonce : h.secret) = std::string(words[3]);
  if (!number(words[4], h.index) || !number(words[5], h.count)) return refuse("bad numbers");
  if (h.count == 0 || h.count > kMaxDataConnections || h.index >= h.count) {
    return refuse("index and count out of range");
  }
  return h;
}

}  // namespace vmctl::migrate
