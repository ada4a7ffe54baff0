// Snapshot and restore end to end: a running test guest, `vmctl snapshot` over the control
// socket, `vmctl restore` in a new process, and the guest continuing as if nothing happened.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>

#include "state/lapic.h"
#include "state/stream.h"
#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;
namespace ps = proto::state;

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/" + std::to_string(getpid()) + "-" + name;
}

int vmctl(const std::vector<std::string>& args, std::string* out = nullptr,
          std::string* err = nullptr) {
  VmctlProcess p(args);
  std::optional<int> code = p.wait_exit(120s);
  if (out) *out = p.out();
  if (err) *err = p.err();
  return code.value_or(-1);
}

int number_after(const std::string& line, const std::string& prefix) {
  return std::stoi(line.substr(line.find(prefix) + prefix.size()));
}

TEST(Snapshot, HeartbeatContinuesInANewProcessWithoutRestarting) {
  std::string sock = temp_path("hb.sock"), file = temp_path("hb.snap");
  int at_snapshot = 0;
  {
    VmctlProcess vm({"run", "--control", sock, "--cmdline", "hb_ms=50"});
    ASSERT_TRUE(vm.wait_for_line("^HB 5\\b", 60s)) << vm.out() << vm.err();
    std::string out, err;
    ASSERT_EQ(vmctl({"snapshot", "--control", sock, file}, &out, &err), 0) << err;
    EXPECT_NE(out.find("snapshot " + file), std::string::npos) << out;
    ASSERT_TRUE(vm.wait_for_line("^HB 8\\b", 30s)) << "the source keeps running after a snapshot";
    at_snapshot = 5;
    vm.signal(SIGTERM);
    EXPECT_EQ(vm.wait_exit(30s), 0);
  }
  VmctlProcess restored({"restore", file});
  auto first = restored.wait_for_line("^HB [0-9]+", 60s);
  ASSERT_TRUE(first) << restored.out() << restored.err();
  int n = number_after(*first, "HB ");
  EXPECT_GT(n, at_snapshot) << "the heartbeat must continue, not restart: " << *first;
  EXPECT_LT(n, at_snapshot + 5) << *first;
  ASSERT_TRUE(restored.wait_for_line("^HB " + std::to_string(n + 3) + "\\b", 30s))
      << restored.out();
  restored.send("exit 3\n");
  EXPECT_EQ(restored.wait_exit(30s), 3) << restored.err();
  unlink(file.c_str());
}

TEST(Snapshot, DirtierOnTwoVcpusFindsNoMismatchAfterRestore) {
  std::string sock = temp_path("d.sock"), file = temp_path("d.snap");
  {
    VmctlProcess vm({"run", "--control", sock, "--cpus", "2", "--memory", "512M", "--kernel",
                     guest_path("dirtier.elf"), "--cmdline", "mib=64 rate=0 hb_ms=100"});
    ASSERT_TRUE(vm.wait_for_line("^HB 3 .*total=[1-9]", 60s)) << vm.out() << vm.err();
    std::string err;
    ASSERT_EQ(vmctl({"snapshot", "--control", sock, file}, nullptr, &err), 0) << err;
    vm.signal(SIGTERM);
    EXPECT_EQ(vm.wait_exit(30s), 0);
    EXPECT_EQ(vm.count_lines("MISMATCH"), 0u) << vm.out();
  }
  VmctlProcess restored({"restore", file});
  ASSERT_TRUE(restored.wait_for_line("^HB [0-9]+ ", 60s)) << restored.out() << restored.err();
  restored.send("verify\n");
  auto verify = restored.wait_for_line("^VERIFY ", 60s);
  ASSERT_TRUE(verify) << restored.out();
  EXPECT_NE(verify->find("pages=16384 mismatches=0"), std::string::npos) << *verify;
  restored.send("verify\n");
  ASSERT_TRUE(restored.wait_for_line("^VERIFY .*\\n?", 60s));
  restored.send("exit 0\n");
  EXPECT_EQ(restored.wait_exit(60s), 0) << restored.err();
  EXPECT_EQ(restored.count_lines("MISMATCH"), 0u) << restored.out();
  unlink(file.c_str());
}

// All records of a stream, decoded enough to compare.
struct Stream {
  std::vector<state::Record> records;
};

Stream read_stream(const std::string& path) {
  Stream s;
  auto source = state::FileSource::open(path);
  EXPECT_TRUE(source.ok());
  state::RecordReader reader(**source, path);
  while (true) {
    auto r = reader.next();
    EXPECT_TRUE(r.ok()) << r.error().message();
    if (!r.ok() || !r.value()) break;
    s.records.push_back(std::move(*r.value()));
  }
  return s;
}

TEST(Snapshot, SnapshotOfARestoredPausedVmMatchesTheOriginalRecordByRecord) {
  std::string sock = temp_path("p1.sock"), sock2 = temp_path("p2.sock");
  std::string a = temp_path("a.snap"), b = temp_path("b.snap");
  VmctlProcess vm({"run", "--control", sock, "--cpus", "2", "--kernel", guest_path("dirtier.elf"),
                   "--cmdline", "mib=16 rate=64 hb_ms=100"});
  ASSERT_TRUE(vm.wait_for_line("^HB 2 ", 60s)) << vm.out() << vm.err();
  std::string err;
  ASSERT_EQ(vmctl({"snapshot", "--stop", "--control", sock, a}, nullptr, &err), 0) << err;
  VmctlProcess restored({"restore", "--paused", "--control", sock2, a});
  // The restored VM never runs: its state must be exactly what was loaded.
  for (int i = 0; i < 100 && access(sock2.c_str(), F_OK) != 0; ++i) usleep(100 * 1000);
  ASSERT_EQ(vmctl({"snapshot", "--stop", "--control", sock2, b}, nullptr, &err), 0) << err;
  restored.signal(SIGTERM);
  vm.signal(SIGTERM);
  restored.wait_exit(30s);
  vm.wait_exit(30s);

  Stream sa = read_stream(a), sb = read_stream(b);
  ASSERT_EQ(sa.records.size(), sb.records.size());
  for (size_t i = 0; i < sa.records.size(); ++i) {
    const state::Record &ra = sa.records[i], &rb = sb.records[i];
    ASSERT_EQ(ra.type, rb.type) << "record " << i;
    auto ma = ra.message();
    auto mb = rb.message();
    switch (ra.type) {
      case ps::RecordType::MEMORY_PAGES: {
        auto pa = ma->getRoot<ps::MemoryPages>(), pb = mb->getRoot<ps::MemoryPages>();
        ASSERT_EQ(pa.getRuns().size(), pb.getRuns().size()) << "record " << i;
        for (unsigned k = 0; k < pa.getRuns().size(); ++k) {
          EXPECT_EQ(pa.getRuns()[k].getFirstPage(), pb.getRuns()[k].getFirstPage());
          EXPECT_EQ(pa.getRuns()[k].getCount(), pb.getRuns()[k].getCount());
        }
        EXPECT_TRUE(pa.getData() == pb.getData()) << "memory differs in record " << i;
        break;
      }
      case ps::RecordType::VCPU: {
        auto va = ma->getRoot<ps::Vcpu>(), vb = mb->getRoot<ps::Vcpu>();
        EXPECT_EQ(va.getMpState(), vb.getMpState());
        EXPECT_EQ(va.getRegs().getRip(), vb.getRegs().getRip());
        EXPECT_EQ(va.getRegs().getRsp(), vb.getRegs().getRsp());
        EXPECT_EQ(va.getRegs().getRflags(), vb.getRegs().getRflags());
        EXPECT_EQ(va.getRegs().getRax(), vb.getRegs().getRax());
        EXPECT_EQ(va.getSregs().getCr3(), vb.getSregs().getCr3());
        EXPECT_EQ(va.getSregs().getEfer(), vb.getSregs().getEfer());
        EXPECT_EQ(va.getSregs().getApicBase(), vb.getSregs().getApicBase());
        {
          auto xa = va.getXsave(), xb = vb.getXsave();
          ASSERT_EQ(xa.size(), xb.size());
          std::string diffs;
          for (size_t k = 0; k < xa.size(); ++k) {
            // XSTATE_BV (bytes 512-519) may mark a component in its init state either way;
            // the register contents themselves must match.
            if (k >= 512 && k < 520) continue;
            if (xa[k] != xb[k]) diffs += std::to_string(k) + " ";
          }
          EXPECT_TRUE(diffs.empty()) << "XSAVE differs at bytes " << diffs;
        }
        std::map<uint32_t, uint64_t> msa, msb;
        for (auto m : va.getMsrs()) msa[m.getIndex()] = m.getValue();
        for (auto m : vb.getMsrs()) msb[m.getIndex()] = m.getValue();
        // Time moves: the TSC and the kvmclock-derived MSRs may differ.
        for (uint32_t moving : {0x10u, 0x3bu}) {
          msa.erase(moving);
          msb.erase(moving);
        }
        for (auto& [index, value] : msa) {
          EXPECT_EQ(value, msb[index]) << "MSR 0x" << std::hex << index;
        }
        break;
      }
      case ps::RecordType::LAPIC: {
        state::LapicState la = state::from_record(ma->getRoot<ps::Lapic>());
        state::LapicState lb = state::from_record(mb->getRoot<ps::Lapic>());
        EXPECT_EQ(la.isr, lb.isr);
        EXPECT_EQ(la.irr, lb.irr);
        EXPECT_EQ(la.tpr, lb.tpr);
        EXPECT_EQ(la.ppr, lb.ppr);
        EXPECT_EQ(la.svr, lb.svr);
        EXPECT_EQ(la.lvt_timer, lb.lvt_timer);
        EXPECT_EQ(la.timer_initial_count, lb.timer_initial_count);
        EXPECT_EQ(la.apic_base, lb.apic_base);
        break;
      }
      case ps::RecordType::IRQCHIP:
      case ps::RecordType::DEVICE:
        EXPECT_TRUE(ra.payload.asBytes() == rb.payload.asBytes())
            << state::record_type_name(ra.type) << " record " << i << " differs";
        break;
      default:
        break;  // header (ids, times), clock and PIT (time), trailer
    }
  }
  unlink(a.c_str());
  unlink(b.c_str());
}

class BadSnapshot : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    good_ = new std::string(temp_path("good.snap"));
    std::string sock = temp_path("bad.sock");
    VmctlProcess vm({"run", "--control", sock, "--cmdline", "hb_ms=50"});
    ASSERT_TRUE(vm.wait_for_line("^HB 2\\b", 60s)) << vm.out() << vm.err();
    ASSERT_EQ(vmctl({"snapshot", "--control", sock, *good_}), 0);
    vm.signal(SIGTERM);
    vm.wait_exit(30s);
  }
  static void TearDownTestSuite() {
    unlink(good_->c_str());
    delete good_;
  }
  static std::vector<char> bytes() {
    std::ifstream in(*good_, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
  }
  static std::string write(const std::string& name, const std::vector<char>& data) {
    std::string path = temp_path(name);
    std::ofstream(path, std::ios::binary).write(data.data(), static_cast<long>(data.size()));
    return path;
  }
  // Restores `path` and expects exit 2 with one line containing `message`.
  static void expect_refused(const std::string& path, const std::string& message) {
    std::string err;
    EXPECT_EQ(vmctl({"restore", path}, nullptr, &err), 2) << err;
    EXPECT_NE(err.find(message), std::string::npos) << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line: " << err;
    unlink(path.c_str());
  }
  static std::string* good_;
};
std::string* BadSnapshot::good_ = nullptr;

TEST_F(BadSnapshot, CorruptByteIsAChecksumMismatch) {
  std::vector<char> data = bytes();
  data[data.size() / 2] ^= 0x40;
  expect_refused(write("corrupt.snap", data), "corrupt");
}

TEST_F(BadSnapshot, TruncatedFileSaysTruncated) {
  std::vector<char> data = bytes();
  data.resize(data.size() - 100);
  expect_refused(write("truncated.snap", data), "truncated");
}

TEST_F(BadSnapshot, NewerMajorVersionIsRefusedWithBothVersions) {
  std::vector<char> data = bytes();
  data[6] = static_cast<char>(state::format_major() + 1);
  expect_refused(write("newer.snap", data), "upgrade vmctl");
}

TEST_F(BadSnapshot, GarbageIsNotASnapshot) {
  expect_refused(write("garbage.snap", std::vector<char>(10000, 'x')), "not a vmctl state stream");
}

TEST_F(BadSnapshot, InspectShowsHeaderRecordsAndLapic) {
  std::string out, err;
  ASSERT_EQ(vmctl({"inspect", *good_}, &out, &err), 0) << err;
  EXPECT_NE(out.find("full snapshot"), std::string::npos) << out;
  EXPECT_NE(out.find("memory-pages"), std::string::npos) << out;
  EXPECT_NE(out.find("LAPIC of vCPU 0: xAPIC"), std::string::npos) << out;
  EXPECT_NE(out.find("PPR 0x"), std::string::npos) << out;
  ASSERT_EQ(vmctl({"inspect", "--json", *good_}, &out, &err), 0) << err;
  EXPECT_NE(out.find("\"ppr_derived\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"lvt\""), std::string::npos) << out;
}

TEST(Snapshot, FailedSnapshotLeavesNoFileAndTheVmRunning) {
  std::string sock = temp_path("f.sock");
  VmctlProcess vm({"run", "--control", sock, "--cmdline", "hb_ms=50"});
  ASSERT_TRUE(vm.wait_for_line("^HB 2\\b", 60s)) << vm.out() << vm.err();
  std::string err;
  EXPECT_EQ(vmctl({"snapshot", "--control", sock, "/nonexistent-dir/x.snap"}, nullptr, &err), 2)
      << err;
  EXPECT_NE(err.find("/nonexistent-dir/x.snap"), std::string::npos) << err;
  size_t before = vm.count_lines("^HB ");
  EXPECT_TRUE(vm.wait_for_line("^HB " + std::to_string(before + 2) + "\\b", 30s))
      << "the VM must keep running after a failed snapshot";
  vm.signal(SIGTERM);
  EXPECT_EQ(vm.wait_exit(30s), 0);
}

TEST(Snapshot, UnreachableControlSocketIsOneClearLine) {
  std::string err;
  EXPECT_EQ(
      vmctl({"snapshot", "--control", "/nonexistent.sock", temp_path("x.snap")}, nullptr, &err), 2);
  EXPECT_NE(err.find("cannot reach the VM's control socket"), std::string::npos) << err;
}

}  // namespace
}  // namespace vmctl::testing
