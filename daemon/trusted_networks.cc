#include "daemon/trusted_networks.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <charconv>
#include <cstring>

#include <fmt/format.h>

#include "base/text.h"

namespace vmctl::daemon {
namespace {

// Parses a numeric address into (family, 16 bytes); a v4-mapped IPv6 address becomes IPv4.
bool parse_address(std::string_view text, int& family, uint8_t out[16]) {
  std::string s(text);
  std::memset(out, 0, 16);
  in_addr v4{};
  if (::inet_pton(AF_INET, s.c_str(), &v4) == 1) {
    family = AF_INET;
    std::memcpy(out, &v4, 4);
    return true;
  }
  in6_addr v6{};
  if (::inet_pton(AF_INET6, s.c_str(), &v6) != 1) return false;
  if (IN6_IS_ADDR_V4MAPPED(&v6)) {
    family = AF_INET;
    std::memcpy(out, v6.s6_addr + 12, 4);
    return true;
  }
  family = AF_INET6;
  std::memcpy(out, v6.s6_addr, 16);
  return true;
}

bool inside(const IpNetwork& n, int family, const uint8_t address[16]) {
  if (family != n.family) return false;
  unsigned full = n.prefix / 8, rest = n.prefix % 8;
  if (std::memcmp(address, n.address, full) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (address[full] & mask) == (n.address[full] & mask);
}

}  // namespace

Result<IpNetwork> parse_ip_network(std::string_view text) {
  std::string shown = sanitize_text(std::string(text), 80);
  size_t slash = text.find('/');
  IpNetwork n;
  if (!parse_address(text.substr(0, slash), n.family, n.address)) {
    return Error::user(
        fmt::format("\"{}\" is not a network (expected ADDRESS/PREFIX, for example "
                    "10.0.0.0/8 or fd00::/8)",
                    shown));
  }
  // A v4-mapped address given with an IPv6 prefix length would be ambiguous: refuse it.
  const unsigned bits = n.family == AF_INET ? 32 : 128;
  n.prefix = bits;
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), n.prefix);
    if (p.empty() || ec != std::errc() || end != p.data() + p.size() || n.prefix > bits) {
      return Error::user(
          fmt::format("\"{}\": the prefix length must be 0 to {} for this address", shown, bits));
    }
  }
  for (unsigned bit = n.prefix; bit < bits; ++bit) {
    if (n.address[bit / 8] & (0x80 >> (bit % 8))) {
      return Error::user(
          fmt::format("\"{}\" has host bits set outside its /{} prefix: write the network address",
                      shown, n.prefix));
    }
  }
  return n;
}

std::string format_ip_network(const IpNetwork& n) {
  char text[INET6_ADDRSTRLEN] = {0};
  ::inet_ntop(n.family, n.address, text, sizeof text);
  return fmt::format("{}/{}", text, n.prefix);
}

Result<TrustedNetworks> TrustedNetworks::parse(const std::vector<std::string>& texts) {
  TrustedNetworks t;
  for (const std::string& text : texts) t.networks_.push_back(TRY(parse_ip_network(text)));
  return t;
}

bool TrustedNetworks::contains_address(std::string_view address) const {
  int family = 0;
  uint8_t bytes[16];
  if (!parse_address(address, family, bytes)) return false;
  for (const IpNetwork& n : networks_) {
    if (inside(n, family, bytes)) return true;
  }
  return false;
}

bool TrustedNetworks::contains_grpc_peer(std::string_view peer) const {
  std::string_view address;
  if (peer.rfind("ipv4:", 0) == 0) {
    address = peer.substr(5);
    size_t colon = address.rfind(':');
    if (colon == std::string_view::npos) return false;
    address = address.substr(0, colon);
  } else if (peer.rfind("ipv6:[", 0) == 0) {
    address = peer.substr(6);
    size_t close = address.find(']');
    if (close == std::string_view::npos) return false;
    address = address.substr(0, close);
    // A zone ("fe80::1%eth0") names an interface, not part of the address.
    size_t zone = address.find('%');
    if (zone != std::string_view::npos) address = address.substr(0, zone);
  } else {
    return false;
  }
  return contains_address(address);
}

bool TrustedNetworks::contains_host(const std::string& host) const {
  if (networks_.empty()) return false;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0) return false;
  bool all = found != nullptr;
  for (addrinfo* a = found; a && all; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {0};
    const void* bytes =
        a->ai_family == AF_INET
            ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr)
            : static_cast<const void*>(
                  &reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr);
    all = ::inet_ntop(a->ai_family, bytes, text, sizeof text) && contains_address(text);
  }
  ::freeaddrinfo(found);
  return all;
}

std::string TrustedNetworks::describe() const {
  std::string out;
  for (const IpNetwork& n : networks_) {
    if (!out.empty()) out += ", ";
    out += format_ip_network(n);
  }
  return out.empty() ? "none" : out;
}

}  // namespace vmctl::daemon
