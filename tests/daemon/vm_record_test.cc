#include "daemon/vm_record.h"

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <random>

namespace vmctl::daemon {
namespace {

namespace v1 = ::vmctl::v1;

VmRecord sample() {
  VmRecord r;
  r.name = "web1";
  r.config.set_kernel("/srv/guest.elf");
  r.config.set_initrd("/srv/initrd");
  r.config.set_cmdline("console=ttyS0 hb_ms=500");
  r.config.set_memory_bytes(3ull << 30);
  r.config.set_cpus(4);
  r.config.set_dirty_tracking("ring");
  r.config.set_dirty_ring_entries(8192);
  r.state = v1::VM_STATE_RUNNING;
  r.pid = 4711;
  r.exit_code = -3;
  r.error = "an error";
  r.migrated_to = "10.0.0.2:7443";
  r.created_unix_ms = 1764633600123;
  return r;
}

TEST(VmRecord, RoundTripKeepsEveryField) {
  VmRecord before = sample();
  Result<VmRecord> after = parse_vm_record(vm_record_to_json(before));
  ASSERT_TRUE(after.ok()) << after.error().message();
  EXPECT_EQ(after->name, before.name);
  EXPECT_EQ(after->config.SerializeAsString(), before.config.SerializeAsString());
  EXPECT_EQ(after->state, before.state);
  EXPECT_EQ(after->pid, before.pid);
  EXPECT_EQ(after->exit_code, before.exit_code);
  EXPECT_EQ(after->error, before.error);
  EXPECT_EQ(after->migrated_to, before.migrated_to);
  EXPECT_EQ(after->created_unix_ms, before.created_unix_ms);
}

TEST(VmRecord, TextThatIsNotUtf8IsReplacedInsteadOfThrowing) {
  VmRecord r = sample();
  r.error = "migration from peer failed: \xff\xfe bad id \xc3";  // a peer's bytes, quoted
  std::string text;
  ASSERT_NO_THROW(text = vm_record_to_json(r));
  Result<VmRecord> back = parse_vm_record(text);
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->error.rfind("migration from peer failed: \xEF\xBF\xBD", 0), 0u) << back->error;
  EXPECT_EQ(back->error.find('\xff'), std::string::npos);
}

TEST(VmRecord, ReadsWhatEarlierDaemonsWrote) {
  // vm.json as vmctld wrote it before this file existed.
  const char* text = R"({
  "config": {"cmdline": "", "cpus": 1, "dirty_ring_entries": 0, "dirty_tracking": "",
             "initrd": "", "kernel": "/k.elf", "memory_bytes": 268435456},
  "created_unix_ms": 1764600000000, "error": "", "exit_code": 0, "migrated_to": "",
  "name": "vm1", "pid": 1234, "state": "paused", "state_code": 3
})";
  Result<VmRecord> r = parse_vm_record(text);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->name, "vm1");
  EXPECT_EQ(r->state, v1::VM_STATE_PAUSED);
  EXPECT_EQ(r->pid, 1234);
  EXPECT_EQ(r->config.memory_bytes(), 268435456u);
  EXPECT_EQ(r->config.kernel(), "/k.elf");
}

TEST(VmRecord, MissingOptionalFieldsTakeTheirDefaultsAndUnknownOnesAreIgnored) {
  Result<VmRecord> r = parse_vm_record(R"({"name": "a", "state_code": 4, "added_later": [1]})");
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->state, v1::VM_STATE_STOPPED);
  EXPECT_EQ(r->pid, 0);
  EXPECT_EQ(r->config.cpus(), 0u);
}

struct Malformed {
  const char* text;
  const char* message;  // a part of the error
};

TEST(VmRecord, MalformedTextIsAClearErrorNamingWhatIsWrong) {
  const Malformed cases[] = {
      {"", "not JSON"},
      {R"({"name": "a", "state_code": 2)", "not JSON"},
      {"{\"name\": \"\xff\", \"state_code\": 2}", "not JSON"},
      {"[1, 2]", "it is an array in JSON, not an object"},
      {"42", "it is a number in JSON, not an object"},
      {R"({"state_code": 2})", "field 'name' is missing"},
      {R"({"name": "a"})", "field 'state_code' is missing"},
      {R"({"name": 7, "state_code": 2})", "field 'name' is a number, expected a string"},
      {R"({"name": "a", "state_code": "2"})",
       "field 'state_code' is a string, expected an integer"},
      {R"({"name": "a", "state_code": 99})", "field 'state_code' is 99, which is not a VM state"},
      {R"({"name": "a", "state_code": 0})", "which is not a VM state"},
      {R"({"name": "a", "state_code": 2.5})", "expected an integer"},
      {R"({"name": "a", "state_code": 99999999999})", "out of range"},
      {R"({"name": "a", "state_code": 2, "pid": -5})", "field 'pid' is -5, out of range"},
      {R"({"name": "a", "state_code": 2, "pid": 1e30})", "field 'pid' is a number"},
      {R"({"name": "a", "state_code": 2, "error": null})", "field 'error' is a null"},
      {R"({"name": "a", "state_code": 2, "config": []})",
       "field 'config' is an array, expected an object"},
      {R"({"name": "a", "state_code": 2, "config": {"cpus": "2"}})",
       "field 'config.cpus' is a string, expected an unsigned integer"},
      {R"({"name": "a", "state_code": 2, "config": {"cpus": 4294967296}})",
       "field 'config.cpus' is 4294967296, out of range"},
      {R"({"name": "a", "state_code": 2, "config": {"memory_bytes": -1}})",
       "field 'config.memory_bytes' is a number, expected an unsigned integer"},
      {R"({"name": "a", "state_code": 2, "config": {"kernel": {}}})",
       "field 'config.kernel' is an object, expected a string"},
  };
  for (const Malformed& c : cases) {
    Result<VmRecord> r = parse_vm_record(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_NE(r.error().message().find(c.message), std::string::npos)
        << c.text << " -> " << r.error().message();
    EXPECT_EQ(r.error().message().find('\n'), std::string::npos) << "one line";
    EXPECT_EQ(r.error().exit_code(), 2);
  }
}

TEST(VmRecord, ArbitraryBytesNeverThrow) {
  std::mt19937_64 rng(11);
  std::string valid = vm_record_to_json(sample());
  for (int i = 0; i < 5000; ++i) {
    std::string text = valid;
    // Flip, cut or splice: mostly invalid, sometimes a valid record of other values.
    for (int k = 0; k < 1 + static_cast<int>(rng() % 4); ++k) {
      size_t at = rng() % text.size();
      switch (rng() % 3) {
        case 0:
          text[at] = static_cast<char>(rng());
          break;
        case 1:
          text.resize(at);
          break;
        default:
          text.insert(at, std::string(1 + rng() % 3, "{}[]\":,0-e9\\"[rng() % 12]));
      }
      if (text.empty()) text = "{";
    }
    EXPECT_NO_THROW((void)parse_vm_record(text)) << text;
  }
}

class VmRecordFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "vm-record-" + std::to_string(getpid());
    std::system(("rm -rf '" + dir_ + "'").c_str());
    ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0);
    path_ = dir_ + "/vm.json";
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  std::string dir_, path_;
};

TEST_F(VmRecordFile, MissingFileIsNotFound) {
  Result<VmRecord> r = load_vm_record(path_, "web1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kNotFound);
}

TEST_F(VmRecordFile, MalformedFileSaysSoAndWhatToDo) {
  std::ofstream(path_) << "{\"name\": \"web1\", \"state_code\": ";
  Result<VmRecord> r = load_vm_record(path_, "web1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message().rfind("vm.json is malformed: not JSON: ", 0), 0u)
      << r.error().message();
  EXPECT_NE(r.error().message().find("(delete the VM or fix the file " + path_ + ")"),
            std::string::npos)
      << r.error().message();
}

TEST_F(VmRecordFile, RecordOfAnotherVmIsMalformed) {
  std::ofstream(path_) << vm_record_to_json(sample());
  Result<VmRecord> r = load_vm_record(path_, "web2");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("names VM 'web1'"), std::string::npos) << r.error().message();
  EXPECT_TRUE(load_vm_record(path_, "web1").ok());
}

TEST_F(VmRecordFile, HugeFileIsRefusedBeforeItIsRead) {
  std::ofstream(path_) << "{";
  ASSERT_EQ(truncate(path_.c_str(), 64 << 20), 0);  // sparse: no disk space
  Result<VmRecord> r = load_vm_record(path_, "web1");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("more than any VM record"), std::string::npos)
      << r.error().message();
}

TEST_F(VmRecordFile, SymlinkIsNotFollowed) {
  std::string elsewhere = dir_ + "/elsewhere.json";
  std::ofstream(elsewhere) << vm_record_to_json(sample());
  ASSERT_EQ(symlink(elsewhere.c_str(), path_.c_str()), 0);
  Result<VmRecord> r = load_vm_record(path_, "web1");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("vm.json is malformed: cannot open it"), std::string::npos)
      << r.error().message();
}

}  // namespace
}  // namespace vmctl::daemon
