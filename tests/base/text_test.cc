#include "base/text.h"

#include <gtest/gtest.h>

#include <string>

namespace vmctl {
namespace {

TEST(SanitizeText, PlainTextAndValidUtf8PassUnchanged) {
  EXPECT_EQ(sanitize_text("vmctl 0.1.0"), "vmctl 0.1.0");
  EXPECT_EQ(sanitize_text("host\tname"), "host\tname") << "tab is kept";
  EXPECT_EQ(sanitize_text("Grüße, 日本, 🙂"), "Grüße, 日本, 🙂");
  EXPECT_EQ(sanitize_text(""), "");
}

TEST(SanitizeText, InvalidBytesAreEscaped) {
  EXPECT_EQ(sanitize_text("a\xff"
                          "b"),
            "a\\xffb");
  EXPECT_EQ(sanitize_text("\xc3"), "\\xc3") << "a lead byte without its continuation";
  EXPECT_EQ(sanitize_text("\x80x"), "\\x80x") << "a lone continuation byte";
  EXPECT_EQ(sanitize_text("\xc0\xaf"), "\\xc0\\xaf") << "overlong '/'";
  EXPECT_EQ(sanitize_text("\xe0\x80\xaf"), "\\xe0\\x80\\xaf") << "overlong, 3 bytes";
  EXPECT_EQ(sanitize_text("\xed\xa0\x80"), "\\xed\\xa0\\x80") << "a UTF-16 surrogate";
  EXPECT_EQ(sanitize_text("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80") << "above U+10FFFF";
  EXPECT_EQ(sanitize_text(std::string("a\0b", 3)), "a\\x00b");
}

TEST(SanitizeText, ControlCharactersAreEscapedSoTextStaysOnOneLine) {
  EXPECT_EQ(sanitize_text("line\nforged: ok"), "line\\x0aforged: ok");
  EXPECT_EQ(sanitize_text("\r\x1b[2J\x7f"), "\\x0d\\x1b[2J\\x7f");
  EXPECT_EQ(sanitize_text("\xc2\x9b"
                          "31m"),
            "\\xc2\\x9b31m")
      << "C1 CSI";
  EXPECT_EQ(sanitize_text("a\xe2\x80\xae"
                          "b"),
            "a\\xe2\\x80\\xaeb")
      << "right-to-left override";
  EXPECT_EQ(sanitize_text("a\xe2\x80\xa8"
                          "b"),
            "a\\xe2\\x80\\xa8b")
      << "line separator";
  EXPECT_EQ(sanitize_text("a\xe2\x81\xa6"
                          "b"),
            "a\\xe2\\x81\\xa6b")
      << "left-to-right isolate";
  EXPECT_EQ(sanitize_text("\xe2\x80\x94"), "\xe2\x80\x94") << "an em dash is just text";
}

TEST(SanitizeText, OutputIsAlwaysValidUtf8) {
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  std::string out = sanitize_text(all + all, 100000);
  EXPECT_TRUE(is_valid_utf8(out));
  EXPECT_EQ(out.find('\n'), std::string::npos);
}

TEST(SanitizeText, LongTextIsCutAtACharacterBoundaryWithAnEllipsis) {
  EXPECT_EQ(sanitize_text("abcdefghij", 10), "abcdefghij") << "exactly the limit: not cut";
  EXPECT_EQ(sanitize_text("abcdefghijk", 10), "abcdefg...");
  // "ü" is two bytes: never split.
  std::string cut = sanitize_text("üüüüüü", 8);
  EXPECT_EQ(cut, "üü...");
  EXPECT_TRUE(is_valid_utf8(cut));
  // An escape is one unit too: "\xff" is never cut to "\xf".
  EXPECT_EQ(sanitize_text("ab\xff\xff\xff", 10), "ab\\xff...");
  EXPECT_EQ(sanitize_text(std::string(100000, 'x')).size(), 512u) << "the default limit";
  EXPECT_EQ(sanitize_text("abcdef", 2), "..");
}

TEST(IsValidUtf8, FollowsRfc3629) {
  EXPECT_TRUE(is_valid_utf8("plain"));
  EXPECT_TRUE(is_valid_utf8("\xf0\x9f\x99\x82"));
  EXPECT_TRUE(is_valid_utf8("\xef\xbf\xbf"));
  EXPECT_FALSE(is_valid_utf8("\xff"));
  EXPECT_FALSE(is_valid_utf8("\xed\xbf\xbf"));
  EXPECT_FALSE(is_valid_utf8("\xf0\x9f\x99"));
  EXPECT_FALSE(is_valid_utf8("\xc1\xbf"));
}

}  // namespace
}  // namespace vmctl
