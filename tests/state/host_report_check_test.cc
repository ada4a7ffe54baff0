// Host reports from a peer, malformed in every way we can think of: each is refused with one line
// naming the field, check_move blocks on it, and nothing throws or reads out of bounds (run once
// under -fsanitize=address,undefined).
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "state/host_report.h"

namespace vmctl::state {
namespace {

using json = nlohmann::json;

json good_report() {
  return json::parse(R"({
    "hostname": "b", "kernel": "6.1.0-18-amd64",
    "kvm": {"api_version": 12, "modules": ["kvm_intel"],
            "capabilities": {"irqchip": 1, "xsave2": 4096, "tsc_control": 1,
                             "manual_dirty_log_protect": 3, "max_vcpus": 288},
            "lapic_keeps_in_service_vectors": 1},
    "cpu": {"vendor": "GenuineIntel", "family": 6, "model": 85, "tsc_khz": 2000000},
    "virtualization": {"tpr_shadow": "yes", "pml": "unknown"},
    "guest_cpu_features": ["sse2", "avx2"]})");
}

std::string refusal(const json& report) {
  Status s = validate_host_report(report, "the destination's host report");
  if (s.ok()) return "";
  EXPECT_EQ(s.error().kind(), ErrorKind::kUser);
  EXPECT_EQ(s.error().message().find('\n'), std::string::npos) << "one line";
  return s.error().message();
}

// The report with `edit` applied at the JSON pointer `where`.
json edited(const std::string& where, const std::function<void(json&)>& edit) {
  json r = good_report();
  edit(r[json::json_pointer(where)]);
  return r;
}

json without(const std::string& where) {
  json r = good_report();
  json::json_pointer p(where);
  r[p.parent_pointer()].erase(p.back());
  return r;
}

TEST(ValidateHostReport, RealAndWellFormedReportsPass) {
  EXPECT_EQ(refusal(good_report()), "");
  Result<json> mine = host_report();
  ASSERT_TRUE(mine.ok()) << mine.error().message();
  EXPECT_EQ(refusal(*mine), "") << mine->dump();
  // Optional fields (an older vmctld may not send them).
  EXPECT_EQ(refusal(without("/kvm/lapic_keeps_in_service_vectors")), "");
  EXPECT_EQ(refusal(without("/virtualization")), "");
  EXPECT_EQ(refusal(without("/kvm/modules")), "");
}

TEST(ValidateHostReport, WrongTypeIsNamedByItsField) {
  EXPECT_EQ(refusal(edited("/kvm/capabilities/xsave2", [](json& v) { v = "4096"; })),
            "the destination's host report is malformed: field kvm.capabilities.xsave2 is not a "
            "number");
  EXPECT_EQ(refusal(edited("/kvm/capabilities/xsave2", [](json& v) { v = 4096.5; })),
            "the destination's host report is malformed: field kvm.capabilities.xsave2 is not a "
            "whole number");
  EXPECT_EQ(refusal(edited("/hostname", [](json& v) { v = 7; })),
            "the destination's host report is malformed: field hostname is not a string");
  EXPECT_EQ(refusal(edited("/kvm", [](json& v) { v = json::array(); })),
            "the destination's host report is malformed: field kvm is not an object");
  EXPECT_EQ(refusal(edited("/guest_cpu_features", [](json& v) { v = "sse2"; })),
            "the destination's host report is malformed: field guest_cpu_features is not a list");
  EXPECT_EQ(refusal(edited("/guest_cpu_features/1", [](json& v) { v = nullptr; })),
            "the destination's host report is malformed: field guest_cpu_features[1] is not a "
            "string");
  EXPECT_EQ(refusal(edited("/virtualization/pml", [](json& v) { v = true; })),
            "the destination's host report is malformed: field virtualization.pml is not a string");
  EXPECT_EQ(refusal(json::array()),
            "the destination's host report is malformed: it is not a JSON object");
  EXPECT_EQ(refusal(json()), "the destination's host report is malformed: it is not a JSON object");
}

TEST(ValidateHostReport, EveryRequiredFieldIsRequired) {
  for (const char* field :
       {"/hostname", "/kernel", "/kvm", "/kvm/api_version", "/kvm/capabilities", "/cpu",
        "/cpu/vendor", "/cpu/family", "/cpu/model", "/cpu/tsc_khz", "/guest_cpu_features"}) {
    std::string dotted = std::string(field + 1);
    for (char& c : dotted) c = c == '/' ? '.' : c;
    EXPECT_EQ(refusal(without(field)),
              "the destination's host report is malformed: field " + dotted + " is missing");
  }
}

TEST(ValidateHostReport, EveryFieldRefusesEveryWrongType) {
  const json wrong[] = {json(nullptr),
                        json(true),
                        json(-5),
                        json(1e300),
                        json("text"),
                        json::array({1, 2}),
                        json::object({{"a", 1}}),
                        json(18446744073709551615ull)};
  // Every leaf and inner field of the good report.
  json flat = good_report().flatten();
  std::vector<std::string> paths;
  for (const auto& [path, value] : flat.items()) {
    for (json::json_pointer p(path); !p.empty(); p = p.parent_pointer()) {
      paths.push_back(p.to_string());
    }
  }
  size_t refused = 0;
  for (const std::string& path : paths) {
    for (const json& w : wrong) {
      json r = edited(path, [&](json& v) { v = w; });
      std::string error = refusal(r);
      // Some replacements are still valid (a number in range for a number): those pass.
      if (!error.empty()) ++refused;
      MoveVerdict verdict = check_move(good_report(), r);
      if (!error.empty()) {
        EXPECT_FALSE(verdict.can_move) << path;
        ASSERT_FALSE(verdict.reasons.empty());
        EXPECT_EQ(verdict.reasons[0], "blocks: " + error);
      }
      (void)format_host_report(r);  // never throws either
    }
  }
  EXPECT_GT(refused, paths.size() * 5);
}

TEST(ValidateHostReport, OutOfRangeNumbersAreRefused) {
  EXPECT_NE(refusal(edited("/kvm/capabilities/xsave2", [](json& v) { v = 1ll << 40; }))
                .find("kvm.capabilities.xsave2 is out of range (-2147483648 to 2147483647)"),
            std::string::npos);
  EXPECT_NE(refusal(edited("/cpu/tsc_khz", [](json& v) { v = -2; })).find("cpu.tsc_khz is out of"),
            std::string::npos);
  EXPECT_NE(refusal(edited("/cpu/family", [](json& v) { v = 18446744073709551615ull; }))
                .find("cpu.family is out of range"),
            std::string::npos);
  EXPECT_NE(refusal(edited("/kvm/lapic_keeps_in_service_vectors", [](json& v) { v = 2; }))
                .find("out of range (-1 to 1)"),
            std::string::npos);
}

TEST(ValidateHostReport, HugeListsAndLongStringsAreRefused) {
  EXPECT_EQ(refusal(edited("/guest_cpu_features",
                           [](json& v) { v = json(std::vector<std::string>(100000, "sse2")); })),
            "the destination's host report is malformed: field guest_cpu_features has 100000 "
            "entries, more than 4096");
  EXPECT_EQ(refusal(edited("/guest_cpu_features/0", [](json& v) { v = std::string(65, 'f'); })),
            "the destination's host report is malformed: field guest_cpu_features[0] is 65 bytes "
            "long, more than 64");
  EXPECT_NE(refusal(edited("/hostname", [](json& v) { v = std::string(1 << 20, 'h'); }))
                .find("field hostname is 1048576 bytes long, more than 255"),
            std::string::npos);
  json many = good_report();
  for (int i = 0; i < 1000; ++i) many["kvm"]["capabilities"]["cap" + std::to_string(i)] = 1;
  EXPECT_NE(refusal(many).find("field kvm.capabilities has 1005 entries, more than 128"),
            std::string::npos);
  EXPECT_NE(refusal(edited("/guest_cpu_features/0", [](json& v) { v = ""; }))
                .find("guest_cpu_features[0] is not a name"),
            std::string::npos);
}

TEST(ValidateHostReport, InvalidUtf8AndControlCharactersAreRefused) {
  // In-process JSON can hold any bytes (dump() would throw on them).
  EXPECT_EQ(refusal(edited("/hostname", [](json& v) { v = "b\xff\xfe"; })),
            "the destination's host report is malformed: field hostname is not valid UTF-8");
  EXPECT_EQ(refusal(edited("/guest_cpu_features/0", [](json& v) { v = "sse2\n"; })),
            "the destination's host report is malformed: field guest_cpu_features[0] is not a "
            "name (printable text)");
  json bad_key = good_report();
  bad_key["kvm"]["capabilities"]["x\xff"] = 1;
  EXPECT_EQ(refusal(bad_key),
            "the destination's host report is malformed: field kvm.capabilities.x\\xff is not a "
            "name (1 to 64 bytes of printable text)");
}

TEST(ParseHostReport, TextThatIsNotAReportIsRefused) {
  EXPECT_EQ(parse_host_report("{", "the destination's host report").error().message(),
            "the destination's host report is malformed: it is not JSON");
  EXPECT_EQ(parse_host_report("{\"hostname\": \"\xff\"}", "r").error().message(),
            "r is malformed: it is not JSON")
      << "the parser itself refuses invalid UTF-8";
  EXPECT_NE(
      parse_host_report(std::string(2 << 20, ' '), "r").error().message().find("more than 1048576"),
      std::string::npos);
  std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_FALSE(parse_host_report(deep, "r").ok());
  EXPECT_TRUE(parse_host_report(good_report().dump(), "r").ok());
}

TEST(CheckMove, MalformedDestinationReportBlocksWithTheReason) {
  json bad = edited("/kvm/capabilities/xsave2", [](json& v) { v = "big"; });
  MoveVerdict v = check_move(good_report(), bad);
  EXPECT_FALSE(v.can_move);
  ASSERT_EQ(v.reasons.size(), 1u);
  EXPECT_EQ(v.reasons[0],
            "blocks: the destination's host report is malformed: field kvm.capabilities.xsave2 "
            "is not a number");
  MoveVerdict mine = check_move(without("/cpu"), good_report());
  EXPECT_FALSE(mine.can_move);
  EXPECT_EQ(mine.reasons[0], "blocks: this host's report is malformed: field cpu is missing");
}

TEST(CheckMove, PeerNamesInReasonsAreSanitised) {
  json b = good_report();
  b["hostname"] =
      "evil\xe2\x80\xae"
      "host";
  b["cpu"]["vendor"] = "Vendor\x1b[2J";
  MoveVerdict v = check_move(good_report(), b);
  for (const std::string& r : v.reasons) {
    EXPECT_EQ(r.find('\x1b'), std::string::npos) << r;
    EXPECT_EQ(r.find("\xe2\x80\xae"), std::string::npos) << r;
  }
  EXPECT_NE(v.reasons[0].find("evil\\xe2\\x80\\xaehost"), std::string::npos) << v.reasons[0];
}

TEST(FormatHostReport, MalformedReportIsFormattedAsTheReason) {
  EXPECT_EQ(format_host_report(without("/kernel")),
            "the host report is malformed: field kernel is missing\n");
  EXPECT_NE(format_host_report(good_report()).find("host b (Linux 6.1.0-18-amd64)"),
            std::string::npos);
}

}  // namespace
}  // namespace vmctl::state
