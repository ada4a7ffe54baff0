#include "base/rotating_log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace vmctl {
namespace {

constexpr uint64_t kCap = 4096;

class RotatingLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "rotating-log-" + std::to_string(getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::system(("rm -rf '" + dir_ + "'").c_str());
    ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0);
    path_ = dir_ + "/console.log";
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  std::unique_ptr<RotatingLog> open_log(uint64_t cap = kCap) {
    Result<std::unique_ptr<RotatingLog>> log = RotatingLog::open(path_, cap);
    EXPECT_TRUE(log.ok()) << log.error().message();
    return log.ok() ? std::move(log).value() : nullptr;
  }
  static void write(RotatingLog& log, const std::string& text) {
    log.write(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  }
  static std::string line(int i) {
    std::string text = "line " + std::to_string(i) + " ";
    text.resize(99, 'x');
    return text + "\n";
  }
  static std::string read(const std::string& file) {
    std::ifstream in(file);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  static off_t size_of(const std::string& file) {
    struct stat st {};
    return stat(file.c_str(), &st) == 0 ? st.st_size : -1;
  }

  std::string dir_, path_;
};

TEST_F(RotatingLogTest, NeverExceedsTheCapAndKeepsOneOldGenerationOfWholeLines) {
  auto log = open_log();
  std::string all;
  for (int i = 0; i < 500; ++i) {
    write(*log, line(i));
    all += line(i);
    ASSERT_LE(size_of(path_), static_cast<off_t>(kCap)) << "after line " << i;
  }
  EXPECT_GE(log->rotations(), 10u);
  EXPECT_LE(size_of(path_ + ".1"), static_cast<off_t>(kCap));
  EXPECT_EQ(size_of(path_ + ".2"), -1) << "only one old generation is kept";
  std::string kept = read(path_ + ".1") + read(path_);
  ASSERT_FALSE(kept.empty());
  EXPECT_EQ(all.substr(all.size() - kept.size()), kept) << "the newest output, in order";
  EXPECT_EQ(read(path_ + ".1").rfind("line ", 0), 0u) << "rotation happens at line ends";
  EXPECT_EQ(read(path_ + ".1").back(), '\n');
}

TEST_F(RotatingLogTest, OutputWithoutLineEndsIsCutAtTheCap) {
  auto log = open_log();
  write(*log, std::string(3 * kCap + 100, 'y'));
  EXPECT_EQ(size_of(path_ + ".1"), static_cast<off_t>(kCap));
  EXPECT_EQ(size_of(path_), 100);
}

TEST_F(RotatingLogTest, AFileOverTheCapAlreadyIsRotatedAtTheFirstWrite) {
  std::ofstream(path_) << std::string(2 * kCap, 'z');
  auto log = open_log();
  write(*log, "fresh\n");
  EXPECT_EQ(read(path_), "fresh\n");
  EXPECT_EQ(size_of(path_ + ".1"), static_cast<off_t>(2 * kCap));
}

TEST_F(RotatingLogTest, TooSmallACapIsAClearError) {
  Result<std::unique_ptr<RotatingLog>> log = RotatingLog::open(path_, 100);
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.error().message().find("at least 4096"), std::string::npos)
      << log.error().message();
  EXPECT_EQ(log.error().exit_code(), 2);
}

TEST_F(RotatingLogTest, LogIsNeverOpenedThroughASymlink) {
  std::string victim = dir_ + "/victim";
  std::ofstream(victim) << "precious";
  ASSERT_EQ(symlink(victim.c_str(), path_.c_str()), 0);
  EXPECT_FALSE(RotatingLog::open(path_, kCap).ok());
  EXPECT_EQ(read(victim), "precious");
}

TEST_F(RotatingLogTest, FollowerSeesEveryLineAcrossRotations) {
  auto log = open_log();
  RotatingLogFollower follower(path_);
  std::vector<std::string> seen;
  for (int i = 0; i < 400; ++i) {
    write(*log, line(i));
    if (i % 7 == 0) {  // several lines between reads, a rotation among them now and then
      for (std::string& l : follower.new_lines()) seen.push_back(std::move(l));
    }
  }
  for (std::string& l : follower.new_lines()) seen.push_back(std::move(l));
  ASSERT_GE(log->rotations(), 5u);
  ASSERT_EQ(seen.size(), 400u);
  for (int i = 0; i < 400; ++i) {
    std::string expected = line(i);
    expected.pop_back();
    EXPECT_EQ(seen[i], expected);
  }
}

TEST_F(RotatingLogTest, FollowerStartsOverWhenTheFileShrinksOrIsReplaced) {
  std::ofstream(path_) << "a\nb\n";
  RotatingLogFollower follower(path_);
  EXPECT_EQ(follower.new_lines(), (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(truncate(path_.c_str(), 0), 0);
  std::ofstream(path_, std::ios::app) << "c\n";
  EXPECT_EQ(follower.new_lines(), (std::vector<std::string>{"c"}));
  ASSERT_EQ(unlink(path_.c_str()), 0);  // a new run of the VM starts a new log
  EXPECT_EQ(follower.new_lines(), std::vector<std::string>{});
  std::ofstream(path_) << "first of the new run\n";
  EXPECT_EQ(follower.new_lines(), std::vector<std::string>{"first of the new run"});
}

TEST_F(RotatingLogTest, FollowerReturnsEndlessLinesInBoundedPieces) {
  auto log = open_log(1 << 20);
  RotatingLogFollower follower(path_);
  write(*log, std::string(3 * RotatingLogFollower::kMaxLineBytes + 10, 'q'));
  std::vector<std::string> pieces = follower.new_lines();
  ASSERT_EQ(pieces.size(), 3u);
  for (const std::string& p : pieces) EXPECT_EQ(p.size(), RotatingLogFollower::kMaxLineBytes);
}

}  // namespace
}  // namespace vmctl
