#include "base/size.h"

#include <gtest/gtest.h>

namespace vmctl {
namespace {

TEST(ParseSize, AcceptsBinarySuffixes) {
  EXPECT_EQ(parse_size("4096").value(), 4096u);
  EXPECT_EQ(parse_size("4k").value(), 4096u);
  EXPECT_EQ(parse_size("512M").value(), 512ull << 20);
  EXPECT_EQ(parse_size("2G").value(), 2ull << 30);
  EXPECT_EQ(parse_size("2GiB").value(), 2ull << 30);
  EXPECT_EQ(parse_size("1T").value(), 1ull << 40);
}

TEST(ParseSize, RejectsGarbageWithAUserError) {
  for (const char* bad : {"", "M", "-1", "12Q", "1.5G", "99999999999999999999", "20000000000T"}) {
    Result<uint64_t> r = parse_size(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().kind(), ErrorKind::kUser);
    EXPECT_NE(r.error().message().find("bad size"), std::string::npos);
  }
}

TEST(FormatSize, PicksTheLargestWholeUnit) {
  EXPECT_EQ(format_size(512ull << 20), "512 MiB");
  EXPECT_EQ(format_size(3ull << 29), "1.5 GiB");
  EXPECT_EQ(format_size(100), "100 B");
}

}  // namespace
}  // namespace vmctl

#include "base/path.h"

namespace vmctl {
namespace {

TEST(AbsolutePath, PrefixesTheWorkingDirectoryOnlyWhenRelative) {
  EXPECT_EQ(absolute_path("/srv/a.snap"), "/srv/a.snap");
  EXPECT_EQ(absolute_path(""), "");
  std::string made = absolute_path("a.snap");
  ASSERT_EQ(made.front(), '/');
  EXPECT_EQ(made.substr(made.size() - 7), "/a.snap");
}

}  // namespace
}  // namespace vmctl
