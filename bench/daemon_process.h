// A vmctld started by a benchmark: its own state directory, a unix socket for the benchmark's
// gRPC calls and a TLS listener on 127.0.0.1 for migrations from the other daemon.
#pragma once

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include "bench/cpu_accounting.h"
#include "proto/vmctl.grpc.pb.h"

namespace vmctl::bench {

class DaemonProcess {
 public:
  // `tls` holds ca.pem, node.pem and node.key (scripts/make-test-certs.sh).
  // `config`: a vmctld.toml for --config (none when empty). `group`: the cgroup the daemon (and
  // so every VM process it starts) runs in, for CPU accounting.
  DaemonProcess(const std::string& dir, int port, const std::string& tls,
                const std::string& config = "", const CpuGroup* group = nullptr)
      : dir_(dir) {
    using namespace std::chrono_literals;
    mkdir(dir.c_str(), 0700);
    // VMCTL_BENCH_LOG=info (or debug) shows the daemons' logs on stderr, with timestamps, to see
    // where the time goes.
    const char* level = std::getenv("VMCTL_BENCH_LOG");
    std::vector<std::string> args = {VMCTLD_BINARY,
                                     "--socket",
                                     dir + "/vmctld.sock",
                                     "--state-dir",
                                     dir + "/state",
                                     "--listen",
                                     fmt::format("127.0.0.1:{}", port),
                                     "--tls-ca",
                                     tls + "/ca.pem",
                                     "--tls-cert",
                                     tls + "/node.pem",
                                     "--tls-key",
                                     tls + "/node.key",
                                     "--log-level",
                                     level && *level ? level : "warn"};
    if (!config.empty()) args.insert(args.end(), {"--config", config});
    pid_ = fork();
    if (pid_ == 0) {
      if (group) group->enter();
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    struct stat st {};
    for (int i = 0; i < 500 && stat((dir + "/vmctld.sock").c_str(), &st) != 0; ++i) {
      std::this_thread::sleep_for(10ms);
    }
    stub_ = v1::Vmctl::NewStub(
        grpc::CreateChannel("unix:" + dir + "/vmctld.sock", grpc::InsecureChannelCredentials()));
  }
  ~DaemonProcess() {
    stub_.reset();
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  v1::Vmctl::Stub& stub() { return *stub_; }
  std::string console_path(const std::string& name) const {
    return dir_ + "/state/vms/" + name + "/console.log";
  }
  std::string console(const std::string& name) {
    std::ifstream in(console_path(name));
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  bool wait_console(const std::string& name, const std::string& pattern,
                    std::chrono::seconds timeout) {
    using namespace std::chrono_literals;
    std::regex re(pattern);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (std::regex_search(console(name), re)) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
  // Stops and deletes the VM if it is there (errors ignored: it may have migrated away).
  void remove(const std::string& name) {
    for (auto method : {&v1::Vmctl::Stub::StopVm, &v1::Vmctl::Stub::DeleteVm}) {
      grpc::ClientContext c;
      v1::VmRef ref;
      ref.set_name(name);
      v1::VmInfo info;
      (void)(stub_.get()->*method)(&c, ref, &info);
    }
  }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  std::unique_ptr<v1::Vmctl::Stub> stub_;
};

}  // namespace vmctl::bench
