#include "tests/integration/daemon_fixture.h"

#include "tests/integration/guest_copies.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>

namespace vmctl::testing {

using namespace std::chrono_literals;

int shell(const std::string& command) {
  int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

ScratchDir::ScratchDir(const std::string& name) {
  path_ = ::testing::TempDir() + "vmctl-" + name + "-" + std::to_string(getpid());
  shell("rm -rf '" + path_ + "'");
  mkdir(path_.c_str(), 0700);
}

ScratchDir::~ScratchDir() {
  // VM processes outlive their daemon by design, so a test must end its own. One left behind is
  // an orphan: that fails the test (then it is killed, so that later tests start clean).
  std::vector<GuestCopy> left = guest_copies({path_}, "");
  std::vector<GuestCopy> nested;
  for (const char* host : {"/a/state", "/b/state", "/state"}) {
    for (const GuestCopy& c : guest_copies({path_ + host}, "")) nested.push_back(c);
  }
  left.insert(left.end(), nested.begin(), nested.end());
  if (!left.empty())
    ADD_FAILURE() << "VM processes left behind in " << path_ << ": " << describe(left);
  shell("pkill -9 -f -- '" + path_ + "/' >/dev/null 2>&1");
  shell("rm -rf '" + path_ + "'");
}

Daemon::Daemon(std::string dir, std::vector<std::string> extra, std::vector<std::string> prefix)
    : dir_(std::move(dir)), extra_(std::move(extra)), prefix_(std::move(prefix)) {
  start();
}

Daemon::~Daemon() {
  if (process_) stop(SIGTERM);
}

void Daemon::start() {
  std::vector<std::string> args = prefix_;
  args.push_back(vmctld_binary());
  for (const std::string& a : {std::string("--socket"), socket(), std::string("--state-dir"),
                               dir_ + "/state", std::string("--log-level"), std::string("debug")}) {
    args.push_back(a);
  }
  args.insert(args.end(), extra_.begin(), extra_.end());
  std::string program = args.front();
  args.erase(args.begin());
  ::unlink(socket().c_str());
  process_ = std::make_unique<VmctlProcess>(program, args);
  // Connect once the socket is there: a failed first attempt would put the channel into gRPC's
  // reconnect backoff (seconds).
  struct stat st {};
  for (int i = 0; i < 500 && stat(socket().c_str(), &st) != 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  grpc::ChannelArguments channel_args;
  channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  channel_args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
  channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 200);
  channel_ = grpc::CreateCustomChannel(address(), grpc::InsecureChannelCredentials(), channel_args);
  stub_ = v1::Vmctl::NewStub(channel_);
  // Ready when it answers.
  for (int i = 0; i < 500; ++i) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 100ms);
    v1::ListVmsResponse r;
    if (stub_->ListVms(&context, v1::ListVmsRequest(), &r).ok()) return;
    std::this_thread::sleep_for(20ms);
  }
  ADD_FAILURE() << "vmctld did not come up: " << process_->err();
}

void Daemon::stop(int sig) {
  if (!process_) return;
  // Drop our connection first: vmctld waits for open client connections when it shuts down.
  stub_.reset();
  channel_.reset();
  process_->signal(sig);
  process_->wait_exit(30s);
  process_.reset();
}

void Daemon::stop_vms() {
  if (!stub_) return;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListVmsResponse vms;
  if (!stub_->ListVms(&context, v1::ListVmsRequest(), &vms).ok()) return;
  for (const v1::VmInfo& vm : vms.vms()) call(&v1::Vmctl::Stub::StopVm, vm.name());
}

std::string Daemon::log() {
  return process_ ? process_->err() : "";
}

// The test's channel may have gone idle while the test did other things, and a call on a
// connection that is just being torn down fails with UNAVAILABLE before it reaches the daemon:
// that one is tried again (a create that did reach it answers "exists already").
grpc::Status Daemon::create_with_retry(const v1::CreateVmRequest& request, v1::VmInfo* out) {
  grpc::Status s;
  for (int attempt = 0; attempt < 3; ++attempt) {
    grpc::ClientContext context;
    context.set_wait_for_ready(true);
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    v1::VmInfo info;
    s = stub_->CreateVm(&context, request, &info);
    if (out) *out = info;
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE) break;
  }
  return s;
}

grpc::Status Daemon::create(const std::string& name, const std::string& kernel,
                            const std::string& cmdline, uint64_t memory, unsigned cpus,
                            v1::VmInfo* out) {
  grpc::ClientContext context;
  v1::CreateVmRequest request;
  request.set_name(name);
  request.set_start(true);
  request.mutable_config()->set_kernel(kernel);
  request.mutable_config()->set_cmdline(cmdline);
  request.mutable_config()->set_memory_bytes(memory);
  request.mutable_config()->set_cpus(cpus);
  // VMCTL_TEST_DIRTY_TRACKING=ring|bitmap runs the daemon and migration suites with that source.
  if (const char* tracking = std::getenv("VMCTL_TEST_DIRTY_TRACKING")) {
    request.mutable_config()->set_dirty_tracking(tracking);
  }
  return create_with_retry(request, out);
}

grpc::Status Daemon::create(const std::string& name, const v1::VmConfig& config, v1::VmInfo* out) {
  grpc::ClientContext context;
  v1::CreateVmRequest request;
  request.set_name(name);
  request.set_start(true);
  *request.mutable_config() = config;
  return create_with_retry(request, out);
}

v1::VmInfo Daemon::get(const std::string& name, grpc::Status* status) {
  if (!stub_) {
    if (status) *status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the daemon is not running");
    return v1::VmInfo();
  }
  grpc::ClientContext context;
  // A daemon under test may be stopped or dead: a question to it must not hang the test.
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::VmRef ref;
  ref.set_name(name);
  v1::VmInfo info;
  grpc::Status s = stub_->GetVm(&context, ref, &info);
  if (status) *status = s;
  return info;
}

grpc::Status Daemon::call(grpc::Status (v1::Vmctl::Stub::*method)(grpc::ClientContext*,
                                                                  const v1::VmRef&, v1::VmInfo*),
                          const std::string& name, v1::VmInfo* out) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::VmRef ref;
  ref.set_name(name);
  v1::VmInfo info;
  grpc::Status s = ((*stub_).*method)(&context, ref, &info);
  if (out) *out = info;
  return s;
}

grpc::Status Daemon::send_console(const std::string& name, const std::string& text) {
  grpc::ClientContext context;
  v1::ConsoleInput input;
  input.set_name(name);
  input.set_data(text);
  v1::VmInfo info;
  return stub_->SendConsole(&context, input, &info);
}

std::string Daemon::console(const std::string& name) {
  // The log rotates (base/rotating_log.h): the generation before the current one comes first.
  std::string log = dir_ + "/state/vms/" + name + "/console.log";
  std::string text;
  for (const std::string& file : {log + ".1", log}) {
    std::ifstream in(file, std::ios::binary);
    text.append(std::istreambuf_iterator<char>(in), {});
  }
  return text;
}

std::optional<std::string> Daemon::wait_console(const std::string& name, const std::string& pattern,
                                                std::chrono::milliseconds timeout) {
  std::regex re(pattern);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    // Whole lines only: the guest may be half-way through the last one (a partial
    // "APICTEST done pass=18 fail" once matched "^APICTEST done").
    std::string all = console(name);
    std::istringstream text(all.substr(0, all.rfind('\n') + 1));
    for (std::string line; std::getline(text, line);) {
      if (std::regex_search(line, re)) return line;
    }
    std::this_thread::sleep_for(20ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return std::nullopt;
}

bool Daemon::wait_state(const std::string& name, v1::VmState state,
                        std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    if (get(name).state() == state) return true;
    std::this_thread::sleep_for(20ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

ConsoleWatch::ConsoleWatch(Daemon& daemon, const std::string& name) {
  v1::WatchVmRequest request;
  request.set_name(name);
  request.set_console(true);
  auto reader = daemon.stub().WatchVm(&context_, request);
  thread_ = std::thread([this, r = std::move(reader)] {
    v1::VmEvent event;
    while (r->Read(&event)) {
      if (!event.has_console_line()) continue;
      std::lock_guard lock(mu_);
      lines_.push_back({event.unix_ms(), event.console_line()});
    }
    r->Finish();
  });
}

ConsoleWatch::~ConsoleWatch() {
  context_.TryCancel();
  thread_.join();
}

std::vector<ConsoleWatch::Line> ConsoleWatch::lines() {
  std::lock_guard lock(mu_);
  return lines_;
}

MigrationResult migrate(Daemon& source, const v1::MigrateRequest& request,
                        const std::function<void(const v1::MigrationProgress&)>& on_progress) {
  MigrationResult result;
  grpc::ClientContext context;
  auto reader = source.stub().Migrate(&context, request);
  v1::MigrationProgress p;
  while (reader->Read(&p)) {
    result.progress.push_back(p);
    if (on_progress) on_progress(p);
  }
  result.status = reader->Finish();
  return result;
}

}  // namespace vmctl::testing
