#include "vmprocess/control_protocol.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "migrate/journal.h"

namespace vmctl::vmprocess {
namespace {

using json = nlohmann::json;

constexpr std::pair<const char*, ControlOp> kOps[] = {
    {"status", ControlOp::kStatus},
    {"stats", ControlOp::kStats},
    {"guest_cpu_features", ControlOp::kGuestCpuFeatures},
    {"console", ControlOp::kConsole},
    {"pause", ControlOp::kPause},
    {"resume", ControlOp::kResume},
    {"stop", ControlOp::kStop},
    {"snapshot", ControlOp::kSnapshot},
    {"migrate", ControlOp::kMigrate},
    {"cancel_migration", ControlOp::kCancelMigration},
    {"migration_decision", ControlOp::kMigrationDecision},
    {"switchover", ControlOp::kSwitchover},
    {"discard", ControlOp::kDiscard},
};

// Typed field access that reports, rather than throws on, a field of the wrong type.
class Fields {
 public:
  explicit Fields(const json& j) : j_(j) {}

  Result<std::string> text(const char* key, bool required, size_t max = 4096) const {
    auto it = j_.find(key);
    if (it == j_.end()) {
      if (required) return Error::user(fmt::format("the request lacks '{}'", key));
      return std::string();
    }
    if (!it->is_string()) return Error::user(fmt::format("'{}' must be a string", key));
    std::string v = it->get<std::string>();
    if (v.size() > max) return Error::user(fmt::format("'{}' is longer than {} bytes", key, max));
    return v;
  }
  Result<bool> flag(const char* key, bool fallback) const {
    auto it = j_.find(key);
    if (it == j_.end()) return fallback;
    if (!it->is_boolean()) return Error::user(fmt::format("'{}' must be true or false", key));
    return it->get<bool>();
  }
  Result<int64_t> integer(const char* key, int64_t fallback, int64_t min, int64_t max) const {
    auto it = j_.find(key);
    if (it == j_.end()) return fallback;
    if (!it->is_number_integer()) return Error::user(fmt::format("'{}' must be an integer", key));
    int64_t v = it->get<int64_t>();
    if (v < min || v > max) {
      return Error::user(fmt::format("'{}' is {}: it must lie in [{}, {}]", key, v, min, max));
    }
    return v;
  }
  Result<double> number(const char* key, double fallback, double min, double max) const {
    auto it = j_.find(key);
    if (it == j_.end()) return fallback;
    if (!it->is_number()) return Error::user(fmt::format("'{}' must be a number", key));
    double v = it->get<double>();
    if (!(v >= min && v <= max)) {
      return Error::user(fmt::format("'{}' must lie in [{}, {}]", key, min, max));
    }
    return v;
  }

 private:
  const json& j_;
};

}  // namespace

Result<ControlRequest> parse_control_request(std::string_view line) {
  if (line.size() > (1u << 20)) return Error::user("the request is longer than 1 MiB");
  json j = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Error::user("the request is not a JSON object");
  Fields f(j);
  std::string op = TRY(f.text("op", true, 64));
  ControlRequest r;
  bool known = false;
  for (const auto& [name, value] : kOps) {
    if (op == name) {
      r.op = value;
      known = true;
    }
  }
  if (!known) return Error::user(fmt::format("unknown control operation '{}'", op));
  switch (r.op) {
    case ControlOp::kConsole:
      r.console_data = TRY(f.text("data", false, 64 * 1024));
      break;
    case ControlOp::kSnapshot:
      r.snapshot.path = TRY(f.text("path", true));
      if (r.snapshot.path.empty()) return Error::user("snapshot needs a path");
      r.snapshot.stop = TRY(f.flag("stop", false));
      r.snapshot.diff = TRY(f.flag("diff", false));
      r.snapshot.compression = static_cast<int>(TRY(f.integer("compression", 0, 0, 19)));
      r.snapshot.memory_file = TRY(f.text("memory_file", false));
      break;
    case ControlOp::kMigrate: {
      MigrateArgs& m = r.migrate;
      m.migration_id = TRY(f.text("migration_id", true, 64));
      TRY(migrate::validate_migration_id(m.migration_id));
      m.secret = TRY(f.text("secret", true, 256));
      m.destination = TRY(f.text("destination", true, 1024));
      m.streams = static_cast<unsigned>(TRY(f.integer("streams", 1, 1, 16)));
      if (j.contains("tls")) {
        if (!j["tls"].is_object()) return Error::user("'tls' must be an object");
        Fields tls(j["tls"]);
        m.tls.ca = TRY(tls.text("ca", false));
        m.tls.cert = TRY(tls.text("cert", false));
        m.tls.key = TRY(tls.text("key", false));
      }
      m.plaintext = TRY(f.flag("plaintext", false));
      m.downtime_ms = TRY(f.number("downtime_ms", 30, 0, 3600e3));
      m.max_rounds = static_cast<unsigned>(TRY(f.integer("max_rounds", 30, 1, 1000000)));
      m.max_seconds = TRY(f.number("max_seconds", 120, 0, 30 * 86400));
      m.auto_converge = TRY(f.flag("auto_converge", false));
      m.compression = static_cast<int>(TRY(f.integer("compression", 0, 0, 19)));
      m.stall_timeout_ms =
          static_cast<uint32_t>(TRY(f.integer("stall_timeout_ms", 15000, 100, 3600000)));
      break;
    }
    case ControlOp::kMigrationDecision: {
      r.migration_id = TRY(f.text("migration_id", true, 64));
      std::string decision = TRY(f.text("decision", true, 16));
      if (decision != "commit" && decision != "rollback") {
        return Error::user("'decision' must be commit or rollback");
      }
      r.commit = decision == "commit";
      break;
    }
    case ControlOp::kSwitchover:
    case ControlOp::kDiscard:
      r.migration_id = TRY(f.text("migration_id", true, 64));
      break;
    default:
      break;
  }
  return r;
}

}  // namespace vmctl::vmprocess
