// Real vmctld processes for the daemon and migration tests, and gRPC helpers around them.
#pragma once

#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "proto/vmctl.grpc.pb.h"
#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {

namespace v1 = ::vmctl::v1;

// A unique scratch directory under the test temp dir, removed with its contents at the end.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& name);
  ~ScratchDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class Daemon {
 public:
  // vmctld with its state and socket in `dir`; `prefix` runs it through another program
  // (ip netns exec NS); `extra` are more vmctld flags (--listen, --tls-*).
  Daemon(std::string dir, std::vector<std::string> extra = {},
         std::vector<std::string> prefix = {});
  ~Daemon();

  void start();
  void stop(int sig = SIGTERM);  // and wait for it to exit
  // Stops every VM the daemon runs (VM processes outlive their daemon: a test ends its own).
  void stop_vms();
  // The next start() runs through this prefix instead (another environment for fault injection).
  void set_prefix(std::vector<std::string> prefix) { prefix_ = std::move(prefix); }
  const std::vector<std::string>& prefix() const { return prefix_; }
  pid_t pid() const { return process_ ? process_->pid() : -1; }
  bool running() const { return process_ != nullptr; }
  std::string socket() const { return dir_ + "/vmctld.sock"; }
  std::string address() const { return "unix:" + socket(); }
  std::string log();
  v1::Vmctl::Stub& stub() { return *stub_; }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }

  grpc::Status create(const std::string& name, const std::string& kernel,
                      const std::string& cmdline, uint64_t memory, unsigned cpus,
                      v1::VmInfo* out = nullptr);
  grpc::Status create(const std::string& name, const v1::VmConfig& config,
                      v1::VmInfo* out = nullptr);
  v1::VmInfo get(const std::string& name, grpc::Status* status = nullptr);
  grpc::Status call(grpc::Status (v1::Vmctl::Stub::*method)(grpc::ClientContext*, const v1::VmRef&,
                                                            v1::VmInfo*),
                    const std::string& name, v1::VmInfo* out = nullptr);
  grpc::Status send_console(const std::string& name, const std::string& text);
  // Polls the VM's console log for a line matching `pattern` (from the start of the log).
  std::optional<std::string> wait_console(const std::string& name, const std::string& pattern,
                                          std::chrono::milliseconds timeout);
  // The VM's console log: its previous generation (console.log.1), then the current one.
  std::string console(const std::string& name);
  // Waits until the VM is in `state`.
  bool wait_state(const std::string& name, v1::VmState state, std::chrono::milliseconds timeout);

 private:
  grpc::Status create_with_retry(const v1::CreateVmRequest& request, v1::VmInfo* out);
  std::string dir_;
  std::vector<std::string> extra_, prefix_;
  std::unique_ptr<VmctlProcess> process_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Vmctl::Stub> stub_;
};

// Collects a VM's console lines with the daemon's timestamps (WatchVm) on a thread.
class ConsoleWatch {
 public:
  ConsoleWatch(Daemon& daemon, const std::string& name);
  ~ConsoleWatch();
  struct Line {
    int64_t unix_ms;
    std::string text;
  };
  std::vector<Line> lines();

 private:
  grpc::ClientContext context_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<Line> lines_;
};

// Runs a migration through the source daemon; returns the final status and every progress line.
struct MigrationResult {
  grpc::Status status;
  std::vector<v1::MigrationProgress> progress;
  const v1::MigrationProgress* last() const {
    return progress.empty() ? nullptr : &progress.back();
  }
};
MigrationResult migrate(Daemon& source, const v1::MigrateRequest& request,
                        const std::function<void(const v1::MigrationProgress&)>& on_progress = {});

int shell(const std::string& command);  // system(3), returning the exit status

}  // namespace vmctl::testing
