// Who may call which RPC. A caller is identified by how it reached the daemon: on the unix socket
// by the peer's uid (SO_PEERCRED, taken when the connection is accepted: daemon/unix_listener.h),
// over TCP by its client certificate (common name and subject alternative names; the CA already
// vouched for it). Identities map to roles in the daemon's configuration (daemon/config.h), roles
// to RPCs in one table (authorization.cc). An RPC the table does not name is denied to everyone,
// and every denial is logged with who asked.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "base/error.h"

namespace vmctl::daemon {

// Bit set of roles.
using Roles = uint8_t;
inline constexpr Roles kRoleNone = 0;
inline constexpr Roles kRoleViewer = 1;         // list, info, watch, host info
inline constexpr Roles kRoleOperator = 2;       // every Vmctl RPC
inline constexpr Roles kRoleMigrationPeer = 4;  // MigrationReceiver: a daemon sending a VM here

// "operator", "viewer", "migration-peer".
Result<Roles> parse_role(const std::string& name);
std::string format_roles(Roles roles);

// The credentials of the processes connected to the daemon's unix socket, by the connection's fd
// (gRPC names such a peer "fd:N").
class PeerCredentials {
 public:
  struct Peer {
    uid_t uid = 0;
    gid_t gid = 0;
    pid_t pid = 0;
  };
  void add(int fd, const Peer& peer);
  bool find(const std::string& grpc_peer, Peer* out) const;

 private:
  mutable std::mutex mu_;
  std::map<int, Peer> by_fd_;  // a closed fd's number is reused by the next accept: overwritten
};

// Identity strings: "uid:N" (unix socket), "tls:NAME" (a certificate with that CN or SAN),
// "tls:*" (any certificate the CA signed). "user:NAME" is resolved to "uid:N" when loaded.
class Authorizer {
 public:
  // The defaults of a daemon without a [roles] section: root and the daemon's own user are
  // operators and migration peers on the unix socket, every certificate the CA signed is a
  // migration peer (remote control over TLS needs a [roles] entry).
  static Authorizer defaults();
  // `grants`: identity -> roles. Identities are checked here.
  static Result<Authorizer> from_grants(const std::map<std::string, Roles>& grants);

  void set_peer_credentials(const PeerCredentials* peers) { peers_ = peers; }

  // OK, or PERMISSION_DENIED naming the caller, its roles and what would allow it. `rpc` is the
  // method's name as in vmctl.proto ("CreateVm", "Control").
  grpc::Status check(grpc::ServerContext* context, const char* rpc) const;

  // The caller's identity strings and roles (tests, logs).
  Roles roles_of(const std::vector<std::string>& identities) const;
  const std::map<std::string, Roles>& grants() const { return grants_; }

 private:
  std::vector<std::string> identities(grpc::ServerContext* context, std::string* who) const;

  std::map<std::string, Roles> grants_;
  const PeerCredentials* peers_ = nullptr;
};

// The roles that may call `rpc`; kRoleNone for an RPC the table does not know.
Roles roles_allowed(const std::string& rpc);

}  // namespace vmctl::daemon
