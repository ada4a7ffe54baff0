// The destination daemon's side of live migration (migrate/protocol.md): it accepts offers,
// starts the receiving VM process (which takes the data connections itself), and DECIDES each
// migration's outcome: COMMITTED (then RESUMED) on SWITCHOVER, DISCARDED on anything else before
// it. Every decision is in the journal before it takes effect.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/fd.h"
#include "daemon/trusted_networks.h"
#include "daemon/vm_manager.h"
#include "migrate/channel.h"
#include "migrate/journal.h"
#include "proto/vmctl.grpc.pb.h"

namespace vmctl::daemon {

// Where the receiving VM processes take their data connections (migrate/data_plane.md).
struct IncomingDataPlane {
  std::string listen_host;  // from --listen: TCP with the daemon's TLS identity; empty: none
  migrate::TlsConfig tls;
  std::string socket_dir;  // unix sockets for local sources
  // Sources on these networks that ask for plaintext data connections get them.
  TrustedNetworks trusted;
};

struct IncomingLimits {
  unsigned max_concurrent = 4;                   // incoming migrations at once
  uint64_t max_guest_memory = 0;                 // 0: what the host has (MemTotal)
  std::chrono::seconds receive_timeout{900};     // ACCEPTED to READY
  std::chrono::seconds switchover_timeout{120};  // READY to SWITCHOVER
  IncomingDataPlane data;
};

class IncomingMigrations {
 public:
  IncomingMigrations(VmManager& vms, migrate::MigrationJournal& journal, IncomingLimits limits);
  ~IncomingMigrations();

  // At start, before serving: discards what had not been committed when the daemon stopped and
  // finishes what had (rule 5).
  void recover();

  grpc::Status control(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<v1::MigrationEvent, v1::MigrationControl>* stream);
  grpc::Status receive(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<v1::MigrationEvent, v1::MigrationChunk>* stream);
  grpc::Status resolve(const v1::ResolveRequest& request, v1::ResolveResponse* response);

  // The VM manager's exit listener: a receiving VM process ended.
  void process_ended(const std::string& vm, pid_t pid);

 private:
  struct Migration;
  using ControlStream = grpc::ServerReaderWriter<v1::MigrationEvent, v1::MigrationControl>;

  Result<std::shared_ptr<Migration>> accept(const v1::MigrationOffer& offer,
                                            grpc::ServerContext* context, ControlStream* stream);
  void read_verdict(std::shared_ptr<Migration> m);
  void watch_deadlines(std::shared_ptr<Migration> m);
  void switchover(Migration& m);
  // Decides DISCARDED (unless the migration is committed or over already); true if it did. The
  // VM process is cleaned up by whoever owns the migration afterwards (clean_up).
  bool discard(Migration& m, const std::string& why);
  void clean_up(Migration& m);
  void send(Migration& m, const v1::MigrationEvent& event);
  Status save(Migration& m);  // with m.mu held
  std::string data_socket_path(const std::string& id) const;
  std::shared_ptr<Migration> find(const std::string& id);
  void finish(std::shared_ptr<Migration> m);

  VmManager& vms_;
  migrate::MigrationJournal& journal_;
  IncomingLimits limits_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Migration>> migrations_;  // in flight, by id
};

}  // namespace vmctl::daemon
