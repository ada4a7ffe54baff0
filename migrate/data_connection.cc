#include "migrate/data_connection.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "base/text.h"

namespace vmctl::migrate {
namespace {

std::string openssl_errors() {
  std::string out;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no detail from OpenSSL" : out;
}

void set_timeouts(int fd, std::chrono::milliseconds timeout) {
  if (timeout.count() <= 0) return;
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// Big socket buffers keep a fast link full between two writes.
void tune(int fd, bool tcp) {
  int size = 4 << 20;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  if (tcp) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
}

}  // namespace

Result<Endpoint> parse_endpoint(const std::string& endpoint) {
  Endpoint e;
  if (endpoint.rfind("unix:", 0) == 0 || endpoint.rfind('/', 0) == 0) {
    e.unix_socket = true;
    e.path = endpoint.rfind("unix:", 0) == 0 ? endpoint.substr(5) : endpoint;
    if (e.path.empty() || e.path.size() >= sizeof(sockaddr_un::sun_path)) {
      return Error::user(fmt::format("data endpoint {}: not a usable unix socket path",
                                     sanitize_text(endpoint, 200)));
    }
    return e;
  }
  size_t colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == endpoint.size()) {
    return Error::user(fmt::format("data endpoint {}: expected host:port or unix:/path",
                                   sanitize_text(endpoint, 200)));
  }
  e.host = endpoint.substr(0, colon);
  e.port = endpoint.substr(colon + 1);
  if (e.host.size() > 2 && e.host.front() == '[' && e.host.back() == ']') {
    e.host = e.host.substr(1, e.host.size() - 2);
  }
  return e;
}

Result<std::string> data_endpoint_for(const std::string& daemon_address,
                                      const std::string& announcement) {
  std::string shown = sanitize_text(announcement, 200);
  if (announcement.rfind("unix ", 0) == 0 && announcement.size() > 6 && announcement[5] == '/') {
    return "unix:" + announcement.substr(5);
  }
  if (announcement.rfind("tcp ", 0) == 0) {
    std::string port = announcement.substr(4);
    bool digits = !port.empty() && port.size() <= 5 &&
                  port.find_first_not_of("0123456789") == std::string::npos;
    Endpoint daemon = TRY(parse_endpoint(daemon_address));
    if (!digits || daemon.unix_socket) {
      return Error::user(fmt::format(
          "the destination announced data endpoint \"{}\" for a daemon reached at {}: refused",
          shown, sanitize_text(daemon_address, 200)));
    }
    std::string host =
        daemon.host.find(':') != std::string::npos ? "[" + daemon.host + "]" : daemon.host;
    return host + ":" + port;
  }
  return Error::user(fmt::format(
      "the destination announced no usable data endpoint (\"{}\"): it may run an older vmctl; "
      "upgrade it",
      shown));
}

Result<std::shared_ptr<TlsContext>> TlsContext::create(const TlsConfig& tls, bool server) {
  if (!tls.complete()) {
    return Error::user("TLS on migration data connections needs a CA, a certificate and a key");
  }
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!ctx) return Error::failure("SSL_CTX_new: " + openssl_errors());
  std::shared_ptr<TlsContext> out(new TlsContext(ctx));
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  // AES-GCM first: every x86-64 host that runs KVM has AES-NI, where it is the fastest AEAD.
  SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384");
  SSL_CTX_set_mode(ctx, SSL_MODE_AUTO_RETRY);
  if (SSL_CTX_use_certificate_chain_file(ctx, tls.cert.c_str()) != 1) {
    return Error::user(fmt::format("TLS certificate {}: {}", tls.cert, openssl_errors()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, tls.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    return Error::user(fmt::format("TLS key {}: {}", tls.key, openssl_errors()));
  }
  if (SSL_CTX_load_verify_locations(ctx, tls.ca.c_str(), nullptr) != 1) {
    return Error::user(fmt::format("TLS CA {}: {}", tls.ca, openssl_errors()));
  }
  // Both sides prove who they are; the one-time secret in the hello then ties the connection
  // to one migration.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return out;
}

TlsContext::~TlsContext() {
  SSL_CTX_free(ctx_);
}

Result<std::unique_ptr<DataConnection>> DataConnection::connect(
    const std::string& endpoint, std::shared_ptr<TlsContext> tls,
    std::chrono::milliseconds stall_timeout, bool trusted_network) {
  // A peer that closes while we write must be an error, not a signal that ends the VM process.
  ::signal(SIGPIPE, SIG_IGN);
  Endpoint e = TRY(parse_endpoint(endpoint));
  Fd fd;
  std::string shown = sanitize_text(endpoint, 200);
  if (e.unix_socket) {
    fd = Fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return Error::from_errno("socket(AF_UNIX)", errno);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, e.path.c_str(), e.path.size());
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      return Error::from_errno(fmt::format("connecting the data connection to {}", shown), errno);
    }
    tune(fd.get(), false);
  } else {
    if (!tls && !trusted_network) {
      return Error::user("a TCP data connection needs TLS (--tls-ca/--tls-cert/--tls-key)");
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    int rc = ::getaddrinfo(e.host.c_str(), e.port.c_str(), &hints, &found);
    if (rc != 0) {
      return Error::user(fmt::format("data endpoint {}: {}", shown, ::gai_strerror(rc)));
    }
    int err = 0;
    for (addrinfo* a = found; a; a = a->ai_next) {
      Fd s(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
      if (!s.valid()) {
        err = errno;
        continue;
      }
      if (::connect(s.get(), a->ai_addr, a->ai_addrlen) == 0) {
        fd = std::move(s);
        break;
      }
      err = errno;
    }
    ::freeaddrinfo(found);
    if (!fd.valid()) {
      return Error::from_errno(fmt::format("connecting the data connection to {}", shown), err);
    }
    tune(fd.get(), true);
  }
  set_timeouts(fd.get(), stall_timeout);
  const bool plain_tcp = !e.unix_socket && !tls;
  std::unique_ptr<DataConnection> c(
      new DataConnection(std::move(fd), std::move(tls), shown, plain_tcp && trusted_network));
  if (c->tls_) TRY(c->handshake(/*server=*/false));
  return c;
}

Result<std::unique_ptr<DataConnection>> DataConnection::accept(Fd socket,
                                                               std::shared_ptr<TlsContext> tls,
                                                               std::string peer,
                                                               bool trusted_network) {
  ::signal(SIGPIPE, SIG_IGN);
  tune(socket.get(), tls != nullptr || trusted_network);
  const bool plain_tcp = !tls && trusted_network;
  std::unique_ptr<DataConnection> c(
      new DataConnection(std::move(socket), std::move(tls), std::move(peer), plain_tcp));
  if (c->tls_) TRY(c->handshake(/*server=*/true));
  return c;
}

DataConnection::~DataConnection() {
  if (ssl_) SSL_free(ssl_);
}

Status DataConnection::handshake(bool server) {
  ssl_ = SSL_new(tls_->get());
  if (!ssl_) return Error::failure("SSL_new: " + openssl_errors());
  SSL_set_fd(ssl_, fd_.get());
  int rc = server ? SSL_accept(ssl_) : SSL_connect(ssl_);
  if (rc != 1) {
    int why = SSL_get_error(ssl_, rc);
    std::string detail = openssl_errors();
    SSL_free(ssl_);
    ssl_ = nullptr;
    return Error::user(fmt::format("TLS handshake with {} failed ({}): {}", peer_, why, detail));
  }
  return ok_status();
}

Error DataConnection::io_error(const char* what, int ssl_result) {
  int err = errno;
  bool timed_out = err == EAGAIN || err == EWOULDBLOCK;
  bool closed = false;
  if (ssl_) {
    int why = SSL_get_error(ssl_, ssl_result);
    // The socket blocks with SO_SNDTIMEO/SO_RCVTIMEO: "want" on it means the timeout ran out.
    timed_out = why == SSL_ERROR_WANT_READ || why == SSL_ERROR_WANT_WRITE ||
                (why == SSL_ERROR_SYSCALL && timed_out);
    closed = why == SSL_ERROR_ZERO_RETURN ||
             (why == SSL_ERROR_SSL &&
              ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
    if (!timed_out && !closed && why != SSL_ERROR_SYSCALL) {
      return Error::failure(fmt::format("{} on the data connection to {}: TLS error {}: {}", what,
                                        peer_, why, openssl_errors()));
    }
    ERR_clear_error();
  }
  if (timed_out) {
    return Error::failure(fmt::format(
        "{} on the data connection to {}: the peer stalled (nothing moved within the stall "
        "timeout)",
        what, peer_));
  }
  if (closed || err == ECONNRESET || err == EPIPE) {
    // The source daemon tells this echo of its own failure from a real one by "broke".
    return Error::failure(
        fmt::format("{} on the data connection to {}: the connection broke", what, peer_));
  }
  return Error::from_errno(fmt::format("{} on the data connection to {}", what, peer_), err);
}

Status DataConnection::write(const void* data, size_t len) {
  iovec v{const_cast<void*>(data), len};
  return writev(&v, 1);
}

Status DataConnection::writev(const iovec* iov, int count) {
  if (ssl_) {
    for (int i = 0; i < count; ++i) {
      const uint8_t* p = static_cast<const uint8_t*>(iov[i].iov_base);
      size_t left = iov[i].iov_len;
      while (left > 0) {
        size_t done = 0;
        int rc = SSL_write_ex(ssl_, p, left, &done);
        if (rc != 1) return io_error("writing", rc);
        p += done;
        left -= done;
      }
    }
    return ok_status();
  }
  std::vector<iovec> rest(iov, iov + count);
  size_t at = 0;
  while (at < rest.size()) {
    msghdr msg{};
    msg.msg_iov = rest.data() + at;
    msg.msg_iovlen = std::min<size_t>(rest.size() - at, IOV_MAX);
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error("writing", 0);
    }
    size_t left = static_cast<size_t>(n);
    while (at < rest.size() && left >= rest[at].iov_len) {
      left -= rest[at].iov_len;
      ++at;
    }
    if (left > 0) {
      rest[at].iov_base = static_cast<uint8_t*>(rest[at].iov_base) + left;
      rest[at].iov_len -= left;
    }
  }
  return ok_status();
}

Result<size_t> DataConnection::read(void* data, size_t len) {
  uint8_t* p = static_cast<uint8_t*>(data);
  size_t got = 0;
  while (got < len) {
    if (ssl_) {
      size_t n = 0;
      int rc = SSL_read_ex(ssl_, p + got, len - got, &n);
      if (rc != 1) {
        int why = SSL_get_error(ssl_, rc);
        if (why == SSL_ERROR_ZERO_RETURN) break;  // the peer ended the connection cleanly
        if (why == SSL_ERROR_SYSCALL && errno == 0) break;
        return io_error("reading", rc);
      }
      got += n;
    } else {
      ssize_t n = ::recv(fd_.get(), p + got, len - got, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return io_error("reading", 0);
      }
      if (n == 0) break;
      got += static_cast<size_t>(n);
    }
  }
  return got;
}

Result<std::string> DataConnection::read_line(size_t max) {
  std::string line;
  while (line.size() < max) {
    char c;
    size_t n = TRY(read(&c, 1));
    if (n == 0) {
      return Error::user(fmt::format("the data connection from {} ended before its line", peer_));
    }
    if (c == '\n') return line;
    line += c;
  }
  return Error::user(
      fmt::format("the data connection from {} sent a line longer than {} bytes", peer_, max));
}

Status DataConnection::write_line(const std::string& line) {
  std::string text = line + "\n";
  return write(text.data(), text.size());
}

void DataConnection::clear_read_timeout() {
  timeval none{};
  ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
}

void DataConnection::shut_down() {
  if (fd_.valid()) ::shutdown(fd_.get(), SHUT_RDWR);
}

}  // namespace vmctl::migrate
