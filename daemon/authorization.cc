#include "daemon/authorization.h"

#include <pwd.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "base/text.h"

namespace vmctl::daemon {
namespace {

// The one table of who may call what. Anything not listed is denied.
const std::map<std::string, Roles>& rpc_table() {
  static const std::map<std::string, Roles> table = {
      {"ListVms", kRoleViewer | kRoleOperator},
      {"GetVm", kRoleViewer | kRoleOperator},
      {"WatchVm", kRoleViewer | kRoleOperator},
      {"GetHostInfo", kRoleViewer | kRoleOperator | kRoleMigrationPeer},
      {"CreateVm", kRoleOperator},
      {"StartVm", kRoleOperator},
      {"PauseVm", kRoleOperator},
      {"ResumeVm", kRoleOperator},
      {"StopVm", kRoleOperator},
      {"DeleteVm", kRoleOperator},
      {"SendConsole", kRoleOperator},
      {"Snapshot", kRoleOperator},
      {"Restore", kRoleOperator},
      {"Migrate", kRoleOperator},
      {"CancelMigration", kRoleOperator},
      {"RecoverMigration", kRoleOperator},
      // MigrationReceiver: what a source daemon calls here.
      {"Control", kRoleMigrationPeer},
      {"Receive", kRoleMigrationPeer},
      {"Resolve", kRoleMigrationPeer},
  };
  return table;
}

Status validate_identity(const std::string& identity) {
  if (identity.rfind("uid:", 0) == 0) {
    std::string n = identity.substr(4);
    if (!n.empty() && n.size() < 11 && n.find_first_not_of("0123456789") == std::string::npos) {
      return ok_status();
    }
  } else if (identity.rfind("tls:", 0) == 0 && identity.size() > 4) {
    return ok_status();
  }
  return Error::user(fmt::format(
      "identity '{}': expected uid:N, user:NAME, tls:NAME (a certificate's common name or "
      "subject alternative name) or tls:*",
      sanitize_text(identity)));
}

}  // namespace

Result<Roles> parse_role(const std::string& name) {
  if (name == "operator") return kRoleOperator;
  if (name == "viewer") return kRoleViewer;
  if (name == "migration-peer") return kRoleMigrationPeer;
  return Error::user(
      fmt::format("unknown role '{}': the roles are operator, viewer and "
                  "migration-peer",
                  sanitize_text(name)));
}

std::string format_roles(Roles roles) {
  std::vector<std::string> names;
  if (roles & kRoleOperator) names.push_back("operator");
  if (roles & kRoleViewer) names.push_back("viewer");
  if (roles & kRoleMigrationPeer) names.push_back("migration-peer");
  return names.empty() ? "no role" : fmt::format("{}", fmt::join(names, ", "));
}

Roles roles_allowed(const std::string& rpc) {
  auto it = rpc_table().find(rpc);
  return it == rpc_table().end() ? kRoleNone : it->second;
}

void PeerCredentials::add(int fd, const Peer& peer) {
  std::lock_guard lock(mu_);
  by_fd_[fd] = peer;
}

bool PeerCredentials::find(const std::string& grpc_peer, Peer* out) const {
  if (grpc_peer.rfind("fd:", 0) != 0) return false;
  int fd = std::atoi(grpc_peer.c_str() + 3);
  std::lock_guard lock(mu_);
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return false;
  *out = it->second;
  return true;
}

Authorizer Authorizer::defaults() {
  Authorizer a;
  // A local migration's source daemon calls in on the unix socket as root or as this user.
  a.grants_["uid:0"] = kRoleOperator | kRoleMigrationPeer;
  a.grants_[fmt::format("uid:{}", ::geteuid())] = kRoleOperator | kRoleMigrationPeer;
  a.grants_["tls:*"] = kRoleMigrationPeer;
  return a;
}

Result<Authorizer> Authorizer::from_grants(const std::map<std::string, Roles>& grants) {
  Authorizer a;
  for (const auto& [identity, roles] : grants) {
    std::string id = identity;
    if (id.rfind("user:", 0) == 0) {
      struct passwd* pw = ::getpwnam(id.substr(5).c_str());
      if (!pw) {
        return Error::user(
            fmt::format("identity '{}': no such user on this host", sanitize_text(identity)));
      }
      id = fmt::format("uid:{}", pw->pw_uid);
    }
    TRY(validate_identity(id));
    a.grants_[id] |= roles;
  }
  return a;
}

Roles Authorizer::roles_of(const std::vector<std::string>& identities) const {
  Roles roles = kRoleNone;
  for (const std::string& id : identities) {
    if (auto it = grants_.find(id); it != grants_.end()) roles |= it->second;
  }
  return roles;
}

std::vector<std::string> Authorizer::identities(grpc::ServerContext* context,
                                                std::string* who) const {
  std::vector<std::string> ids;
  std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (auth && auth->IsPeerAuthenticated()) {
    // Only a certificate the CA signed gets here (the TCP listener requires and verifies one).
    std::vector<std::string> names;
    for (const char* property : {GRPC_X509_CN_PROPERTY_NAME, GRPC_X509_SAN_PROPERTY_NAME}) {
      for (const grpc::string_ref& v : auth->FindPropertyValues(property)) {
        names.emplace_back(v.data(), v.size());
      }
    }
    ids.push_back("tls:*");
    for (const std::string& n : names) ids.push_back("tls:" + n);
    *who =
        fmt::format("certificate {} from {}",
                    names.empty() ? "(no names)" : sanitize_text(names.front()), context->peer());
    return ids;
  }
  PeerCredentials::Peer peer;
  if (peers_ && peers_->find(context->peer(), &peer)) {
    ids.push_back(fmt::format("uid:{}", peer.uid));
    *who = fmt::format("uid {} (pid {}) on the unix socket", peer.uid, peer.pid);
    return ids;
  }
  *who = fmt::format("unidentified peer {}", context->peer());
  return ids;
}

grpc::Status Authorizer::check(grpc::ServerContext* context, const char* rpc) const {
  std::string who;
  Roles roles = roles_of(identities(context, &who));
  Roles allowed = roles_allowed(rpc);
  if (roles & allowed) return grpc::Status::OK;
  spdlog::warn("denied {} to {} ({})", rpc, who, format_roles(roles));
  return grpc::Status(
      grpc::StatusCode::PERMISSION_DENIED,
      allowed == kRoleNone
          ? fmt::format("{} is not an RPC this daemon allows anyone to call", rpc)
          : fmt::format("{} may not call {} (it has {}; {} needs {}): grant it a role in "
                        "[roles] of vmctld's --config",
                        who, rpc, format_roles(roles), rpc, format_roles(allowed)));
}

}  // namespace vmctl::daemon
