#include "base/error.h"

#include <cerrno>

#include <gtest/gtest.h>

#include "base/fd.h"

namespace vmctl {
namespace {

Result<int> fails_with(const char* message) {
  return Error::failure(message);
}

Result<int> adds_context() {
  int v = TRY_CTX(fails_with("inner"), "outer");
  return v + 1;
}

Status propagates() {
  TRY(fails_with("deep"));
  return ok_status();
}

TEST(Error, ContextReadsOutermostFirst) {
  Result<int> r = adds_context();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), "outer: inner");
  EXPECT_EQ(r.error().exit_code(), 1);
}

TEST(Error, TryPropagatesIntoStatus) {
  Status s = propagates();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().message(), "deep");
}

TEST(Error, ErrnoNamesTheCallAndKeepsTheCode) {
  Error e = Error::from_errno("KVM_RUN on vCPU 1", EINTR);
  EXPECT_EQ(e.sys_errno(), EINTR);
  EXPECT_NE(e.message().find("KVM_RUN on vCPU 1: Interrupted system call"), std::string::npos);
  EXPECT_EQ(Error::from_errno("open x", EACCES).kind(), ErrorKind::kUser);
}

TEST(Fd, MissingFileIsAUserErrorNamingThePath) {
  Result<Fd> fd = Fd::open("/nonexistent/vmctl-test", 0);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.error().exit_code(), 2);
  EXPECT_NE(fd.error().message().find("/nonexistent/vmctl-test"), std::string::npos);
}

TEST(Fd, ClosesOnceWhenMoved) {
  Fd a = Fd::open("/dev/null", 0).value();
  int raw = a.get();
  Fd b = std::move(a);
  EXPECT_FALSE(a.valid());
  EXPECT_EQ(b.get(), raw);
}

}  // namespace
}  // namespace vmctl
