#include "bench/cpu_accounting.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

namespace vmctl::bench {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The time a thread has run, in ns (the first field of /proc/TID/schedstat).
std::optional<uint64_t> thread_runtime_ns(pid_t pid, pid_t tid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/schedstat");
  uint64_t ns = 0;
  if (!(in >> ns)) return std::nullopt;
  return ns;
}

std::vector<pid_t> threads_of(pid_t pid) {
  std::vector<pid_t> out;
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] >= '0' && e->d_name[0] <= '9') out.push_back(std::atoi(e->d_name));
  }
  closedir(d);
  return out;
}

}  // namespace

std::unique_ptr<CpuGroup> CpuGroup::create(const std::string& name) {
  struct stat st {};
  bool v2 = stat("/sys/fs/cgroup/cgroup.controllers", &st) == 0;
  std::string base = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/cpuacct";
  if (stat(base.c_str(), &st) != 0) return nullptr;
  std::string dir = base + "/" + name;
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return nullptr;
  std::unique_ptr<CpuGroup> g(new CpuGroup(dir, v2));
  if (!g->usage_ns()) return nullptr;
  return g;
}

CpuGroup::CpuGroup(std::string dir, bool v2)
    : dir_(std::move(dir)), procs_(dir_ + "/cgroup.procs"), v2_(v2) {}

CpuGroup::~CpuGroup() {
  rmdir(dir_.c_str());
}

void CpuGroup::enter() const {
  int fd = open(procs_.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  char text[24];
  int len = std::snprintf(text, sizeof text, "%d", static_cast<int>(getpid()));
  (void)!write(fd, text, static_cast<size_t>(len));
  close(fd);
}

std::optional<uint64_t> CpuGroup::usage_ns() const {
  if (v2_) {
    std::istringstream in(read_file(dir_ + "/cpu.stat"));
    std::string key;
    uint64_t value = 0;
    while (in >> key >> value) {
      if (key == "usage_usec") return value * 1000;
    }
    return std::nullopt;
  }
  std::ifstream in(dir_ + "/cpuacct.usage");
  uint64_t ns = 0;
  if (!(in >> ns)) return std::nullopt;
  return ns;
}

std::vector<pid_t> CpuGroup::pids() const {
  std::vector<pid_t> out;
  std::istringstream in(read_file(procs_));
  pid_t p;
  while (in >> p) out.push_back(p);
  return out;
}

CpuWindow::CpuWindow(const CpuGroup& group, std::function<bool(const std::string&)> is_vcpu)
    : group_(group), is_vcpu_(std::move(is_vcpu)) {
  sample();  // what the vCPU threads had run before the window: not part of it
  start_usage_ = group_.usage_ns();
  opened_ = true;
  sampler_ = std::thread([this] {
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      sample();
    }
  });
}

CpuWindow::~CpuWindow() {
  stop_ = true;
  if (sampler_.joinable()) sampler_.join();
}

void CpuWindow::sample() {
  for (pid_t pid : group_.pids()) {
    for (pid_t tid : threads_of(pid)) {
      std::string comm =
          read_file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/comm");
      while (!comm.empty() && comm.back() == '\n') comm.pop_back();
      if (!is_vcpu_(comm)) continue;
      std::optional<uint64_t> ns = thread_runtime_ns(pid, tid);
      if (!ns) continue;
      std::lock_guard lock(mu_);
      // A thread first seen after the window opened was born in it: all its time counts.
      auto [it, fresh] = vcpu_ns_.try_emplace(tid, opened_ ? 0 : *ns, *ns);
      if (!fresh) it->second.second = std::max(it->second.second, *ns);
    }
  }
}

std::optional<CpuWindow::Split> CpuWindow::finish() {
  if (finished_) return std::nullopt;
  finished_ = true;
  stop_ = true;
  if (sampler_.joinable()) sampler_.join();
  sample();
  std::optional<uint64_t> end = group_.usage_ns();
  if (!start_usage_ || !end) return std::nullopt;
  Split s;
  s.total_s = static_cast<double>(*end - *start_usage_) / 1e9;
  uint64_t guest = 0;
  for (const auto& [tid, span] : vcpu_ns_) guest += span.second - span.first;
  s.guest_s = static_cast<double>(guest) / 1e9;
  return s;
}

}  // namespace vmctl::bench
