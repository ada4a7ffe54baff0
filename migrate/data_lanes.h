// The source VM process's side of the data plane (migrate/data_plane.md): `count` data
// connections straight to the destination VM process. Connection 0 carries the record stream
// (header, page runs, machine state, trailer); every connection carries page runs, each page on
// the connection its 2 MiB block is dealt to (block number % count), so the pages of one block
// always travel in order and the receiver may apply every connection's runs as they come.
// Connections 1.. end with a trailer of their own (their record and page counts) before the
// machine state goes out on connection 0.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "migrate/channel.h"
#include "migrate/data_connection.h"
#include "migrate/precopy.h"

namespace vmctl::migrate {

struct DataLaneOptions {
  std::string endpoint;    // the destination VM process: unix:/path, or host:port (with TLS)
  TlsConfig tls;           // for TCP endpoints, unless ...
  bool plaintext = false;  // ... both daemons trust each other's network (data_plane.md)
  std::string migration_id;
  std::string secret;  // from the destination's ACCEPTED
  unsigned count = 1;
  // A destination that takes no data for this long (it stopped reading, the link is gone
  // without a reset) ends the migration: a stalled peer must not keep the VM paused.
  std::chrono::milliseconds stall_timeout{15000};
};

class DataLanes final : public MigrationTarget {
 public:
  // Opens and joins every connection; fails unless the destination accepts all of them.
  static Result<std::unique_ptr<DataLanes>> connect(const DataLaneOptions& options);
  ~DataLanes() override;

  state::ByteSink& sink() override;
  Status flush() override;
  void abort(const std::string& why) override;
  Result<state::PageStats> send_pages(vmm::Vm& vm, state::RecordWriter& writer,
                                      const state::DirtyBitmaps* dirty) override;
  Status end_pages() override;
  uint64_t side_bytes() const override { return side_bytes_; }

  unsigned count() const { return static_cast<unsigned>(lanes_.size()); }
  bool authenticated() const;

 private:
  struct Lane;
  explicit DataLanes(DataLaneOptions options);
  Status join(unsigned index);
  Result<state::PageStats> send_lane(unsigned index, vmm::Vm& vm, state::RecordWriter& writer,
                                     const state::DirtyBitmaps* dirty);
  Error failure(Error error);

  DataLaneOptions options_;
  std::shared_ptr<TlsContext> tls_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::atomic<uint64_t> side_bytes_{0};
  std::mutex mu_;
  std::optional<std::string> aborted_;  // why abort() was called: later failures say so
};

}  // namespace vmctl::migrate
