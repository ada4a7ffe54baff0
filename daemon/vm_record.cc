#include "daemon/vm_record.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "proto/names.h"

namespace vmctl::daemon {
namespace {

namespace v1 = ::vmctl::v1;
using nlohmann::json;

Error malformed(const std::string& what) {
  return Error::user(what);
}

// "a string", "an object", ...: what a JSON value is, for messages.
std::string a_type(const json& v) {
  return std::string(v.is_array() || v.is_object() ? "an " : "a ") + v.type_name();
}

// Typed access to the fields of one JSON object; `where` prefixes the field names in messages
// ("config.").
class Fields {
 public:
  Fields(const json& object, std::string where) : object_(object), where_(std::move(where)) {}

  const json* find(const char* key) const {
    auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }

  Result<std::string> text(const char* key, bool required = false) const {
    const json* v = find(key);
    if (!v) return missing(key, required, std::string());
    if (!v->is_string()) return wrong(key, *v, "a string");
    return v->get<std::string>();
  }

  Result<uint64_t> unsigned_number(const char* key, uint64_t max) const {
    const json* v = find(key);
    if (!v) return uint64_t{0};
    if (!v->is_number_unsigned()) return wrong(key, *v, "an unsigned integer");
    uint64_t n = v->get<uint64_t>();
    if (n > max) return out_of_range(key, std::to_string(n));
    return n;
  }

  Result<int64_t> signed_number(const char* key, int64_t min, int64_t max,
                                bool required = false) const {
    const json* v = find(key);
    if (!v) return missing(key, required, int64_t{0});
    if (!v->is_number_integer()) return wrong(key, *v, "an integer");
    if (v->is_number_unsigned()) {
      uint64_t n = v->get<uint64_t>();
      if (n > static_cast<uint64_t>(max)) return out_of_range(key, std::to_string(n));
      return static_cast<int64_t>(n);
    }
    int64_t n = v->get<int64_t>();
    if (n < min || n > max) return out_of_range(key, std::to_string(n));
    return n;
  }

 private:
  template <typename T>
  Result<T> missing(const char* key, bool required, T fallback) const {
    if (required) return malformed(fmt::format("field '{}{}' is missing", where_, key));
    return fallback;
  }
  Error wrong(const char* key, const json& v, const char* expected) const {
    return malformed(
        fmt::format("field '{}{}' is {}, expected {}", where_, key, a_type(v), expected));
  }
  Error out_of_range(const char* key, const std::string& value) const {
    return malformed(fmt::format("field '{}{}' is {}, out of range", where_, key, value));
  }

  const json& object_;
  std::string where_;
};

json config_to_json(const v1::VmConfig& c) {
  return {{"kernel", c.kernel()},
          {"initrd", c.initrd()},
          {"cmdline", c.cmdline()},
          {"memory_bytes", c.memory_bytes()},
          {"cpus", c.cpus()},
          {"dirty_tracking", c.dirty_tracking()},
          {"dirty_ring_entries", c.dirty_ring_entries()},
          {"irqchip", c.irqchip()}};
}

Result<v1::VmConfig> config_from_json(const json& j) {
  if (!j.is_object()) {
    return malformed(fmt::format("field 'config' is {}, expected an object", a_type(j)));
  }
  Fields f(j, "config.");
  constexpr uint64_t kMaxU32 = std::numeric_limits<uint32_t>::max();
  v1::VmConfig c;
  c.set_kernel(TRY(f.text("kernel")));
  c.set_initrd(TRY(f.text("initrd")));
  c.set_cmdline(TRY(f.text("cmdline")));
  c.set_memory_bytes(TRY(f.unsigned_number("memory_bytes", std::numeric_limits<uint64_t>::max())));
  c.set_cpus(static_cast<uint32_t>(TRY(f.unsigned_number("cpus", kMaxU32))));
  c.set_dirty_tracking(TRY(f.text("dirty_tracking")));
  c.set_dirty_ring_entries(
      static_cast<uint32_t>(TRY(f.unsigned_number("dirty_ring_entries", kMaxU32))));
  c.set_irqchip(TRY(f.text("irqchip")));  // absent in records of earlier versions: kernel
  return c;
}

Result<VmRecord> record_from_json(const json& j) {
  if (!j.is_object()) {
    return malformed(fmt::format("it is {} in JSON, not an object", a_type(j)));
  }
  Fields f(j, "");
  constexpr int64_t kMinI32 = std::numeric_limits<int32_t>::min();
  constexpr int64_t kMaxI32 = std::numeric_limits<int32_t>::max();
  VmRecord r;
  r.name = TRY(f.text("name", /*required=*/true));
  int64_t state = TRY(f.signed_number("state_code", kMinI32, kMaxI32, /*required=*/true));
  if (!v1::VmState_IsValid(static_cast<int>(state)) || state == v1::VM_STATE_UNSPECIFIED) {
    return malformed(fmt::format("field 'state_code' is {}, which is not a VM state", state));
  }
  r.state = static_cast<v1::VmState>(state);
  if (const json* config = f.find("config")) r.config = TRY(config_from_json(*config));
  r.pid = static_cast<int32_t>(TRY(f.signed_number("pid", 0, kMaxI32)));
  r.exit_code = static_cast<int32_t>(TRY(f.signed_number("exit_code", kMinI32, kMaxI32)));
  r.error = TRY(f.text("error"));
  r.migrated_to = TRY(f.text("migrated_to"));
  r.migration_id = TRY(f.text("migration_id"));
  r.created_unix_ms =
      TRY(f.signed_number("created_unix_ms", 0, std::numeric_limits<int64_t>::max()));
  return r;
}

}  // namespace

std::string vm_record_to_json(const VmRecord& r) {
  json j = {{"name", r.name},
            {"config", config_to_json(r.config)},
            {"state", vm_state_name(r.state)},
            {"state_code", static_cast<int>(r.state)},
            {"pid", r.pid},
            {"exit_code", r.exit_code},
            {"error", r.error},
            {"migrated_to", r.migrated_to},
            {"migration_id", r.migration_id},
            {"created_unix_ms", r.created_unix_ms}};
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

Result<VmRecord> parse_vm_record(std::string_view text) {
  try {
    json j = json::parse(text.begin(), text.end());
    return record_from_json(j);
  } catch (const json::exception& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 2: ...": the part after
    // the bracket says what and where.
    std::string what = e.what();
    size_t bracket = what.find("] ");
    return malformed("not JSON: " +
                     (bracket == std::string::npos ? what : what.substr(bracket + 2)));
  } catch (const std::exception& e) {
    return malformed(std::string("unreadable: ") + e.what());
  }
}

Result<VmRecord> load_vm_record(const std::string& path, const std::string& name) {
  auto bad = [&](const std::string& what) {
    return Error::user(
        fmt::format("vm.json is malformed: {} (delete the VM or fix the file {})", what, path));
  };
  int raw = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (raw < 0 && errno == ENOENT) return Error::not_found(fmt::format("no {}", path));
  if (raw < 0) return bad(fmt::format("cannot open it: {}", std::strerror(errno)));
  Fd fd(raw);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return bad("it is not a regular file");
  if (static_cast<uint64_t>(st.st_size) > kMaxVmRecordBytes) {
    return bad(fmt::format("it is {} bytes, more than any VM record ({} at most)", st.st_size,
                           kMaxVmRecordBytes));
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::read(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return bad(fmt::format("cannot read it: {}", std::strerror(errno)));
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  text.resize(done);
  Result<VmRecord> record = parse_vm_record(text);
  if (!record.ok()) return bad(record.error().message());
  if (record->name != name) {
    return bad(
        fmt::format("it names VM '{}' but lies in the directory of VM '{}'", record->name, name));
  }
  return record;
}

}  // namespace vmctl::daemon
