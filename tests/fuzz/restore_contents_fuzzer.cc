// libFuzzer target: a snapshot file or migration stream as restore reads it, up to where it would
// need KVM. Restore (state/vm_state.cc) builds its VM with KVM at the first record after the
// header, so this follows its reading in the same order without a VM: the header's machine
// against the host's budget (check_guest_budget, a fixed host), then every record through
// StreamContents (admit, admit_vcpu, retain, page counts, check_trailer), page runs applied to
// guarded guest RAM. The first input byte chooses the origin (file or peer) and whether the
// transport is authenticated; the rest is the stream. Must hold: any stream is accepted or
// refused with a clear error; nothing is allocated or held beyond the budget, no write lands
// outside guest RAM.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <kj/exception.h>

#include "proto/state.capnp.h"
#include "state/page_runs.h"
#include "state/restore_budget.h"
#include "state/stream.h"
#include "state/stream_contents.h"
#include "tests/fuzz/fuzz_guest_memory.h"

namespace {

using namespace vmctl;
using namespace vmctl::state;
namespace ps = proto::state;

Status read_stream(RecordReader& reader, StreamOrigin origin) {
  std::optional<Record> first = TRY(reader.next());
  if (!first) return Error::user("empty");
  if (first->type != RecordType::HEADER) return Error::user("the first record is not a header");
  auto header_message = first->message();
  auto header = header_message->getRoot<ps::Header>();
  const uint64_t memory_size = header.getGuest().getMemorySize();
  const unsigned vcpus = header.getGuest().getVcpuCount();
  const ps::StreamKind kind = header.getKind();
  reader.set_guest_memory_size(memory_size);
  RestoreBudget budget;
  // Restorer::read's order: the machine against the host (here one of 64 GiB whose KVM allows 288
  // vCPUs, a common figure) before anything is sized by the header's numbers.
  TRY(check_guest_budget(reader.name(), memory_size, vcpus, budget, HostMemory{64ull << 30, 0},
                         288));
  StreamContents contents(reader.name(), kind, origin, vcpus, budget);
  TRY(contents.check_numbering(reader.numbered()));
  while (true) {
    std::optional<Record> record = TRY(reader.next());
    if (!record) return Error::user("truncated");
    TRY(contents.admit(record->type));
    if (record->streamed) {
      contents.add_memory_pages(
          TRY(apply_page_runs(reader, *record, fuzz::guarded_guest_memory())));
      continue;
    }
    auto message = record->message();
    switch (record->type) {
      case RecordType::MEMORY_FILE:
        contents.used_memory_file();  // the file itself is not opened here
        break;
      case RecordType::MEMORY_PAGES:
        contents.add_memory_pages(message->getRoot<ps::MemoryPages>().getData().size() / 4096);
        break;
      case RecordType::VCPU:
        TRY(contents.admit_vcpu(record->type, message->getRoot<ps::Vcpu>().getIndex()));
        TRY(contents.retain(*record));
        break;
      case RecordType::LAPIC:
        TRY(contents.admit_vcpu(record->type, message->getRoot<ps::Lapic>().getVcpuIndex()));
        TRY(contents.retain(*record));
        break;
      case RecordType::TRAILER:
        return contents.check_trailer(message->getRoot<ps::Trailer>(), reader.records_read() - 1);
      case RecordType::IRQCHIP:
      case RecordType::PIT:
      case RecordType::CLOCK:
      case RecordType::DEVICE:
        TRY(contents.retain(*record));
        break;
      default:
        break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  MemorySource source(std::vector<uint8_t>(data + 1, data + size));
  RecordReader reader(source, "fuzz");
  reader.set_authenticated_transport(data[0] & 2);
  StreamOrigin origin = data[0] & 1 ? StreamOrigin::kPeer : StreamOrigin::kFile;
  try {
    Status status = read_stream(reader, origin);
    if (!status.ok() && status.error().message().empty()) std::abort();
  } catch (const kj::Exception&) {
    // a malformed Cap'n Proto message: restore reports it as "malformed record"
  }
  return 0;
}
