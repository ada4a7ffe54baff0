#include "migrate/data_lanes.h"

#include <cstdlib>
#include <cstring>
#include <optional>
#include <thread>

#include <capnp/message.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "base/text.h"
#include "migrate/data_hello.h"
#include "migrate/data_proof.h"
#include "state/page_runs.h"
#include "vmm/absent_pages.h"

namespace vmctl::migrate {
namespace {

constexpr uint64_t kPage = 4096;
// Pages are dealt to connections in blocks of this many: big enough that runs stay long, small
// enough that a few hot blocks do not load one connection only.
constexpr uint64_t kPagesPerBlock = 512;  // 2 MiB

int64_t fault_number(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoll(v) : -1;
}

bool test_bit(const std::vector<uint64_t>& bits, uint64_t i) {
  return i / 64 < bits.size() && (bits[i / 64] >> (i % 64)) & 1;
}

// What goes into one connection: counts its bytes and, for the test suite's fault injection, may
// corrupt, drop or repeat one of its frames (each frame starts a write: page runs are written
// whole, other records header first).
class LaneSink final : public state::ByteSink {
 public:
  LaneSink(DataConnection& conn, std::atomic<uint64_t>* side_bytes)
      : conn_(conn), side_bytes_(side_bytes) {}

  void inject_faults() {
    corrupt_at_ = fault_number("VMCTL_FAULT_CORRUPT_STREAM_AT");
    drop_frame_ = fault_number("VMCTL_FAULT_DROP_CHUNK");
    duplicate_frame_ = fault_number("VMCTL_FAULT_DUPLICATE_CHUNK");
  }

  Status write(const void* data, size_t len) override {
    iovec v{const_cast<void*>(data), len};
    return writev(&v, 1);
  }

  Status writev(const iovec* iov, int count) override {
    uint64_t len = 0;
    for (int i = 0; i < count; ++i) len += iov[i].iov_len;
    bool frame_start = count > 0 && iov[0].iov_len >= sizeof(state::FrameHeader) &&
                       std::memcmp(iov[0].iov_base, &state::kFrameMagic, 4) == 0;
    if (frame_start) {
      ++frames_;
      if (frames_ == drop_frame_) return ok_status();
    }
    std::vector<iovec> pieces(iov, iov + count);
    state::FrameHeader corrupted;
    if (frame_start && corrupt_at_ >= 0 && bytes_ >= static_cast<uint64_t>(corrupt_at_)) {
      corrupt_at_ = -1;
      std::memcpy(&corrupted, iov[0].iov_base, sizeof corrupted);
      corrupted.checksum ^= 0x5a;
      // The header as its own piece, the rest of the first piece after it.
      pieces.insert(pieces.begin(), iovec{&corrupted, sizeof corrupted});
      pieces[1].iov_base = static_cast<uint8_t*>(pieces[1].iov_base) + sizeof corrupted;
      pieces[1].iov_len -= sizeof corrupted;
    }
    TRY(conn_.writev(pieces.data(), static_cast<int>(pieces.size())));
    if (frame_start && frames_ == duplicate_frame_) {
      TRY(conn_.writev(pieces.data(), static_cast<int>(pieces.size())));
    }
    bytes_ += len;
    if (side_bytes_) *side_bytes_ += len;
    return ok_status();
  }

 private:
  DataConnection& conn_;
  std::atomic<uint64_t>* side_bytes_;
  uint64_t bytes_ = 0;
  int64_t frames_ = 0;
  int64_t corrupt_at_ = -1, drop_frame_ = -1, duplicate_frame_ = -1;
};

}  // namespace

struct DataLanes::Lane {
  std::unique_ptr<DataConnection> conn;
  std::unique_ptr<LaneSink> sink;
  std::unique_ptr<state::RecordWriter> writer;  // connections 1..: their own record numbering
  uint64_t pages = 0;                           // page runs' pages sent on this connection
  std::vector<uint8_t> scratch;
};

DataLanes::DataLanes(DataLaneOptions options) : options_(std::move(options)) {}

DataLanes::~DataLanes() = default;

Result<std::unique_ptr<DataLanes>> DataLanes::connect(const DataLaneOptions& options) {
  if (options.count == 0 || options.count > kMaxDataConnections) {
    return Error::user(fmt::format("{} data connections: 1 to {} may be used", options.count,
                                   kMaxDataConnections));
  }
  std::unique_ptr<DataLanes> d(new DataLanes(options));
  Endpoint e = TRY(parse_endpoint(options.endpoint));
  if (!e.unix_socket && !options.plaintext) {
    d->tls_ = TRY(TlsContext::create(options.tls, /*server=*/false));
  }
  d->lanes_.resize(options.count);
  // Joined one after the other: the destination answers each hello before the next comes.
  for (unsigned i = 0; i < options.count; ++i) TRY(d->join(i));
  return d;
}

Status DataLanes::join(unsigned index) {
  auto lane = std::make_unique<Lane>();
  const bool plaintext = options_.plaintext && !tls_;
  lane->conn =
      TRY(DataConnection::connect(options_.endpoint, tls_, options_.stall_timeout, plaintext));
  DataHello hello;
  hello.version = plaintext ? 2 : 1;
  hello.migration_id = options_.migration_id;
  if (plaintext) {
    hello.nonce = make_nonce();
  } else {
    hello.secret = options_.secret;
  }
  hello.index = index;
  hello.count = options_.count;
  bool last = index + 1 == options_.count;
  if (last) {
    if (const char* foreign = std::getenv("VMCTL_FAULT_JOIN_ID")) hello.migration_id = foreign;
  }
  const std::string joining =
      fmt::format("joining data connection {} to migration {}", index, options_.migration_id);
  TRY(lane->conn->write_line(format_hello(hello)));
  std::string answer = TRY_CTX(lane->conn->read_line(kHelloMaxBytes), joining);
  if (plaintext && answer.rfind("CHALLENGE ", 0) == 0) {
    // The destination proves it knows the secret before a byte of the guest goes to it.
    std::string rest = answer.substr(10);
    size_t space = rest.find(' ');
    std::string destination_nonce = rest.substr(0, space);
    std::string proof = space == std::string::npos ? "" : rest.substr(space + 1);
    if (destination_nonce.empty() || destination_nonce.size() > 64 ||
        !same_text(proof,
                   hello_proof(options_.secret, kDestinationRole, hello, destination_nonce))) {
      return Error::user(fmt::format(
          "data connection {}: the peer at {} could not prove it knows the migration's secret: "
          "it is not the destination that accepted the migration (refused to send to it)",
          index, lane->conn->peer()));
    }
    TRY(lane->conn->write_line(
        "PROOF " + hello_proof(options_.secret, kSourceRole, hello, destination_nonce)));
    answer = TRY_CTX(lane->conn->read_line(kHelloMaxBytes), joining);
  } else if (plaintext && answer.rfind("REFUSED ", 0) != 0) {
    return Error::user(fmt::format(
        "data connection {}: the peer at {} answered without proving it knows the migration's "
        "secret (\"{}\"): refused to send to it",
        index, lane->conn->peer(), sanitize_text(answer, 120)));
  }
  if (answer.rfind("REFUSED ", 0) == 0) {
    return Error::user(fmt::format("the destination refused data connection {}: {}", index,
                                   sanitize_text(answer.substr(8), 300)));
  }
  if (answer != "OK") {
    return Error::user(fmt::format("the destination answered data connection {} with \"{}\"", index,
                                   sanitize_text(answer, 120)));
  }
  lane->sink = std::make_unique<LaneSink>(*lane->conn, index == 0 ? nullptr : &side_bytes_);
  // Faults go to the last connection ("one of several"), which carries pages only when there
  // are several.
  if (last) lane->sink->inject_faults();
  if (index > 0) {
    lane->writer = std::make_unique<state::RecordWriter>(*lane->sink, state::WriterOptions{0});
  }
  {
    std::lock_guard lock(mu_);
    if (aborted_) {
      lane->conn->shut_down();
      return Error::user(*aborted_);
    }
    lanes_[index] = std::move(lane);
  }
  return ok_status();
}

bool DataLanes::authenticated() const {
  return lanes_[0]->conn->authenticated();
}

state::ByteSink& DataLanes::sink() {
  return *lanes_[0]->sink;
}

Status DataLanes::flush() {
  std::lock_guard lock(mu_);
  if (aborted_) return Error::user(*aborted_);
  return ok_status();
}

void DataLanes::abort(const std::string& why) {
  std::lock_guard lock(mu_);
  if (!aborted_) aborted_ = why;
  for (auto& lane : lanes_) {
    if (lane) lane->conn->shut_down();
  }
}

Error DataLanes::failure(Error error) {
  std::lock_guard lock(mu_);
  if (aborted_) return Error::user(*aborted_);
  return error;
}

Result<state::PageStats> DataLanes::send_lane(unsigned index, vmm::Vm& vm,
                                              state::RecordWriter& main_writer,
                                              const state::DirtyBitmaps* dirty) {
  Lane& lane = *lanes_[index];
  state::RecordWriter& writer = index == 0 ? main_writer : *lane.writer;
  const bool by_transport = lane.conn->authenticated();
  const unsigned count = static_cast<unsigned>(lanes_.size());
  state::PageStats stats;
  std::vector<state::PageRun> runs;
  std::vector<iovec> data;
  uint32_t pages = 0;
  auto emit = [&]() -> Status {
    if (pages == 0) return ok_status();
    uint64_t sent = TRY(state::write_page_runs(writer, runs, data, by_transport, lane.scratch));
    stats.pages += sent;
    lane.pages += sent;
    runs.clear();
    data.clear();
    pages = 0;
    return ok_status();
  };
  // Round 0: pages nothing backs yet are zero without reading them.
  std::optional<vmm::AbsentPages> absent;
  if (!dirty) absent.emplace();
  std::vector<uint64_t> absent_bits;
  const auto& regions = vm.memory().regions();
  for (size_t r = 0; r < regions.size(); ++r) {
    const vmm::MemoryRegion& region = regions[r];
    const uint64_t first_gfn = region.guest_phys / kPage;
    const uint64_t region_pages = region.size / kPage;
    uint8_t* base = region.host.data();
    for (uint64_t block = 0; block < region_pages; block += kPagesPerBlock) {
      if (((first_gfn + block) / kPagesPerBlock) % count != index) continue;
      uint64_t end = std::min(region_pages, block + kPagesPerBlock);
      if (absent) absent->find(region, block, end - block, absent_bits);
      for (uint64_t p = block; p < end; ++p) {
        if (dirty && !test_bit((*dirty)[r], p)) continue;
        if (absent && test_bit(absent_bits, p - block)) {
          ++stats.zero_pages;
          continue;
        }
        uint8_t* page = base + p * kPage;
        bool zero = vmm::page_is_zero(page);
        // Round 0 fills fresh (zero) memory: its zero pages need not travel. Later a dirtied
        // page that is zero now travels as a zero run (16 bytes of table, no data).
        if (zero) {
          ++stats.zero_pages;
          if (!dirty) continue;
        }
        state::PageRunKind kind = zero ? state::PageRunKind::kZero : state::PageRunKind::kData;
        uint64_t gfn = first_gfn + p;
        if (!runs.empty() && runs.back().kind == kind &&
            runs.back().first_page + runs.back().count == gfn) {
          ++runs.back().count;
          if (!zero) data.back().iov_len += kPage;
        } else {
          runs.push_back({gfn, 1, kind});
          if (!zero) data.push_back({page, kPage});
        }
        if (++pages == state::kPageRunsMaxPages) TRY(emit());
      }
    }
  }
  TRY(emit());
  return stats;
}

Result<state::PageStats> DataLanes::send_pages(vmm::Vm& vm, state::RecordWriter& writer,
                                               const state::DirtyBitmaps* dirty) {
  const unsigned count = static_cast<unsigned>(lanes_.size());
  std::vector<Result<state::PageStats>> results(count, state::PageStats{});
  std::vector<std::thread> threads;
  for (unsigned i = 1; i < count; ++i) {
    threads.emplace_back([&, i] {
      results[i] = send_lane(i, vm, writer, dirty);
      if (!results[i].ok()) abort(results[i].error().message());
    });
  }
  results[0] = send_lane(0, vm, writer, dirty);
  if (!results[0].ok()) abort(results[0].error().message());
  for (std::thread& t : threads) t.join();
  state::PageStats total;
  for (unsigned i = 0; i < count; ++i) {
    // The first failure, not the "aborted" the others saw because of it.
    if (!results[i].ok()) {
      std::lock_guard lock(mu_);
      return aborted_ ? Error::user(*aborted_) : std::move(results[i]).error();
    }
    total.pages += results[i]->pages;
    total.zero_pages += results[i]->zero_pages;
  }
  return total;
}

Status DataLanes::end_pages() {
  for (size_t i = 1; i < lanes_.size(); ++i) {
    Lane& lane = *lanes_[i];
    capnp::MallocMessageBuilder message;
    auto trailer = message.initRoot<proto::state::Trailer>();
    trailer.setRecordCount(lane.writer->records());
    trailer.setMemoryPages(lane.pages);
    Status written = lane.writer->write(proto::state::RecordType::TRAILER, message);
    if (!written.ok()) return failure(std::move(written).error());
  }
  return ok_status();
}

}  // namespace vmctl::migrate
