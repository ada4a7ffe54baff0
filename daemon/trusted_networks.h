// [migration] trusted_networks (daemon/config.md): the networks an operator declares safe for
// plaintext migration data. A migration's data connections run without TLS only when both
// daemons count the other's address as inside one of them (migrate/data_plane.md, "Plaintext on
// a trusted network"); the control plane always keeps mutual TLS.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace vmctl::daemon {

// One CIDR block: "10.0.0.0/8", "fd00::/8", or a single address ("192.0.2.7" is a /32).
struct IpNetwork {
  int family = AF_INET;  // AF_INET or AF_INET6
  uint8_t address[16] = {};
  unsigned prefix = 0;
};

// Errors name the text and what is wrong with it; host bits outside the prefix are an error
// ("10.1.0.0/8" is a typo for 10.0.0.0/8 or 10.1.0.0/16, never silently widened).
Result<IpNetwork> parse_ip_network(std::string_view text);
std::string format_ip_network(const IpNetwork& network);

class TrustedNetworks {
 public:
  TrustedNetworks() = default;
  static Result<TrustedNetworks> parse(const std::vector<std::string>& texts);

  bool empty() const { return networks_.empty(); }
  // A numeric address ("10.0.0.2", "::1", "::ffff:10.0.0.2": a v4-mapped address counts as
  // its IPv4 address).
  bool contains_address(std::string_view address) const;
  // gRPC's peer string ("ipv4:10.0.0.2:4242", "ipv6:[::1]:4242"); anything else is outside.
  bool contains_grpc_peer(std::string_view peer) const;
  // Every address `host` resolves to lies inside (a name that also resolves elsewhere is not
  // trusted: the data connection could reach any of them).
  bool contains_host(const std::string& host) const;
  std::string describe() const;  // "10.0.0.0/8, fd00::/8" for logs

 private:
  std::vector<IpNetwork> networks_;
};

}  // namespace vmctl::daemon
