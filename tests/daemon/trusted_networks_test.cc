#include "daemon/trusted_networks.h"

#include <gtest/gtest.h>

#include "daemon/config.h"

namespace vmctl::daemon {
namespace {

TEST(TrustedNetworks, ParsesNetworksAndSingleAddresses) {
  Result<IpNetwork> v4 = parse_ip_network("10.0.0.0/8");
  ASSERT_TRUE(v4.ok()) << v4.error().message();
  EXPECT_EQ(format_ip_network(*v4), "10.0.0.0/8");
  Result<IpNetwork> host = parse_ip_network("192.0.2.7");
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(format_ip_network(*host), "192.0.2.7/32");
  Result<IpNetwork> v6 = parse_ip_network("fd00::/8");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(format_ip_network(*v6), "fd00::/8");
}

TEST(TrustedNetworks, RefusesWhatIsNotANetwork) {
  for (const char* bad : {"", "10.0.0.0/33", "fd00::/129", "10.0.0.0/", "10.0.0.0/x", "host/8",
                          "10.0.0.0/8/8", "10.1.0.0/8", "fd00::1/8"}) {
    Result<IpNetwork> n = parse_ip_network(bad);
    EXPECT_FALSE(n.ok()) << bad;
  }
  // Host bits outside the prefix are named as such, not as a syntax error.
  Result<IpNetwork> typo = parse_ip_network("10.1.0.0/8");
  ASSERT_FALSE(typo.ok());
  EXPECT_NE(typo.error().message().find("host bits"), std::string::npos) << typo.error().message();
}

TEST(TrustedNetworks, MatchesAddressesAndGrpcPeers) {
  Result<TrustedNetworks> t = TrustedNetworks::parse({"10.0.0.0/8", "192.168.4.0/22", "fd00::/8"});
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->contains_address("10.200.1.2"));
  EXPECT_TRUE(t->contains_address("192.168.7.255"));
  EXPECT_FALSE(t->contains_address("192.168.8.0"));
  EXPECT_FALSE(t->contains_address("11.0.0.1"));
  EXPECT_TRUE(t->contains_address("fd12::1"));
  EXPECT_FALSE(t->contains_address("fe80::1"));
  // A v4-mapped address is its IPv4 address (a dual-stack listener reports them).
  EXPECT_TRUE(t->contains_address("::ffff:10.0.0.9"));
  EXPECT_TRUE(t->contains_grpc_peer("ipv4:10.1.2.3:50051"));
  EXPECT_TRUE(t->contains_grpc_peer("ipv6:[fd00::2]:50051"));
  EXPECT_TRUE(t->contains_grpc_peer("ipv6:[::ffff:10.1.2.3]:50051"));
  EXPECT_FALSE(t->contains_grpc_peer("ipv4:172.16.0.1:50051"));
  EXPECT_FALSE(t->contains_grpc_peer("unix:/run/vmctld.sock"));
  EXPECT_FALSE(t->contains_grpc_peer("fd:7"));
  EXPECT_FALSE(t->contains_grpc_peer("ipv4:10.1.2.3"));  // no port: malformed
  EXPECT_TRUE(t->contains_host("10.4.4.4"));
  EXPECT_FALSE(t->contains_host("127.0.0.1"));
  EXPECT_FALSE(t->contains_host("no-such-host.invalid"));
}

TEST(TrustedNetworks, EmptyTrustsNothing) {
  TrustedNetworks none;
  EXPECT_TRUE(none.empty());
  EXPECT_FALSE(none.contains_address("127.0.0.1"));
  EXPECT_FALSE(none.contains_host("127.0.0.1"));
  EXPECT_EQ(none.describe(), "none");
}

TEST(TrustedNetworks, ConfigurationSection) {
  Result<DaemonConfig> c =
      parse_daemon_config("[migration]\ntrusted_networks = [\"10.0.0.0/8\", \"::1/128\"]\n", "t");
  ASSERT_TRUE(c.ok()) << c.error().message();
  EXPECT_EQ(c->trusted_networks.size(), 2u);
  Result<DaemonConfig> bad =
      parse_daemon_config("[migration]\ntrusted_networks = [\"10.0.0.1/8\"]\n", "t.toml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("t.toml:2"), std::string::npos) << bad.error().message();
  EXPECT_NE(bad.error().message().find("trusted_networks"), std::string::npos);
  Result<DaemonConfig> unknown = parse_daemon_config("[migration]\ntrusted = true\n", "t.toml");
  EXPECT_FALSE(unknown.ok());
  Result<DaemonConfig> none = parse_daemon_config("", "t");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->trusted_networks.empty());
}

}  // namespace
}  // namespace vmctl::daemon
