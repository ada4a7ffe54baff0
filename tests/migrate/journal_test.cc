#include "migrate/journal.h"

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace vmctl::migrate {
namespace {

class Journal : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vmctl-journal-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  MigrationRecord record(MigrationPhase phase) {
    MigrationRecord r;
    r.id = "0123456789abcdef0123456789abcdef";
    r.role = MigrationRole::kDestination;
    r.phase = phase;
    r.vm = "web1";
    r.peer = "10.0.0.1";
    return r;
  }
  std::string path() { return dir_ + "/0123456789abcdef0123456789abcdef.json"; }
  std::string dir_;
};

TEST_F(Journal, EveryPhaseChangeIsReadBack) {
  MigrationJournal j = MigrationJournal::open(dir_).value();
  for (MigrationPhase p :
       {MigrationPhase::kAccepted, MigrationPhase::kCommitted, MigrationPhase::kResumed}) {
    ASSERT_TRUE(j.save(record(p)).ok());
    auto loaded = j.load(record(p).id);
    ASSERT_TRUE(loaded.ok() && *loaded) << (loaded.ok() ? "none" : loaded.error().message());
    EXPECT_EQ((*loaded)->phase, p);
    EXPECT_EQ((*loaded)->vm, "web1");
  }
  EXPECT_EQ(j.load_all().size(), 1u);
}

// A crash in the middle of a phase change leaves the slot being written torn: the record read
// back is the phase before, never garbage and never an error.
TEST_F(Journal, ATornWriteLeavesThePreviousPhase) {
  MigrationJournal j = MigrationJournal::open(dir_).value();
  ASSERT_TRUE(j.save(record(MigrationPhase::kAccepted)).ok());
  ASSERT_TRUE(j.save(record(MigrationPhase::kCommitted)).ok());  // into the second slot
  {
    int fd = ::open(path().c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "garbage", 7, 4096 + 40), 7);  // tear the newest slot
    ::close(fd);
  }
  auto loaded = j.load(record(MigrationPhase::kAccepted).id);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  EXPECT_EQ((*loaded)->phase, MigrationPhase::kAccepted);
  // The next change goes over the torn slot and wins again.
  ASSERT_TRUE(j.save(record(MigrationPhase::kDiscarded)).ok());
  EXPECT_EQ(j.load(record(MigrationPhase::kAccepted).id).value()->phase,
            MigrationPhase::kDiscarded);
}

TEST_F(Journal, AFileWithNoWholeRecordIsAClearErrorAndLoadAllSaysSo) {
  MigrationJournal j = MigrationJournal::open(dir_).value();
  std::ofstream(path()) << "{\"not\": \"a record\"}";
  auto loaded = j.load(record(MigrationPhase::kAccepted).id);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.error().message().find("neither of its two slots"), std::string::npos)
      << loaded.error().message();
  std::vector<std::string> problems;
  EXPECT_TRUE(j.load_all(&problems).empty());
  EXPECT_EQ(problems.size(), 1u);
}

TEST_F(Journal, IdsThatAreNotHexAreRefusedBeforeTheyReachAFileName) {
  MigrationJournal j = MigrationJournal::open(dir_).value();
  MigrationRecord r = record(MigrationPhase::kAccepted);
  for (std::string id :
       {"../../../../etc/passwd.json-xxxxxxx", "", "0123456789ABCDEF0123456789abcdef"}) {
    r.id = id;
    Status saved = j.save(r);
    EXPECT_FALSE(saved.ok()) << id;
    EXPECT_FALSE(j.load(id).ok()) << id;
  }
}

}  // namespace
}  // namespace vmctl::migrate
