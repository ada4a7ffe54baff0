// Plaintext data connections (a trusted network, migrate/data_plane.md): over real loopback TCP,
// the source and the destination prove the migration's secret to each other without sending it,
// and neither side goes on with a peer that cannot.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "base/fd.h"
#include "migrate/data_hello.h"
#include "migrate/data_lanes.h"
#include "migrate/data_listener.h"
#include "migrate/data_proof.h"

namespace vmctl::migrate {
namespace {

using namespace std::chrono_literals;

const std::string kId = "0123456789abcdef0123456789abcdef";
const std::string kSecret = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";

std::string endpoint_of(const DataListener& l) {
  Result<std::string> e = data_endpoint_for("127.0.0.1:1", l.announcement());
  EXPECT_TRUE(e.ok());
  return e.ok() ? *e : "";
}

DataLaneOptions source(const std::string& endpoint, const std::string& secret, unsigned count) {
  DataLaneOptions o;
  o.endpoint = endpoint;
  o.migration_id = kId;
  o.secret = secret;
  o.count = count;
  o.plaintext = true;
  o.stall_timeout = 5000ms;
  return o;
}

// A TCP listener on loopback that plays a destination by hand.
struct FakeDestination {
  Fd listener;
  uint16_t port = 0;
  FakeDestination() {
    listener = Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listener.get(), 4), 0);
    socklen_t len = sizeof a;
    ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port); }
};

// A bare TCP connection to the listener, to speak the hello by hand.
Fd raw_connection(const DataListener& l) {
  Result<Endpoint> e = parse_endpoint(endpoint_of(l));
  if (!e.ok()) return Fd();
  Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::stoi(e->port)));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return Fd();
  return s;
}

std::string read_line(int fd) {
  std::string line;
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}
void write_line(int fd, const std::string& line) {
  std::string text = line + "\n";
  ASSERT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
}

// A plaintext listener on loopback accepting `count` connections of the test migration, on a
// thread of its own, until `wait` has passed.
struct PlaintextDestination {
  PlaintextDestination(unsigned count, std::chrono::seconds wait) {
    Result<std::unique_ptr<DataListener>> made = DataListener::listen_tcp("127.0.0.1", {}, true);
    if (!made.ok()) {
      error = made.error().message();
      return;
    }
    listener = std::move(made).value();
    joined = std::async(std::launch::async, [this, count, wait] {
      return listener->accept_all(kId, kSecret, count, std::chrono::steady_clock::now() + wait);
    });
  }
  std::unique_ptr<DataListener> listener;
  std::string error;
  std::future<Result<std::vector<std::unique_ptr<DataConnection>>>> joined;
};

TEST(PlaintextDataConnections, BothSidesProveTheSecretAndEveryConnectionJoins) {
  PlaintextDestination d(3, 10s);
  ASSERT_TRUE(d.listener) << d.error;
  DataListener& l = *d.listener;
  auto& joined = d.joined;
  Result<std::unique_ptr<DataLanes>> lanes = DataLanes::connect(source(endpoint_of(l), kSecret, 3));
  ASSERT_TRUE(lanes.ok()) << lanes.error().message();
  EXPECT_EQ((*lanes)->count(), 3u);
  EXPECT_TRUE((*lanes)->authenticated());
  auto accepted = joined.get();
  ASSERT_TRUE(accepted.ok()) << accepted.error().message();
  ASSERT_EQ(accepted->size(), 3u);
  for (auto& c : *accepted) {
    EXPECT_FALSE(c->tls());
    EXPECT_TRUE(c->authenticated());  // the operator trusts the network with the page bytes
  }
}

TEST(PlaintextDataConnections, AWrongSecretIsRefusedAndTheRightOneStillJoins) {
  PlaintextDestination d(1, 10s);
  ASSERT_TRUE(d.listener) << d.error;
  DataListener& l = *d.listener;
  auto& joined = d.joined;
  std::string wrong = kSecret;
  wrong[0] = '6';
  Result<std::unique_ptr<DataLanes>> impostor =
      DataLanes::connect(source(endpoint_of(l), wrong, 1));
  ASSERT_FALSE(impostor.ok());
  // A source with the wrong secret cannot even tell a real destination from a fake one.
  EXPECT_NE(impostor.error().message().find("could not prove"), std::string::npos)
      << impostor.error().message();
  Result<std::unique_ptr<DataLanes>> real = DataLanes::connect(source(endpoint_of(l), kSecret, 1));
  ASSERT_TRUE(real.ok()) << real.error().message();
  ASSERT_TRUE(joined.get().ok());
}

TEST(PlaintextDataConnections, AStrangerWhoAnswersTheChallengeWronglyIsRefused) {
  PlaintextDestination d(1, 2s);
  ASSERT_TRUE(d.listener) << d.error;
  DataListener& l = *d.listener;
  auto& joined = d.joined;
  Fd s = raw_connection(l);
  ASSERT_TRUE(s.valid());
  DataHello hello;
  hello.version = 2;
  hello.migration_id = kId;
  hello.nonce = make_nonce();
  hello.count = 1;
  write_line(s.get(), format_hello(hello));
  EXPECT_EQ(read_line(s.get()).rfind("CHALLENGE ", 0), 0u);
  write_line(s.get(), "PROOF " + std::string(64, '0'));
  EXPECT_EQ(read_line(s.get()), "REFUSED no such migration here, or the wrong secret");
  // It did not take the connection's place: nothing joined.
  auto accepted = joined.get();
  EXPECT_FALSE(accepted.ok());
}

TEST(PlaintextDataConnections, TheSecretItselfIsRefusedOnAPlaintextListener) {
  // A source that would send the secret in the clear (version 1) is refused: on plaintext the
  // secret must never be on the wire, so a version-1 hello is a disagreement between daemons.
  PlaintextDestination d(1, 2s);
  ASSERT_TRUE(d.listener) << d.error;
  DataListener& l = *d.listener;
  auto& joined = d.joined;
  Fd s = raw_connection(l);
  ASSERT_TRUE(s.valid());
  DataHello v1;
  v1.migration_id = kId;
  v1.secret = kSecret;
  v1.count = 1;
  write_line(s.get(), format_hello(v1));
  std::string answer = read_line(s.get());
  EXPECT_EQ(answer.rfind("REFUSED ", 0), 0u) << answer;
  EXPECT_NE(answer.find("version 2"), std::string::npos) << answer;
  EXPECT_FALSE(joined.get().ok());
}

TEST(PlaintextDataConnections, TheSourceSendsNothingToADestinationThatCannotProveTheSecret) {
  for (const char* answer : {"OK", "CHALLENGE 00112233445566778899aabbccddeeff badproof"}) {
    FakeDestination fake;
    std::string hello_seen;
    std::thread peer([&] {
      Fd c(::accept4(fake.listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
      hello_seen = read_line(c.get());
      write_line(c.get(), answer);
      char rest[64];
      while (::read(c.get(), rest, sizeof rest) > 0) hello_seen += "+more";
    });
    Result<std::unique_ptr<DataLanes>> lanes =
        DataLanes::connect(source(fake.endpoint(), kSecret, 1));
    ASSERT_FALSE(lanes.ok()) << answer;
    EXPECT_NE(lanes.error().message().find("secret"), std::string::npos) << lanes.error().message();
    lanes = Error::user("closed");  // closes the connection: the fake's read ends
    peer.join();
    EXPECT_EQ(hello_seen.find(kSecret), std::string::npos) << hello_seen;
    EXPECT_EQ(hello_seen.find("+more"), std::string::npos)
        << "the source sent more: " << hello_seen;
    EXPECT_EQ(hello_seen.rfind("VMCTL-DATA 2 " + kId + " ", 0), 0u) << hello_seen;
  }
}

}  // namespace
}  // namespace vmctl::migrate
