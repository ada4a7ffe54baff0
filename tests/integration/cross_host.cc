#include "tests/integration/cross_host.h"

#include "proto/names.h"

#include <sys/stat.h>
#include <unistd.h>

#include <regex>
#include <sstream>
#include <thread>

namespace vmctl::testing {

using namespace std::chrono_literals;

Hosts* hosts = nullptr;

std::vector<std::string> Hosts::tls_flags() const {
  return {"--tls-ca",  tls_dir + "/ca.pem",  "--tls-cert", tls_dir + "/node.pem",
          "--tls-key", tls_dir + "/node.key"};
}

std::vector<std::string> Hosts::daemon_flags(const std::string& ip) const {
  std::vector<std::string> f = {"--listen", tcp(ip)};
  auto t = tls_flags();
  f.insert(f.end(), t.begin(), t.end());
  return f;
}

std::vector<std::string> Hosts::in_ns(const std::string& ns, std::vector<std::string> env) const {
  std::vector<std::string> p = {"ip", "netns", "exec", ns};
  if (!env.empty()) {
    p.push_back("env");
    p.insert(p.end(), env.begin(), env.end());
  }
  return p;
}

void CrossHost::SetUpTestSuite() {
  hosts = new Hosts;
  std::string id = std::to_string(getpid() % 100000);
  hosts->ns_a = "vmctl-a-" + id;
  hosts->ns_b = "vmctl-b-" + id;
  hosts->veth_a = "vma" + id;
  hosts->veth_b = "vmb" + id;
  hosts->dir = std::make_unique<ScratchDir>("xhost");
  hosts->tls_dir = hosts->dir->path() + "/tls";
  const Hosts& h = *hosts;
  // Namespaces left by an earlier run that was killed (their owner is gone) go first.
  shell(
      "for ns in $(ip netns list | awk '/^vmctl-[ab]-[0-9]+/{print $1}'); do "
      "kill -0 ${ns##*-} 2>/dev/null || ip netns del $ns; done");
  std::string setup = "set -e; ip netns add " + h.ns_a + "; ip netns add " + h.ns_b +
                      "; ip link add " + h.veth_a + " type veth peer name " + h.veth_b +
                      "; ip link set " + h.veth_a + " netns " + h.ns_a + "; ip link set " +
                      h.veth_b + " netns " + h.ns_b + "; ip -n " + h.ns_a + " addr add " +
                      h.addr_a + "/24 dev " + h.veth_a + "; ip -n " + h.ns_b + " addr add " +
                      h.addr_b + "/24 dev " + h.veth_b + "; for n in " + h.ns_a + " " + h.ns_b +
                      "; do ip -n $n link set lo up; done; ip -n " + h.ns_a + " link set " +
                      h.veth_a + " up; ip -n " + h.ns_b + " link set " + h.veth_b + " up";
  ASSERT_EQ(shell(setup), 0) << "creating the network namespaces failed (the suite needs root "
                                "and iproute2): "
                             << setup;
  ASSERT_EQ(shell("bash " VMCTL_SOURCE_DIR "/scripts/make-test-certs.sh '" + h.tls_dir + "' " +
                  h.addr_a + " " + h.addr_b),
            0);
  mkdir((h.dir->path() + "/a").c_str(), 0700);
  mkdir((h.dir->path() + "/b").c_str(), 0700);
  hosts->a =
      std::make_unique<Daemon>(h.dir->path() + "/a", h.daemon_flags(h.addr_a), h.in_ns(h.ns_a));
  hosts->b =
      std::make_unique<Daemon>(h.dir->path() + "/b", h.daemon_flags(h.addr_b), h.in_ns(h.ns_b));
}

void CrossHost::TearDownTestSuite() {
  if (!hosts) return;
  hosts->a.reset();
  hosts->b.reset();
  shell("ip netns del " + hosts->ns_a + " 2>/dev/null; ip netns del " + hosts->ns_b +
        " 2>/dev/null");
  hosts->dir.reset();
  delete hosts;
  hosts = nullptr;
}

void CrossHost::SetUp() {
  ASSERT_NE(hosts, nullptr);
  ASSERT_TRUE(hosts->a && hosts->b) << "the daemons did not start";
  link(true);
  // A fault test may have taken a daemon down, or given it faults: bring it back plain.
  for (auto [d, ns] :
       {std::pair{hosts->a.get(), hosts->ns_a}, std::pair{hosts->b.get(), hosts->ns_b}}) {
    if (d->prefix() != hosts->in_ns(ns)) {
      if (d->running()) d->stop();
      d->set_prefix(hosts->in_ns(ns));
    }
    if (!d->running()) d->start();
  }
  std::vector<GuestCopy> left = guest_copies(roots());
  ASSERT_TRUE(left.empty()) << "VM processes left by an earlier test: " << describe(left);
}

void CrossHost::TearDown() {
  std::vector<GuestCopy> left = guest_copies(roots());
  if (!left.empty()) {
    ADD_FAILURE() << "the test left VM processes behind (orphans): " << describe(left);
    kill_copies(roots());
  }
}

void CrossHost::with_faults(Daemon& d, std::vector<std::string> env) {
  const std::string& ns = &d == hosts->a.get() ? hosts->ns_a : hosts->ns_b;
  if (d.running()) d.stop();
  d.set_prefix(hosts->in_ns(ns, std::move(env)));
  d.start();
}

void CrossHost::link(bool up) {
  shell("ip -n " + hosts->ns_a + " link set " + hosts->veth_a + (up ? " up" : " down"));
}

v1::MigrateRequest CrossHost::request(const std::string& name, const std::string& to_ip) {
  v1::MigrateRequest r;
  r.set_name(name);
  r.set_destination(hosts->tcp(to_ip));
  r.set_compression(-1);
  return r;
}

void CrossHost::start_dirtier(Daemon& d, const std::string& name, uint64_t memory,
                              const std::string& args) {
  v1::VmInfo info;
  grpc::Status s = d.create(name, guest_path("dirtier.elf"), args, memory, 1, &info);
  ASSERT_TRUE(s.ok()) << s.error_message() << d.log();
  ASSERT_TRUE(d.wait_console(name, "^HB [0-9]+ .*total=[1-9]", 60s)) << d.console(name);
}

void CrossHost::expect_one_copy(const std::string& name, const std::string& root,
                                std::chrono::seconds settle) {
  auto deadline = std::chrono::steady_clock::now() + settle;
  std::vector<GuestCopy> copies;
  while (true) {
    copies = guest_copies(roots(), name);
    bool settled =
        copies.size() == 1 && copies[0].root == root && copies[0].answers && !copies[0].paused;
    if (settled) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "expected exactly one running copy of " << name << " in " << root
                    << ", found: " << describe(copies) << "; daemon A says "
                    << vm_state_name(A().get(name).state()) << ", daemon B says "
                    << vm_state_name(B().get(name).state());
      return;
    }
    std::this_thread::sleep_for(50ms);
  }
  std::string problem = verify_dirtier(copies[0], 60s);
  EXPECT_EQ(problem, "") << "the copy of " << name << " in " << root << " is damaged";
  Daemon& owner = root == hosts->root_a() ? A() : B();
  EXPECT_TRUE(owner.wait_state(name, v1::VM_STATE_RUNNING, 20s))
      << "its daemon says " << vm_state_name(owner.get(name).state()) << ": "
      << owner.get(name).error();
}

void CrossHost::expect_no_copy(const std::string& name, std::chrono::seconds settle) {
  auto deadline = std::chrono::steady_clock::now() + settle;
  std::vector<GuestCopy> copies;
  while (!(copies = guest_copies(roots(), name)).empty()) {
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "expected no copy of " << name << ", found: " << describe(copies);
      return;
    }
    std::this_thread::sleep_for(50ms);
  }
}

int CrossHost::max_hb(const std::string& console) {
  static const std::regex hb("^HB ([0-9]+)");
  int best = -1;
  std::istringstream in(console);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_search(line, m, hb)) best = std::max(best, std::stoi(m[1]));
  }
  return best;
}

size_t CrossHost::count(const std::string& text, const std::string& pattern) {
  std::regex re(pattern);
  size_t n = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) n += std::regex_search(line, re);
  return n;
}

void CrossHost::expect_running_and_intact(Daemon& d, const std::string& name) {
  EXPECT_TRUE(d.wait_state(name, v1::VM_STATE_RUNNING, 10s))
      << "state " << d.get(name).state() << " " << d.get(name).error();
  int before = max_hb(d.console(name));
  ASSERT_TRUE(d.wait_console(name, "^HB " + std::to_string(before + 2) + "\\b", 30s))
      << "the heartbeat stopped: " << d.console(name);
  size_t verifies = count(d.console(name), "^VERIFY ");
  ASSERT_TRUE(d.send_console(name, "verify\n").ok());
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (count(d.console(name), "^VERIFY ") == verifies &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  std::string console = d.console(name);
  EXPECT_NE(console.rfind("mismatches=0"), std::string::npos) << console;
  EXPECT_EQ(count(console, "MISMATCH"), 0u) << console;
  EXPECT_EQ(count(console, "VERIFY .*mismatches=[1-9]"), 0u) << console;
}

void CrossHost::stop_vm(const std::string& name) {
  for (Daemon* d : {&A(), &B()}) {
    if (!d->running()) continue;
    d->call(&v1::Vmctl::Stub::StopVm, name);
    d->call(&v1::Vmctl::Stub::DeleteVm, name);
  }
}

}  // namespace vmctl::testing
