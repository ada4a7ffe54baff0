#include "state/stream_contents.h"

#include <fmt/format.h>

#include "base/size.h"

namespace vmctl::state {
namespace {

namespace ps = proto::state;

const char* kind_words(ps::StreamKind kind) {
  switch (kind) {
    case ps::StreamKind::FULL_SNAPSHOT:
      return "full snapshot";
    case ps::StreamKind::DIFF_SNAPSHOT:
      return "diff snapshot";
    case ps::StreamKind::MIGRATION:
      return "migration stream";
  }
  return "stream of unknown kind";
}

}  // namespace

StreamContents::StreamContents(std::string stream, ps::StreamKind kind, StreamOrigin origin,
                               unsigned vcpus, const RestoreBudget& budget)
    : stream_(std::move(stream)),
      kind_(kind),
      origin_(origin),
      vcpus_(vcpus),
      budget_(budget),
      vcpu_(vcpus, false),
      lapic_(vcpus, false) {}

Status StreamContents::check_numbering(bool numbered) const {
  if (numbered) return ok_status();
  if (origin_ == StreamOrigin::kPeer || kind_ == ps::StreamKind::MIGRATION) {
    return Error::user(fmt::format(
        "{}: a migration stream must number its records (format 1.{} on), and this one does not: "
        "the source runs an older vmctl; upgrade it",
        stream_, kFirstNumberedMinor));
  }
  return ok_status();
}

Status StreamContents::admit(RecordType type) {
  auto once = [&](bool& seen, const char* what) -> Status {
    if (seen) return Error::user(fmt::format("{}: a second {} record: corrupt", stream_, what));
    seen = true;
    return ok_status();
  };
  switch (type) {
    case RecordType::MEMORY_FILE:
      if (origin_ == StreamOrigin::kPeer || kind_ == ps::StreamKind::MIGRATION) {
        return Error::user(fmt::format(
            "{}: names a memory file, a path on this host: a migration carries guest memory in "
            "the stream; refused",
            stream_));
      }
      if (kind_ != ps::StreamKind::FULL_SNAPSHOT) {
        return Error::user(
            fmt::format("{}: a {} names a memory file; only full snapshots have one: corrupt",
                        stream_, kind_words(kind_)));
      }
      return ok_status();
    case RecordType::DIRTY_LOG:
      if (kind_ == ps::StreamKind::FULL_SNAPSHOT) {
        return Error::user(fmt::format(
            "{}: a full snapshot with a dirty log (only diffs have one): corrupt", stream_));
      }
      if (kind_ == ps::StreamKind::DIFF_SNAPSHOT) {
        if (dirty_logs_ > 0) {
          return Error::user(
              fmt::format("{}: a second dirty log in a diff snapshot: corrupt", stream_));
        }
        if (memory_pages_seen_) {
          return Error::user(fmt::format(
              "{}: the diff snapshot's dirty log comes after memory pages it would erase: corrupt",
              stream_));
        }
      }
      ++dirty_logs_;
      return ok_status();
    case RecordType::MEMORY_PAGES:
    case RecordType::PAGE_RUNS:
      if (kind_ == ps::StreamKind::DIFF_SNAPSHOT && dirty_logs_ == 0) {
        return Error::user(
            fmt::format("{}: memory pages before the diff snapshot's dirty log: corrupt", stream_));
      }
      memory_pages_seen_ = true;
      return ok_status();
    case RecordType::IRQCHIP:
      return once(irqchip_, "irqchip");
    case RecordType::PIT:
      return once(pit_, "pit");
    case RecordType::CLOCK:
      return once(clock_, "clock");
    default:
      return ok_status();
  }
}

Status StreamContents::admit_vcpu(RecordType type, unsigned index) {
  bool lapic = type == RecordType::LAPIC;
  if (index >= vcpus_) {
    return Error::user(fmt::format("{}: {} record for vCPU {}, but the header says {} vCPU{}",
                                   stream_, lapic ? "lapic" : "vcpu", index, vcpus_,
                                   vcpus_ == 1 ? "" : "s"));
  }
  std::vector<bool>& seen = lapic ? lapic_ : vcpu_;
  if (seen[index]) {
    return Error::user(fmt::format("{}: a second {} record for vCPU {}: corrupt", stream_,
                                   lapic ? "lapic" : "vcpu", index));
  }
  seen[index] = true;
  return ok_status();
}

Status StreamContents::retain(const Record& record) {
  uint64_t bytes = record.payload.size() * sizeof(capnp::word);
  if (retained_records_ + 1 > budget_.max_retained_records) {
    return Error::user(fmt::format(
        "{}: more than {} CPU and device records before the trailer (a machine of {} vCPU{} "
        "needs about {}): refused",
        stream_, budget_.max_retained_records, vcpus_, vcpus_ == 1 ? "" : "s", 2 * vcpus_ + 5));
  }
  if (retained_bytes_ + bytes > budget_.max_retained_bytes) {
    return Error::user(
        fmt::format("{}: its CPU and device records exceed {} before the trailer: refused", stream_,
                    format_size(budget_.max_retained_bytes)));
  }
  ++retained_records_;
  retained_bytes_ += bytes;
  return ok_status();
}

Status StreamContents::check_trailer(ps::Trailer::Reader trailer, uint64_t records_before) const {
  if (trailer.getRecordCount() != records_before) {
    return Error::user(fmt::format(
        "{}: the trailer counts {} records before it, but the stream has {}: records were lost "
        "or added",
        stream_, trailer.getRecordCount(), records_before));
  }
  // A memory file's pages are in the file: the trailer counts those, which only reading the file
  // would tell (lazy restore never does).
  if (!memory_file_ && trailer.getMemoryPages() != memory_pages_) {
    return Error::user(fmt::format(
        "{}: the trailer counts {} memory pages, but the stream's memory records carry {}: "
        "corrupt",
        stream_, trailer.getMemoryPages(), memory_pages_));
  }
  auto missing = [&](const std::string& what) {
    return Error::user(fmt::format(
        "{}: the stream has no {}; every stream carries the irqchip, PIT and clock and a vcpu and "
        "lapic record per vCPU: truncated or corrupt",
        stream_, what));
  };
  if (!irqchip_) return missing("irqchip record");
  if (!pit_) return missing("pit record");
  if (!clock_) return missing("clock record");
  for (unsigned i = 0; i < vcpus_; ++i) {
    if (!vcpu_[i]) return missing(fmt::format("vcpu record for vCPU {}", i));
    if (!lapic_[i]) return missing(fmt::format("lapic record for vCPU {}", i));
  }
  if (kind_ == ps::StreamKind::DIFF_SNAPSHOT && dirty_logs_ == 0) {
    return Error::user(fmt::format(
        "{}: the diff snapshot has no dirty log naming the pages it covers: corrupt", stream_));
  }
  return ok_status();
}

}  // namespace vmctl::state
