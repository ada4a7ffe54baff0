// The machine's limits a benchmark run is measured against, in the same run (the machine is
// shared: ratios to these, not absolute figures, are what compare across runs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace vmctl::bench {

struct Limits {
  double memcpy_mib_s = 0;
  double tcp_mib_s = 0;  // one loopback TCP stream
  // One vmctl data connection over loopback moving page runs from one buffer of "guest memory"
  // into another, through the product's own code (migrate/data_plane.md): with TLS, and
  // plaintext (a trusted network). Unset when not measured.
  std::optional<double> data_connection_tls_mib_s, data_connection_plain_mib_s;
};

// Best of `rounds` copies of a `bytes` buffer, in MiB/s.
double memcpy_mib_s(size_t bytes, int rounds);
// One TCP connection over 127.0.0.1, a writer and a reader thread, `bytes` in 1 MiB writes.
double loopback_tcp_mib_s(uint64_t bytes);
// `bytes` of page runs (256 pages a record, as migrations send them) over one data connection:
// DataLanes on one side, DataListener, RecordReader and apply_page_runs on the other. `tls_dir`
// holds ca.pem, node.pem and node.key; empty: plaintext. Throws std::runtime_error on failure.
double data_connection_mib_s(uint64_t bytes, const std::string& tls_dir);

}  // namespace vmctl::bench
