#include "migrate/data_listener.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <capnp/message.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "base/text.h"
#include "migrate/data_hello.h"
#include "migrate/data_proof.h"
#include "state/page_runs.h"
#include "state/stream.h"

namespace vmctl::migrate {
namespace {

std::string peer_name(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN + 8] = {0};
  char port[16] = {0};
  if (addr.ss_family == AF_UNIX) return "a local process";
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&addr), sizeof addr, host, sizeof host, port,
                    sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "an unknown peer";
  }
  return fmt::format("{}:{}", host, port);
}

// A stranger may connect and say nothing: the handshake and the hello get this long each.
constexpr std::chrono::seconds kHelloTimeout{5};

}  // namespace

Result<std::unique_ptr<DataListener>> DataListener::listen_tcp(const std::string& host,
                                                               const TlsConfig& tls,
                                                               bool plaintext) {
  std::unique_ptr<DataListener> l(new DataListener());
  l->plaintext_ = plaintext;
  if (!plaintext) l->tls_ = TRY(TlsContext::create(tls, /*server=*/true));
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), "0", &hints, &found);
  if (rc != 0) {
    return Error::user(
        fmt::format("data listener on {}: {}", sanitize_text(host, 100), ::gai_strerror(rc)));
  }
  int err = 0;
  for (addrinfo* a = found; a && !l->fd_.valid(); a = a->ai_next) {
    Fd s(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!s.valid() || ::bind(s.get(), a->ai_addr, a->ai_addrlen) != 0 ||
        ::listen(s.get(), 32) != 0) {
      err = errno;
      continue;
    }
    l->fd_ = std::move(s);
  }
  ::freeaddrinfo(found);
  if (!l->fd_.valid()) {
    return Error::from_errno(fmt::format("listening for data connections on {}", host), err);
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  ::getsockname(l->fd_.get(), reinterpret_cast<sockaddr*>(&bound), &len);
  l->port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                               : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  l->wake_ = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  return l;
}

Result<std::unique_ptr<DataListener>> DataListener::listen_unix(const std::string& path) {
  std::unique_ptr<DataListener> l(new DataListener());
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return Error::user(
        fmt::format("data socket path {} is too long for a unix socket", sanitize_text(path, 200)));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  l->fd_ = Fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!l->fd_.valid()) return Error::from_errno("socket(AF_UNIX)", errno);
  ::unlink(path.c_str());
  // Only this host's root (the daemons and their VM processes) may connect.
  mode_t old = ::umask(077);
  int rc = ::bind(l->fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int err = errno;
  ::umask(old);
  if (rc != 0) return Error::from_errno(fmt::format("binding data socket {}", path), err);
  l->unix_path_ = path;
  if (::listen(l->fd_.get(), 32) != 0) {
    return Error::from_errno(fmt::format("listening on data socket {}", path), errno);
  }
  l->wake_ = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  return l;
}

DataListener::~DataListener() {
  if (!unix_path_.empty()) ::unlink(unix_path_.c_str());
}

std::string DataListener::announcement() const {
  return unix_path_.empty() ? fmt::format("tcp {}", port_) : "unix " + unix_path_;
}

void DataListener::stop() {
  uint64_t one = 1;
  if (wake_.valid()) (void)!::write(wake_.get(), &one, sizeof one);
}

Result<std::vector<std::unique_ptr<DataConnection>>> DataListener::accept_all(
    const std::string& id, const std::string& secret, unsigned count,
    std::chrono::steady_clock::time_point deadline) {
  std::vector<std::unique_ptr<DataConnection>> joined(count);
  unsigned have = 0;
  while (have < count) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Error::user(fmt::format("{} of {} data connections of migration {} arrived in time",
                                     have, count, id));
    }
    pollfd p[2] = {{fd_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    int r = ::poll(p, 2, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (r < 0 && errno != EINTR) return Error::from_errno("poll (data listener)", errno);
    if (p[1].revents) return Error::user("the migration ended before its data connections came");
    if (r <= 0 || !(p[0].revents & POLLIN)) continue;
    sockaddr_storage from{};
    socklen_t len = sizeof from;
    Fd s(::accept4(fd_.get(), reinterpret_cast<sockaddr*>(&from), &len, SOCK_CLOEXEC));
    if (!s.valid()) continue;
    std::string peer = peer_name(from);
    timeval tv{static_cast<time_t>(kHelloTimeout.count()), 0};
    ::setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    Result<std::unique_ptr<DataConnection>> conn =
        DataConnection::accept(std::move(s), tls_, peer, plaintext_);
    if (!conn.ok()) {
      spdlog::warn("migration {}: refused a data connection: {}", id, conn.error().message());
      continue;
    }
    auto refuse = [&](const std::string& why) {
      spdlog::warn("migration {}: refused a data connection from {}: {}", id, peer, why);
      (void)(*conn)->write_line("REFUSED " + why);
    };
    Result<DataHello> hello = admit(**conn, id, secret, count);
    if (!hello.ok()) {
      refuse(hello.error().message());
      continue;
    }
    if (joined[hello->index]) {
      refuse(fmt::format("data connection {} has joined already", hello->index));
      continue;
    }
    // From here reads wait as long as the source needs (its deadlines and the daemon's rule).
    (*conn)->clear_read_timeout();
    TRY((*conn)->write_line("OK"));
    joined[hello->index] = std::move(conn).value();
    ++have;
  }
  return joined;
}

Result<DataHello> DataListener::admit(DataConnection& conn, const std::string& id,
                                      const std::string& secret, unsigned count) {
  std::string line = TRY(conn.read_line(kHelloMaxBytes));
  DataHello hello = TRY(parse_hello(line));
  const unsigned version = plaintext_ ? 2 : 1;
  if (hello.version != version) {
    return Error::user(fmt::format(
        "this destination takes version {} hellos ({}), not version {}: the two daemons do not "
        "agree on the data connections' protection",
        version, plaintext_ ? "plaintext, trusted network" : "TLS or unix socket", hello.version));
  }
  // The same answer for a wrong id and a wrong secret: a connection without the secret learns
  // nothing. On plaintext the proof is the secret's test; a stranger still gets a challenge
  // (with a proof made from a secret of its own), so that a wrong id looks like a wrong secret.
  const bool known = hello.migration_id == id;
  if (version == 1) {
    if (!known || !same_text(hello.secret, secret)) {
      return Error::user("no such migration here, or the wrong secret");
    }
  } else {
    const std::string key = known ? secret : make_nonce();
    const std::string destination_nonce = make_nonce();
    TRY(conn.write_line(fmt::format("CHALLENGE {} {}", destination_nonce,
                                    hello_proof(key, kDestinationRole, hello, destination_nonce))));
    std::string answer = TRY(conn.read_line(kHelloMaxBytes));
    const std::string expected = "PROOF " + hello_proof(key, kSourceRole, hello, destination_nonce);
    if (!known || !same_text(answer, expected)) {
      return Error::user("no such migration here, or the wrong secret");
    }
  }
  if (hello.count != count) {
    return Error::user(fmt::format("the migration was offered with {} data connections, not {}",
                                   count, hello.count));
  }
  return hello;
}

PageLaneReaders::PageLaneReaders(std::vector<std::unique_ptr<DataConnection>> lanes,
                                 vmm::GuestMemory& memory, std::string name,
                                 std::function<void()> on_failure)
    : lanes_(std::move(lanes)),
      memory_(memory),
      name_(std::move(name)),
      on_failure_(std::move(on_failure)) {
  for (size_t i = 0; i < lanes_.size(); ++i) threads_.emplace_back([this, i] { read_lane(i); });
}

PageLaneReaders::~PageLaneReaders() {
  abort();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void PageLaneReaders::abort() {
  for (auto& lane : lanes_) lane->shut_down();
}

void PageLaneReaders::read_lane(size_t index) {
  std::string name = fmt::format("{}, data connection {}", name_, index + 1);
  state::RecordReader reader(*lanes_[index], name);
  reader.set_authenticated_transport(lanes_[index]->authenticated());
  reader.set_guest_memory_size(memory_.ram_size());
  uint64_t pages = 0;
  auto run = [&]() -> Status {
    while (true) {
      std::optional<state::Record> record = TRY(reader.next());
      if (!record) {
        return Error::user(fmt::format("{}: truncated: it ends without its trailer", name));
      }
      if (record->type == state::RecordType::PAGE_RUNS) {
        pages += TRY(state::apply_page_runs(reader, *record, memory_));
        continue;
      }
      if (record->type != state::RecordType::TRAILER) {
        return Error::user(fmt::format("{}: a {} record where only page runs may come: corrupt",
                                       name, state::record_type_name(record->type)));
      }
      try {
        auto msg = record->message();
        auto trailer = msg->getRoot<proto::state::Trailer>();
        uint64_t before = reader.records_read() - 1;
        if (trailer.getRecordCount() != before || trailer.getMemoryPages() != pages) {
          return Error::user(fmt::format(
              "{}: its trailer counts {} records and {} pages, but {} and {} arrived: records "
              "were lost",
              name, trailer.getRecordCount(), trailer.getMemoryPages(), before, pages));
        }
      } catch (const kj::Exception& e) {
        return Error::user(fmt::format("{}: malformed trailer: {}", name,
                                       sanitize_text(e.getDescription().cStr())));
      }
      return ok_status();
    }
  };
  Status done = run();
  bool first = false;
  {
    std::lock_guard lock(mu_);
    if (done.ok()) {
      pages_ += pages;
    } else if (!failure_) {
      failure_ = std::move(done).error();
      first = true;
    }
  }
  if (first) {
    abort();
    if (on_failure_) on_failure_();
  }
}

Result<uint64_t> PageLaneReaders::wait() {
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  std::lock_guard lock(mu_);
  if (failure_) return *failure_;
  return pages_;
}

std::optional<Error> PageLaneReaders::failure() {
  std::lock_guard lock(mu_);
  return failure_;
}

}  // namespace vmctl::migrate
