// One data connection of a migration, between the source VM process and the destination VM
// process (migrate/data_plane.md): a TCP socket with mutual TLS (OpenSSL, TLS 1.3 AES-GCM), a
// plaintext TCP socket on a network both daemons trust, or a unix socket on one host, which its
// file permissions guard. Pages and records go through it
// without gRPC, protobuf or the daemons in the way.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <memory>
#include <string>

#include "base/error.h"
#include "base/fd.h"
#include "migrate/channel.h"
#include "state/stream.h"

struct ssl_ctx_st;  // <openssl/ssl.h>
struct ssl_st;

namespace vmctl::migrate {

// An OpenSSL context for one side: this side's certificate and key, and the CA the peer's
// certificate must chain to (both sides present one: mutual TLS).
class TlsContext {
 public:
  static Result<std::shared_ptr<TlsContext>> create(const TlsConfig& tls, bool server);
  ~TlsContext();
  ssl_ctx_st* get() const { return ctx_; }

 private:
  explicit TlsContext(ssl_ctx_st* ctx) : ctx_(ctx) {}
  ssl_ctx_st* ctx_;
};

class DataConnection final : public state::ByteSink, public state::ByteSource {
 public:
  // `endpoint`: unix:/path or host:port. With `tls` the handshake runs before this returns; TCP
  // needs `tls` unless `trusted_network` (the daemons agreed on plaintext). Writes that make no
  // progress for `stall_timeout` fail (a stalled peer).
  static Result<std::unique_ptr<DataConnection>> connect(const std::string& endpoint,
                                                         std::shared_ptr<TlsContext> tls,
                                                         std::chrono::milliseconds stall_timeout,
                                                         bool trusted_network = false);
  // An accepted socket; with `tls`, the server side of the handshake.
  static Result<std::unique_ptr<DataConnection>> accept(Fd socket, std::shared_ptr<TlsContext> tls,
                                                        std::string peer,
                                                        bool trusted_network = false);
  ~DataConnection() override;

  Status write(const void* data, size_t len) override;
  // Gathers `iov` into as few system calls as the transport allows.
  Status writev(const struct iovec* iov, int count) override;
  Result<size_t> read(void* data, size_t len) override;

  // One text line (the hello of data_plane.md), at most `max` bytes.
  Result<std::string> read_line(size_t max);
  Status write_line(const std::string& line);

  // Whether page payloads may rest on the transport (kFramePayloadByTransport): TLS
  // authenticates every byte it carries; on a trusted network the operator said the network
  // delivers what was sent (TCP's checksums, as with QEMU's plain migration), and hashing the
  // pages would need a copy of each (the guest writes them while they go out).
  bool authenticated() const { return ssl_ != nullptr || trusted_network_; }
  bool tls() const { return ssl_ != nullptr; }
  const std::string& peer() const { return peer_; }
  // Reads wait without a limit from now on (the accepting side set one for the hello).
  void clear_read_timeout();
  // From any thread: every blocked or later read and write fails at once (abort, cancel).
  void shut_down();

 private:
  DataConnection(Fd fd, std::shared_ptr<TlsContext> tls, std::string peer, bool trusted_network)
      : fd_(std::move(fd)),
        tls_(std::move(tls)),
        peer_(std::move(peer)),
        trusted_network_(trusted_network) {}
  Status handshake(bool server);
  Error io_error(const char* what, int ssl_result);

  Fd fd_;
  std::shared_ptr<TlsContext> tls_;
  ssl_st* ssl_ = nullptr;
  std::string peer_;
  bool trusted_network_ = false;
};

// Splits "unix:/path", "/path" or "host:port" ("[v6]:port").
struct Endpoint {
  bool unix_socket = false;
  std::string path;  // unix
  std::string host;  // tcp
  std::string port;
};
Result<Endpoint> parse_endpoint(const std::string& endpoint);

// Where the source VM process connects, from the destination daemon's address (how the source
// reached it) and the receiving VM process's announcement in ACCEPTED ("tcp PORT": the same host,
// that port; "unix PATH": that socket).
Result<std::string> data_endpoint_for(const std::string& daemon_address,
                                      const std::string& announcement);

}  // namespace vmctl::migrate
