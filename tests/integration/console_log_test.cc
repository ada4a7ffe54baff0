// A guest cannot fill the host's disk through its console: the console log is capped and rotated
// (vmctl --console-log-max, vmctld --console-log-max), and the daemon's console followers
// (WatchVm) read on across rotations. The guest is the heartbeat, told to "flood N".
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <regex>
#include <sstream>

#include "tests/integration/daemon_fixture.h"
#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

constexpr off_t kCap = 64 << 10;
constexpr int kFloodLines = 2000;  // 200 KB: three rotations and more

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

off_t size_of(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

// Polls both generations of a console log for a whole line matching `pattern`.
bool wait_for_log_line(const std::string& log, const std::string& pattern,
                       std::chrono::milliseconds timeout) {
  std::regex re(pattern);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    std::string all = read_file(log + ".1") + read_file(log);
    std::istringstream text(all.substr(0, all.rfind('\n') + 1));
    for (std::string line; std::getline(text, line);) {
      if (std::regex_search(line, re)) return true;
    }
    std::this_thread::sleep_for(20ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

// The numbers of the "FLOOD n ..." lines in `text`, in order.
std::vector<int> flood_numbers(const std::vector<std::string>& lines) {
  std::vector<int> numbers;
  std::regex re("^FLOOD ([0-9]+) f+\r?$");
  std::smatch m;
  for (const std::string& line : lines) {
    if (std::regex_match(line, m, re)) numbers.push_back(std::stoi(m[1]));
  }
  return numbers;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(ConsoleLog, GuestFloodIsCappedAndRotatedKeepingOneOldGeneration) {
  ScratchDir dir("console-log");
  std::string log = dir.path() + "/console.log";
  VmctlProcess vm({"run", "--kernel", guest_path("heartbeat.elf"), "--cmdline", "hb_ms=100",
                   "--console-log", log, "--console-log-max", std::to_string(kCap)});
  ASSERT_TRUE(wait_for_log_line(log, "^HB 1 ", 60s)) << vm.err();
  vm.send(fmt::format("flood {}\n", kFloodLines));
  ASSERT_TRUE(wait_for_log_line(log, "^FLOOD done lines=", 120s)) << vm.err();
  EXPECT_LE(size_of(log), kCap);
  EXPECT_LE(size_of(log + ".1"), kCap);
  EXPECT_GT(size_of(log + ".1"), kCap / 2) << "the old generation is kept";
  EXPECT_EQ(size_of(log + ".2"), -1) << "only one old generation is kept";
  // What is kept is the newest output, whole lines in order up to the last one written.
  std::vector<int> kept = flood_numbers(lines_of(read_file(log + ".1") + read_file(log)));
  ASSERT_FALSE(kept.empty());
  EXPECT_EQ(kept.back(), kFloodLines - 1);
  for (size_t i = 1; i < kept.size(); ++i) ASSERT_EQ(kept[i], kept[i - 1] + 1) << i;
  vm.send("exit 0\n");
  EXPECT_EQ(vm.wait_exit(60s), 0) << vm.err();
}

TEST(ConsoleLog, TooSmallACapIsOneClearLine) {
  ScratchDir dir("console-log-small");
  VmctlProcess vm({"run", "--console-log", dir.path() + "/c.log", "--console-log-max", "100"});
  EXPECT_EQ(vm.wait_exit(30s), 2);
  std::string err = vm.err();
  EXPECT_NE(err.find("at least 4096"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
}

TEST(ConsoleLog, DaemonCapsEachVmsLogAndWatchVmFollowsItAcrossRotations) {
  ScratchDir dir("console-log-daemon");
  Daemon d(dir.path(), {"--console-log-max", std::to_string(kCap)});
  ASSERT_TRUE(d.create("flood", guest_path("heartbeat.elf"), "hb_ms=100", 64 << 20, 1).ok());
  ASSERT_TRUE(d.wait_console("flood", "^HB 1 ", 60s))
      << d.console("flood") << d.get("flood").DebugString() << d.log();
  ConsoleWatch watch(d, "flood");
  ASSERT_TRUE(d.send_console("flood", fmt::format("flood {}\n", kFloodLines)).ok());
  ASSERT_TRUE(d.wait_console("flood", "^FLOOD done lines=", 120s));
  std::string log = dir.path() + "/state/vms/flood/console.log";
  EXPECT_LE(size_of(log), kCap);
  EXPECT_LE(size_of(log + ".1"), kCap);
  EXPECT_GT(size_of(log + ".1"), 0) << "the log was to rotate";
  // The follower saw every line once, in order, through every rotation.
  std::vector<std::string> seen;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  do {
    seen.clear();
    for (const ConsoleWatch::Line& line : watch.lines()) seen.push_back(line.text);
    if (std::any_of(seen.begin(), seen.end(),
                    [](const std::string& l) { return l.rfind("FLOOD done", 0) == 0; })) {
      break;
    }
    std::this_thread::sleep_for(20ms);
  } while (std::chrono::steady_clock::now() < deadline);
  std::vector<int> numbers = flood_numbers(seen);
  ASSERT_EQ(numbers.size(), static_cast<size_t>(kFloodLines));
  for (int i = 0; i < kFloodLines; ++i) ASSERT_EQ(numbers[i], i);
  d.stop_vms();
}

}  // namespace
}  // namespace vmctl::testing
