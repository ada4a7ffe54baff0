#include "bench/machine_limits.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <stdexcept>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "migrate/data_lanes.h"
#include "migrate/data_listener.h"
#include "state/page_runs.h"
#include "state/stream.h"
#include "vmm/memory.h"

namespace vmctl::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

// Best of `rounds` copies of a `bytes` buffer, in MiB/s.
double memcpy_mib_s(size_t bytes, int rounds) {
  std::vector<char> a(bytes, 1), b(bytes, 2);
  double best = 0;
  for (int i = 0; i < rounds; ++i) {
    Clock::time_point start = Clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    double s = seconds_between(start, Clock::now());
    best = std::max(best, static_cast<double>(bytes) / (1 << 20) / s);
    a[static_cast<size_t>(i) % bytes] = static_cast<char>(b[bytes / 2] + i);  // keep both alive
  }
  return best;
}

// One TCP connection over 127.0.0.1, a writer and a reader thread, `bytes` in 1 MiB writes.
double loopback_tcp_mib_s(uint64_t bytes) {
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (listener < 0 || bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    throw std::runtime_error(fmt::format("loopback TCP: {}", std::strerror(errno)));
  }
  std::atomic<uint64_t> received{0};
  std::thread reader([&] {
    int fd = accept(listener, nullptr, nullptr);
    std::vector<char> buf(1 << 20);
    ssize_t n;
    while (fd >= 0 && (n = read(fd, buf.data(), buf.size())) > 0) received += n;
    if (fd >= 0) close(fd);
  });
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  std::vector<char> buf(1 << 20, 7);
  Clock::time_point start = Clock::now();
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    for (uint64_t sent = 0; sent < bytes;) {
      ssize_t n = write(fd, buf.data(), std::min<uint64_t>(buf.size(), bytes - sent));
      if (n <= 0) break;
      sent += static_cast<uint64_t>(n);
    }
  }
  close(fd);
  reader.join();
  double s = seconds_between(start, Clock::now());
  close(listener);
  if (received != bytes) throw std::runtime_error("loopback TCP: the stream was cut short");
  return static_cast<double>(bytes) / (1 << 20) / s;
}

double data_connection_mib_s(uint64_t bytes, const std::string& tls_dir) {
  constexpr uint64_t kPage = 4096, kRunPages = 256;  // the senders' page run records
  const uint64_t pages = bytes / kPage / kRunPages * kRunPages;
  auto fail = [](const std::string& what, const Error& e) {
    return std::runtime_error("data connection: " + what + ": " + e.message());
  };
  Result<vmm::GuestMemory> src = vmm::GuestMemory::create(pages * kPage);
  Result<vmm::GuestMemory> dst = vmm::GuestMemory::create(pages * kPage);
  if (!src.ok()) throw fail("guest memory", src.error());
  if (!dst.ok()) throw fail("guest memory", dst.error());
  const vmm::MemoryRegion& from = src->regions().front();
  uint8_t* base = from.host.data();
  // Every page different and not zero: what a busy guest's memory looks like to the sender.
  for (uint64_t p = 0; p < pages; ++p)
    std::memset(base + p * kPage, static_cast<int>(p % 251) + 1, kPage);

  // The destination is touched first: the figure is the connection's, not the host's cost of
  // handing out fresh memory (which a migration's destination pays with either VMM).
  std::memset(dst->regions().front().host.data(), 0x5a, pages * kPage);
  migrate::TlsConfig tls;
  if (!tls_dir.empty()) tls = {tls_dir + "/ca.pem", tls_dir + "/node.pem", tls_dir + "/node.key"};
  Result<std::unique_ptr<migrate::DataListener>> listener =
      migrate::DataListener::listen_tcp("127.0.0.1", tls, tls_dir.empty());
  if (!listener.ok()) throw fail("listening", listener.error());
  const std::string id = "0123456789abcdef0123456789abcdef", secret = "00112233445566778899";
  auto received = std::async(std::launch::async, [&]() -> Result<uint64_t> {
    auto joined =
        TRY((*listener)->accept_all(id, secret, 1, Clock::now() + std::chrono::seconds(30)));
    migrate::DataConnection& conn = *joined.front();
    state::RecordReader reader(conn, "data connection benchmark");
    reader.set_authenticated_transport(conn.authenticated());
    reader.set_guest_memory_size(dst->ram_size());
    uint64_t applied = 0;
    while (applied < pages) {
      std::optional<state::Record> record = TRY(reader.next());
      if (!record) return Error::user("the stream ended early");
      applied += TRY(state::apply_page_runs(reader, *record, *dst));
    }
    return applied;
  });
  Result<std::string> endpoint =
      migrate::data_endpoint_for("127.0.0.1:1", (*listener)->announcement());
  if (!endpoint.ok()) throw fail("endpoint", endpoint.error());
  migrate::DataLaneOptions options;
  options.endpoint = *endpoint;
  options.tls = tls;
  options.plaintext = tls_dir.empty();
  options.migration_id = id;
  options.secret = secret;
  Result<std::unique_ptr<migrate::DataLanes>> lanes = migrate::DataLanes::connect(options);
  if (!lanes.ok()) throw fail("connecting", lanes.error());
  Clock::time_point start = Clock::now();
  state::RecordWriter writer((*lanes)->sink(), state::WriterOptions{0});
  std::vector<uint8_t> scratch;
  for (uint64_t first = 0; first < pages; first += kRunPages) {
    std::vector<state::PageRun> runs = {
        {first, static_cast<uint32_t>(kRunPages), state::PageRunKind::kData}};
    std::vector<iovec> data = {{base + first * kPage, kRunPages * kPage}};
    Result<uint64_t> sent =
        state::write_page_runs(writer, runs, data, (*lanes)->authenticated(), scratch);
    if (!sent.ok()) throw fail("sending", sent.error());
  }
  Result<uint64_t> applied = received.get();
  double s = seconds_between(start, Clock::now());
  if (!applied.ok()) throw fail("receiving", applied.error());
  if (std::memcmp(base, dst->regions().front().host.data(), pages * kPage) != 0) {
    throw std::runtime_error("data connection: the pages arrived damaged");
  }
  return static_cast<double>(pages * kPage) / (1 << 20) / s;
}

}  // namespace vmctl::bench
