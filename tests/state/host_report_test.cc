// check_move's rules on hand-made host reports (the reports themselves are tested on real KVM in
// the integration tests).
#include <gtest/gtest.h>

#include "state/host_report.h"

namespace vmctl::state {
namespace {

nlohmann::json report(const std::string& name, std::vector<std::string> features, int xsave = 4096,
                      int tsc_khz = 2000000, int tsc_control = 1) {
  return {{"hostname", name},
          {"kernel", "6.1.0"},
          {"cpu", {{"vendor", "GenuineIntel"}, {"family", 6}, {"model", 85}, {"tsc_khz", tsc_khz}}},
          {"kvm",
           {{"api_version", 12},
            {"capabilities",
             {{"xsave2", xsave}, {"tsc_control", tsc_control}, {"manual_dirty_log_protect", 3}}}}},
          {"guest_cpu_features", features}};
}

TEST(CheckMove, SameFeaturesCanMove) {
  MoveVerdict v = check_move(report("a", {"sse2", "avx2"}), report("b", {"sse2", "avx2"}));
  EXPECT_TRUE(v.can_move);
}

TEST(CheckMove, MissingFeatureBlocksAndIsNamed) {
  MoveVerdict v = check_move(report("a", {"sse2", "avx2", "avx512f"}), report("b", {"sse2"}));
  EXPECT_FALSE(v.can_move);
  ASSERT_FALSE(v.reasons.empty());
  EXPECT_NE(v.reasons[0].find("b lacks avx2, avx512f"), std::string::npos) << v.reasons[0];
}

TEST(CheckMove, OnlyTheGuestsFeaturesMatterWhenGiven) {
  std::vector<std::string> guest = {"sse2"};
  EXPECT_TRUE(check_move(report("a", {"sse2", "avx2"}), report("b", {"sse2"}), &guest).can_move);
  guest.push_back("avx2");
  EXPECT_FALSE(check_move(report("a", {"sse2", "avx2"}), report("b", {"sse2"}), &guest).can_move);
}

TEST(CheckMove, SmallerXsaveAreaBlocks) {
  MoveVerdict v = check_move(report("a", {}, 8192), report("b", {}, 4096));
  EXPECT_FALSE(v.can_move);
}

TEST(CheckMove, TscRateDifferenceIsANoteNotABlock) {
  MoveVerdict v = check_move(report("a", {}, 4096, 2000000), report("b", {}, 4096, 2500000, 0));
  EXPECT_TRUE(v.can_move);
  bool noted = false;
  for (const std::string& r : v.reasons) noted |= r.find("cannot scale") != std::string::npos;
  EXPECT_TRUE(noted);
}

TEST(CheckMove, DestinationIgnoringInServiceVectorsIsANote) {
  nlohmann::json a = report("a", {}), b = report("b", {});
  a["kvm"]["lapic_keeps_in_service_vectors"] = 1;
  b["kvm"]["lapic_keeps_in_service_vectors"] = 0;
  MoveVerdict v = check_move(a, b);
  EXPECT_TRUE(v.can_move);
  bool noted = false;
  for (const std::string& r : v.reasons) noted |= r.find("b's KVM ignores in-service") == 6;
  EXPECT_TRUE(noted);
  EXPECT_EQ(check_move(b, a).reasons.size(), check_move(a, a).reasons.size()) << "only that way";
}

}  // namespace
}  // namespace vmctl::state
