#include "daemon/config.h"

#include <pwd.h>

#include <grp.h>

#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "base/text.h"
#include "daemon/trusted_networks.h"

namespace vmctl::daemon {
namespace {

std::string where(const std::string& name, const toml::node& node) {
  const toml::source_region& at = node.source();
  return fmt::format("{}:{}", name, at.begin.line);
}

Result<std::vector<std::string>> string_list(const std::string& name, const toml::table& table,
                                             const std::string& section, const std::string& key) {
  const toml::node* node = table.get(key);
  const toml::array* array = node ? node->as_array() : nullptr;
  if (!array) {
    return Error::user(fmt::format("{}: {}.{} must be a list of strings",
                                   node ? where(name, *node) : name, section, key));
  }
  std::vector<std::string> out;
  for (const toml::node& item : *array) {
    std::optional<std::string> s = item.value<std::string>();
    if (!s) {
      return Error::user(
          fmt::format("{}: {}.{}: every entry must be a string", where(name, item), section, key));
    }
    out.push_back(*s);
  }
  return out;
}

Status reject_unknown(const std::string& name, const toml::table& table, const std::string& section,
                      std::initializer_list<const char*> known) {
  for (const auto& [key, node] : table) {
    bool ok = false;
    for (const char* k : known) ok = ok || key.str() == k;
    if (!ok) {
      return Error::user(fmt::format("{}: unknown key '{}{}' (known: {})", where(name, node),
                                     section.empty() ? "" : section + ".", sanitize_text(key.str()),
                                     fmt::join(known, ", ")));
    }
  }
  return ok_status();
}

Status parse_roles(const std::string& name, const toml::table& roles, DaemonConfig& config) {
  std::map<std::string, Roles> grants;
  for (const auto& [key, node] : roles) {
    Result<Roles> role = parse_role(std::string(key.str()));
    if (!role.ok())
      return Error::user(fmt::format("{}: [roles] {}", where(name, node), role.error().message()));
    std::vector<std::string> ids = TRY(string_list(name, roles, "roles", std::string(key.str())));
    for (const std::string& id : ids) grants[id] |= *role;
  }
  config.grants = std::move(grants);
  return ok_status();
}

Status parse_socket(const std::string& name, const toml::table& socket, DaemonConfig& config) {
  TRY(reject_unknown(name, socket, "socket", {"mode", "group"}));
  if (const toml::node* mode = socket.get("mode")) {
    std::optional<std::string> text = mode->value<std::string>();
    char* end = nullptr;
    unsigned long value = text ? std::strtoul(text->c_str(), &end, 8) : 0;
    if (!text || text->empty() || *end != '\0' || value > 0777 || (value & 0600) != 0600) {
      return Error::user(fmt::format(
          "{}: socket.mode must be an octal string such as \"0660\" that keeps the owner's "
          "read and write",
          where(name, *mode)));
    }
    config.socket_mode = static_cast<mode_t>(value);
  }
  if (const toml::node* group = socket.get("group")) {
    std::optional<std::string> text = group->value<std::string>();
    struct group* g = text ? ::getgrnam(text->c_str()) : nullptr;
    if (!g) {
      return Error::user(
          fmt::format("{}: socket.group must name a group of this host", where(name, *group)));
    }
    config.socket_group = g->gr_gid;
  }
  return ok_status();
}

Status parse_sandbox(const std::string& name, const toml::table& sandbox, DaemonConfig& config) {
  TRY(reject_unknown(name, sandbox, "sandbox", {"jail", "seccomp", "user"}));
  if (const toml::node* jail = sandbox.get("jail")) {
    std::optional<bool> value = jail->value<bool>();
    if (!value)
      return Error::user(fmt::format("{}: sandbox.jail must be true or false", where(name, *jail)));
    config.sandbox.jail = *value;
  }
  if (const toml::node* seccomp = sandbox.get("seccomp")) {
    std::optional<std::string> value = seccomp->value<std::string>();
    if (!value || (*value != "enforce" && *value != "log" && *value != "off")) {
      return Error::user(fmt::format("{}: sandbox.seccomp must be \"enforce\", \"log\" or \"off\"",
                                     where(name, *seccomp)));
    }
    config.sandbox.seccomp = *value;
  }
  if (const toml::node* user = sandbox.get("user")) {
    std::optional<std::string> value = user->value<std::string>();
    passwd* pw = value ? ::getpwnam(value->c_str()) : nullptr;
    if (!pw) {
      return Error::user(
          fmt::format("{}: sandbox.user must name a user of this host", where(name, *user)));
    }
    config.sandbox.uid = pw->pw_uid;
    config.sandbox.gid = pw->pw_gid;
    config.sandbox.user = *value;
  }
  return ok_status();
}

}  // namespace

Result<DaemonConfig> parse_daemon_config(const std::string& text, const std::string& name) {
  toml::table root;
  try {
    root = toml::parse(text, name);
  } catch (const toml::parse_error& e) {
    return Error::user(
        fmt::format("{}:{}: {}", name, e.source().begin.line, sanitize_text(e.description())));
  }
  TRY(reject_unknown(name, root, "", {"roles", "paths", "socket", "sandbox", "migration"}));
  DaemonConfig config;
  for (const char* section : {"roles", "paths", "socket", "sandbox", "migration"}) {
    const toml::node* node = root.get(section);
    if (node && !node->is_table()) {
      return Error::user(
          fmt::format("{}: {} must be a table ([{}])", where(name, *node), section, section));
    }
  }
  if (const toml::table* roles = root["roles"].as_table()) TRY(parse_roles(name, *roles, config));
  if (const toml::table* paths = root["paths"].as_table()) {
    TRY(reject_unknown(name, *paths, "paths", {"allowed", "migration_sockets"}));
    if (paths->contains("allowed")) {
      config.allowed_paths = TRY(string_list(name, *paths, "paths", "allowed"));
    }
    if (paths->contains("migration_sockets")) {
      config.migration_sockets = TRY(string_list(name, *paths, "paths", "migration_sockets"));
    }
  }
  if (const toml::table* socket = root["socket"].as_table()) {
    TRY(parse_socket(name, *socket, config));
  }
  if (const toml::table* sandbox = root["sandbox"].as_table()) {
    TRY(parse_sandbox(name, *sandbox, config));
  }
  if (const toml::table* migration = root["migration"].as_table()) {
    TRY(reject_unknown(name, *migration, "migration", {"trusted_networks"}));
    if (migration->contains("trusted_networks")) {
      config.trusted_networks = TRY(string_list(name, *migration, "migration", "trusted_networks"));
      for (const std::string& network : config.trusted_networks) {
        Result<IpNetwork> parsed = parse_ip_network(network);
        if (!parsed.ok()) {
          return Error::user(fmt::format("{}: migration.trusted_networks: {}",
                                         where(name, *migration->get("trusted_networks")),
                                         parsed.error().message()));
        }
      }
    }
  }
  return config;
}

Result<DaemonConfig> load_daemon_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return Error::user(
        fmt::format("cannot read the configuration file {}: {}", path, std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().size() > (1u << 20)) {
    return Error::user(fmt::format("{}: larger than 1 MiB: not a vmctld configuration", path));
  }
  return parse_daemon_config(text.str(), path);
}

}  // namespace vmctl::daemon
