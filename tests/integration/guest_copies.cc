#include "tests/integration/guest_copies.h"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "vmprocess/control_client.h"

namespace vmctl::testing {
namespace {

std::vector<std::string> cmdline(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  std::string cur;
  for (char c : all) {
    if (c == '\0') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return args;
}

bool is_zombie(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  std::getline(in, text);
  size_t close = text.rfind(')');
  return close == std::string::npos || close + 2 >= text.size() || text[close + 2] == 'Z';
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

std::string GuestCopy::describe() const {
  return vm + " pid " + std::to_string(pid) + " in " + root + " (" +
         (!answers ? "not answering"
          : paused ? "paused"
                   : "running") +
         ")";
}

std::string describe(const std::vector<GuestCopy>& copies) {
  std::string out;
  for (const GuestCopy& c : copies) out += (out.empty() ? "" : "; ") + c.describe();
  return out.empty() ? "none" : out;
}

std::vector<GuestCopy> guest_copies(const std::vector<std::string>& roots, const std::string& vm) {
  std::vector<GuestCopy> out;
  DIR* d = ::opendir("/proc");
  if (!d) return out;
  std::vector<pid_t> pids;
  while (dirent* e = ::readdir(d)) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid > 0) pids.push_back(pid);
  }
  ::closedir(d);
  for (pid_t pid : pids) {
    std::vector<std::string> args = cmdline(pid);
    if (args.size() < 2 || args[0].find("vmctl") == std::string::npos) continue;
    if (args[0].find("vmctld") != std::string::npos) continue;
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] != "--control") continue;
      const std::string& control = args[i + 1];
      for (const std::string& root : roots) {
        std::string prefix = root + "/vms/";
        if (control.rfind(prefix, 0) != 0) continue;
        std::string name = control.substr(prefix.size());
        name = name.substr(0, name.find('/'));
        if (!vm.empty() && name != vm) continue;
        if (is_zombie(pid)) continue;
        GuestCopy c;
        c.pid = pid;
        c.vm = name;
        c.root = root;
        c.control = control;
        Result<nlohmann::json> status =
            vmprocess::control_request(control, {{"op", "status"}},
                                       vmprocess::ControlTimeouts{std::chrono::milliseconds(500),
                                                                  std::chrono::milliseconds(2000)});
        // The socket's owner (SO_PEERCRED): the VM process's own pid is 1 in its namespace.
        Result<pid_t> owner = status.ok() ? vmprocess::control_socket_pid(control)
                                          : Result<pid_t>(Error::user("no answer"));
        if (owner.ok() && *owner == pid) {
          c.answers = true;
          c.paused = status->value("paused", false);
        }
        out.push_back(c);
      }
    }
  }
  return out;
}

std::string verify_dirtier(const GuestCopy& copy, std::chrono::milliseconds timeout) {
  std::string console = copy.control.substr(0, copy.control.rfind('/')) + "/console.log";
  static const std::regex verify("^VERIFY pages=([0-9]+) mismatches=([0-9]+)");
  auto count = [&] {
    std::istringstream in(read_file(console));
    size_t n = 0;
    for (std::string line; std::getline(in, line);) n += std::regex_search(line, verify);
    return n;
  };
  size_t before = count();
  Result<nlohmann::json> sent =
      vmprocess::control_request(copy.control, {{"op", "console"}, {"data", "verify\n"}});
  if (!sent.ok()) return "cannot reach it: " + sent.error().message();
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (count() == before) {
    if (std::chrono::steady_clock::now() > deadline) return "no VERIFY answer in its console";
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::string text = read_file(console);
  if (text.find("MISMATCH") != std::string::npos) return "its console shows MISMATCH lines";
  std::istringstream in(text);
  std::string last;
  for (std::string line; std::getline(in, line);) {
    if (std::regex_search(line, verify)) last = line;
  }
  std::smatch m;
  if (!std::regex_search(last, m, verify)) return "unreadable VERIFY line";
  if (m[2] != "0") return "the guest found corrupted pages: " + last;
  if (m[1] == "0") return "the guest checked no pages: " + last;
  return "";
}

std::string kill_copies(const std::vector<std::string>& roots) {
  std::vector<GuestCopy> copies = guest_copies(roots);
  for (const GuestCopy& c : copies) ::kill(c.pid, SIGKILL);
  return describe(copies);
}

}  // namespace vmctl::testing
