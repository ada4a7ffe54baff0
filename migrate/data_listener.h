// The destination VM process's side of the data plane (migrate/data_plane.md): it listens for the
// source VM process's data connections, admits those that present the migration's id and
// one-time secret (and, over TCP, a certificate of the migration CA), and reads the page runs of
// connections 1.. straight into guest memory while connection 0 feeds the restore.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/fd.h"
#include "migrate/channel.h"
#include "migrate/data_connection.h"
#include "migrate/data_hello.h"
#include "vmm/memory.h"

namespace vmctl::migrate {

class DataListener {
 public:
  // TCP on `host` (the kernel picks the port) with mutual TLS, or, with `plaintext` (both
  // daemons trust each other's network), without TLS: connections then prove the secret with
  // version 2 of the hello (data_hello.h) instead of sending it.
  static Result<std::unique_ptr<DataListener>> listen_tcp(const std::string& host,
                                                          const TlsConfig& tls,
                                                          bool plaintext = false);
  // A unix socket at `path` (mode 0600; removed again with the listener).
  static Result<std::unique_ptr<DataListener>> listen_unix(const std::string& path);
  ~DataListener();

  // What the daemon announces in ACCEPTED: "tcp <port>" or "unix <path>".
  std::string announcement() const;

  // Accepts connections until `count` have joined migration `id` with `secret`; a connection
  // with another id, the wrong secret, a bad hello or a repeated index is refused (and told
  // why) and the wait goes on. Fails at `deadline` or once stop() is called.
  Result<std::vector<std::unique_ptr<DataConnection>>> accept_all(
      const std::string& id, const std::string& secret, unsigned count,
      std::chrono::steady_clock::time_point deadline);
  // From any thread: accept_all returns at once.
  void stop();

 private:
  DataListener() = default;
  Fd fd_;
  Fd wake_;  // eventfd: stop()
  // One connection's hello (and on plaintext, the proofs); an error is the refusal's reason.
  Result<DataHello> admit(DataConnection& conn, const std::string& id, const std::string& secret,
                          unsigned count);

  std::shared_ptr<TlsContext> tls_;
  bool plaintext_ = false;
  std::string unix_path_;
  uint16_t port_ = 0;
};

// Connections 1.. of a migration: a thread each applies its page runs to guest memory and checks
// its trailer (its record and page counts).
class PageLaneReaders {
 public:
  // `on_failure` runs once, on the failing connection's thread (it ends connection 0 too).
  PageLaneReaders(std::vector<std::unique_ptr<DataConnection>> lanes, vmm::GuestMemory& memory,
                  std::string name, std::function<void()> on_failure);
  ~PageLaneReaders();

  // Waits until every connection has delivered its trailer: the pages they applied, or the first
  // connection's failure.
  Result<uint64_t> wait();
  // The first failure so far, if any (to report it instead of what it caused elsewhere).
  std::optional<Error> failure();
  // Ends every connection (the migration failed elsewhere).
  void abort();

 private:
  void read_lane(size_t index);

  std::vector<std::unique_ptr<DataConnection>> lanes_;
  vmm::GuestMemory& memory_;
  std::string name_;
  std::function<void()> on_failure_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::optional<Error> failure_;
  uint64_t pages_ = 0;
  bool joined_ = false;
};

}  // namespace vmctl::migrate
