// vmctld's configuration file (--config, TOML, e.g. /etc/vmctl/vmctld.toml): who may do what,
// which paths callers may name, and who may reach the unix socket. Written down in
// daemon/config.md with an example; every section is optional and an absent one keeps the
// default named there.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "daemon/authorization.h"

namespace vmctl::daemon {

// [sandbox]: how VM processes are confined (vmprocess/jail.h, vmprocess/seccomp_filter.h).
struct SandboxConfig {
  bool jail = true;                 // own PID and mount namespace, pivot_root, capabilities
  std::string seccomp = "enforce";  // enforce, log or off
  std::string user;                 // "" = the daemon's user
  uid_t uid = 0;
  gid_t gid = 0;
};

struct DaemonConfig {
  // [roles]: identity -> roles; nullopt: Authorizer::defaults().
  std::optional<std::map<std::string, Roles>> grants;
  // [paths] allowed / migration_sockets; nullopt: every path.
  std::optional<std::vector<std::string>> allowed_paths;
  std::optional<std::vector<std::string>> migration_sockets;
  // [socket]
  mode_t socket_mode = 0600;
  std::optional<gid_t> socket_group;
  SandboxConfig sandbox;
  // [migration] trusted_networks: CIDR blocks whose peers may get plaintext data connections
  // (validated, daemon/trusted_networks.h); empty: every data connection over TCP uses TLS.
  std::vector<std::string> trusted_networks;
};

// Parses the file; errors name the file, the line and the key.
Result<DaemonConfig> load_daemon_config(const std::string& path);
Result<DaemonConfig> parse_daemon_config(const std::string& text, const std::string& name);

}  // namespace vmctl::daemon
