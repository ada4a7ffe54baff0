#include "migrate/journal.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>

#include <xxhash.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/fd.h"

namespace vmctl::migrate {
namespace {

constexpr std::pair<MigrationPhase, const char*> kPhaseNames[] = {
    {MigrationPhase::kStarting, "starting"},
    {MigrationPhase::kSending, "sending"},
    {MigrationPhase::kSent, "sent"},
    {MigrationPhase::kSwitchover, "switchover"},
    {MigrationPhase::kInDoubt, "in-doubt"},
    {MigrationPhase::kDone, "done"},
    {MigrationPhase::kRolledBack, "rolled-back"},
    {MigrationPhase::kAccepted, "accepted"},
    {MigrationPhase::kReady, "ready"},
    {MigrationPhase::kCommitted, "committed"},
    {MigrationPhase::kResumed, "resumed"},
    {MigrationPhase::kDiscarded, "discarded"},
    {MigrationPhase::kFailed, "failed"},
};

int64_t now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Status write_all(int fd, const std::string& text, const std::string& path) {
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(fmt::format("writing {}", path), errno);
    }
    done += static_cast<size_t>(n);
  }
  return ok_status();
}

}  // namespace

const char* phase_name(MigrationPhase phase) {
  for (const auto& [p, name] : kPhaseNames) {
    if (p == phase) return name;
  }
  return "unknown";
}

std::optional<MigrationPhase> parse_phase(const std::string& name) {
  for (const auto& [p, n] : kPhaseNames) {
    if (name == n) return p;
  }
  return std::nullopt;
}

bool is_final(MigrationPhase phase) {
  switch (phase) {
    case MigrationPhase::kDone:
    case MigrationPhase::kRolledBack:
    case MigrationPhase::kResumed:
    case MigrationPhase::kDiscarded:
    case MigrationPhase::kFailed:
      return true;
    default:
      return false;
  }
}

Status validate_migration_id(const std::string& id) {
  bool ok = id.size() == 32;
  for (char c : id) ok = ok && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  if (!ok) {
    return Error::user(
        fmt::format("invalid migration id ({} characters): it must be 32 lower-case "
                    "hex digits",
                    id.size()));
  }
  return ok_status();
}

std::string new_migration_id() {
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd() ^
                      static_cast<uint64_t>(now_unix_ms()));
  return fmt::format("{:016x}{:016x}", rng(), rng());
}

std::string format_migration_record(const MigrationRecord& r) {
  nlohmann::json j = {{"id", r.id},
                      {"role", r.role == MigrationRole::kSource ? "source" : "destination"},
                      {"phase", phase_name(r.phase)},
                      {"vm", r.vm},
                      {"peer", r.peer},
                      {"detail", r.detail},
                      {"created_unix_ms", r.created_unix_ms},
                      {"updated_unix_ms", r.updated_unix_ms}};
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

Result<MigrationRecord> parse_migration_record(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Error::user("not a JSON object");
  auto text_field = [&](const char* key) -> Result<std::string> {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string()) {
      return Error::user(fmt::format("field '{}' is missing or not a string", key));
    }
    return it->get<std::string>();
  };
  auto number_field = [&](const char* key) -> int64_t {
    auto it = j.find(key);
    return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
  };
  MigrationRecord r;
  r.id = TRY(text_field("id"));
  TRY(validate_migration_id(r.id));
  std::string role = TRY(text_field("role"));
  if (role != "source" && role != "destination") {
    return Error::user("field 'role' is neither source nor destination");
  }
  r.role = role == "source" ? MigrationRole::kSource : MigrationRole::kDestination;
  std::string phase = TRY(text_field("phase"));
  std::optional<MigrationPhase> p = parse_phase(phase);
  if (!p) return Error::user("field 'phase' names no phase");
  r.phase = *p;
  r.vm = TRY(text_field("vm"));
  r.peer = TRY(text_field("peer"));
  Result<std::string> detail = text_field("detail");
  if (detail.ok()) r.detail = *detail;
  r.created_unix_ms = number_field("created_unix_ms");
  r.updated_unix_ms = number_field("updated_unix_ms");
  return r;
}

Result<MigrationJournal> MigrationJournal::open(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Error::from_errno(fmt::format("creating {}", dir), errno);
  }
  return MigrationJournal(dir);
}

// A record file holds two slots of kSlotBytes; each slot is
//   "VMCTLMIG <sequence> <xxh3 of the JSON, 16 hex digits> <JSON length>\n<JSON>" padded with
// newlines. A phase change writes the slot not holding the latest record (sequence + 1) in place
// and fdatasyncs it: one flush, where a new file would need three (file, rename, directory). A
// write torn by a crash leaves that slot invalid and the other, the previous phase, in force.
namespace {
constexpr size_t kSlotBytes = 4096;
constexpr const char* kSlotMagic = "VMCTLMIG";

struct Slot {
  uint64_t sequence = 0;
  std::string json;
};

std::string encode_slot(uint64_t sequence, const std::string& json) {
  std::string out = fmt::format("{} {} {:016x} {}\n{}", kSlotMagic, sequence,
                                XXH3_64bits(json.data(), json.size()), json.size(), json);
  out.resize(kSlotBytes, '\n');
  return out;
}

std::optional<Slot> decode_slot(std::string_view slot) {
  size_t nl = slot.find('\n');
  if (nl == std::string_view::npos) return std::nullopt;
  char magic[16] = {};
  unsigned long long sequence = 0, sum = 0, length = 0;
  std::string head(slot.substr(0, nl));
  if (std::sscanf(head.c_str(), "%15s %llu %llx %llu", magic, &sequence, &sum, &length) != 4 ||
      std::string(magic) != kSlotMagic || length > slot.size() - nl - 1) {
    return std::nullopt;
  }
  std::string json(slot.substr(nl + 1, length));
  if (XXH3_64bits(json.data(), json.size()) != sum) return std::nullopt;
  return Slot{sequence, std::move(json)};
}

// The valid slot with the highest sequence, and where it lies (0 or 1).
std::optional<std::pair<Slot, int>> newest_slot(std::string_view file) {
  std::optional<std::pair<Slot, int>> best;
  for (int i = 0; i < 2; ++i) {
    if (file.size() < (i + 1) * kSlotBytes) break;
    std::optional<Slot> s = decode_slot(file.substr(i * kSlotBytes, kSlotBytes));
    if (s && (!best || s->sequence > best->first.sequence)) best = std::make_pair(*s, i);
  }
  return best;
}

Result<std::string> read_small_file(int fd, const std::string& path) {
  std::string text;
  char buf[4096];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno(fmt::format("reading {}", path), errno);
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > 2 * kSlotBytes) return Error::user(fmt::format("{} is too large", path));
  }
  return text;
}

}  // namespace

Result<MigrationRecord> parse_journal_file(const std::string& text) {
  std::optional<std::pair<Slot, int>> newest = newest_slot(text);
  if (!newest) return Error::user("neither of its two slots holds a whole record");
  return parse_migration_record(newest->first.json);
}

Status MigrationJournal::save(MigrationRecord record) {
  TRY(validate_migration_id(record.id));
  record.updated_unix_ms = now_unix_ms();
  if (record.created_unix_ms == 0) record.created_unix_ms = record.updated_unix_ms;
  if (record.detail.size() > 2048) record.detail = record.detail.substr(0, 2048) + "...";
  std::string json = format_migration_record(record);
  std::string path = fmt::format("{}/{}.json", dir_, record.id);
  int fd = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    Fd file(fd);
    std::string text = TRY(read_small_file(fd, path));
    std::optional<std::pair<Slot, int>> newest = newest_slot(text);
    uint64_t sequence = newest ? newest->first.sequence + 1 : 1;
    int slot = newest ? 1 - newest->second : 0;
    std::string bytes = encode_slot(sequence, json);
    if (::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(slot * kSlotBytes)) !=
        static_cast<ssize_t>(bytes.size())) {
      return Error::from_errno(fmt::format("writing {}", path), errno);
    }
    if (::fdatasync(fd) != 0) return Error::from_errno(fmt::format("fdatasync {}", path), errno);
    return ok_status();
  }
  if (errno != ENOENT) return Error::from_errno(fmt::format("opening {}", path), errno);
  // A new record: both slots, written whole under a temporary name and renamed into place.
  std::string tmp = fmt::format("{}/.{}.json.tmp", dir_, record.id);
  ::unlink(tmp.c_str());  // a leftover of a crash; only this daemon writes here (its lock)
  fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return Error::from_errno(fmt::format("creating {}", tmp), errno);
  Fd file(fd);
  TRY(write_all(fd, encode_slot(1, json) + std::string(kSlotBytes, '\n'), tmp));
  if (::fsync(fd) != 0) return Error::from_errno(fmt::format("fsync {}", tmp), errno);
  file.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return Error::from_errno(fmt::format("renaming {}", tmp), errno);
  }
  Fd directory = TRY(Fd::open(dir_, O_RDONLY | O_DIRECTORY));
  if (::fsync(directory.get()) != 0) {
    return Error::from_errno(fmt::format("fsync {}", dir_), errno);
  }
  return ok_status();
}

Result<std::optional<MigrationRecord>> MigrationJournal::load(const std::string& id) const {
  TRY(validate_migration_id(id));
  std::string path = fmt::format("{}/{}.json", dir_, id);
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::optional<MigrationRecord>();
    return Error::from_errno(fmt::format("opening {}", path), errno);
  }
  Fd file(fd);
  std::string text = TRY(read_small_file(fd, path));
  MigrationRecord r = TRY_CTX(parse_journal_file(text), path);
  if (r.id != id) return Error::user(fmt::format("{} holds migration {}", path, r.id));
  return std::optional<MigrationRecord>(std::move(r));
}

std::vector<MigrationRecord> MigrationJournal::load_all(std::vector<std::string>* problems) const {
  std::vector<MigrationRecord> out;
  DIR* d = ::opendir(dir_.c_str());
  if (!d) return out;
  std::vector<std::string> ids;
  while (dirent* ent = ::readdir(d)) {
    std::string name = ent->d_name;
    if (name.size() == 37 && name.compare(32, 5, ".json") == 0) ids.push_back(name.substr(0, 32));
  }
  ::closedir(d);
  for (const std::string& id : ids) {
    Result<std::optional<MigrationRecord>> r = load(id);
    if (!r.ok()) {
      if (problems) problems->push_back(r.error().message());
      continue;
    }
    if (*r) out.push_back(std::move(**r));
  }
  return out;
}

void MigrationJournal::prune(int64_t max_age_ms) {
  int64_t now = now_unix_ms();
  for (const MigrationRecord& r : load_all()) {
    if (is_final(r.phase) && now - r.updated_unix_ms > max_age_ms) {
      ::unlink(fmt::format("{}/{}.json", dir_, r.id).c_str());
    }
  }
}

}  // namespace vmctl::migrate
