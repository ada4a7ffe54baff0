// CPU time a system spends moving a guest, for compare_bench's "CPU s/GiB": every process of
// one system (vmctl: both daemons and every VM process they start; QEMU: both QEMU processes)
// lives in a cgroup of its own, whose CPU counter is exact even for processes that have exited
// (the source VM process is gone before the migration's RPC returns). The guest's own time, on
// its vCPU threads, is sampled every few milliseconds and taken out: what remains is the cost
// of the VMM and its daemons, which is what the two systems are compared on.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace vmctl::bench {

class CpuGroup {
 public:
  // A new cgroup (v2, or v1's cpuacct hierarchy); nullptr if this host offers neither to us
  // (the figure is then left out of the report, not guessed).
  static std::unique_ptr<CpuGroup> create(const std::string& name);
  ~CpuGroup();  // removes the cgroup (its processes must have ended)
  CpuGroup(const CpuGroup&) = delete;
  CpuGroup& operator=(const CpuGroup&) = delete;

  // For a child between fork and exec: the file its pid is written to.
  const std::string& procs_file() const { return procs_; }
  // Moves the calling process into the group (async-signal-safe: for a forked child).
  void enter() const;
  // All CPU time of the group's processes, living and exited, in nanoseconds.
  std::optional<uint64_t> usage_ns() const;
  // The pids in the group now.
  std::vector<pid_t> pids() const;

 private:
  CpuGroup(std::string dir, bool v2);
  std::string dir_, procs_;
  bool v2_;
};

// The CPU time of a group over a window, with the guest's share (its vCPU threads) apart.
class CpuWindow {
 public:
  // `is_vcpu`: whether a thread name is a vCPU's ("vcpu0" for vmctl, "CPU 0/KVM" for QEMU).
  CpuWindow(const CpuGroup& group, std::function<bool(const std::string&)> is_vcpu);
  ~CpuWindow();

  struct Split {
    double total_s = 0;  // every process of the group
    double guest_s = 0;  // on vCPU threads (the guest running, and KVM on its behalf)
    double vmm_s() const { return total_s - guest_s; }
  };
  // Ends the window.
  std::optional<Split> finish();

 private:
  void sample();

  const CpuGroup& group_;
  std::function<bool(const std::string&)> is_vcpu_;
  std::optional<uint64_t> start_usage_;
  std::mutex mu_;
  std::map<pid_t, std::pair<uint64_t, uint64_t>> vcpu_ns_;  // tid -> (first seen, last seen)
  std::atomic<bool> stop_{false};
  std::thread sampler_;
  bool opened_ = false;  // after the first sample: threads seen from now on are new
  bool finished_ = false;
};

}  // namespace vmctl::bench
