// One error type for the whole project, and Result<T> for functions that can fail.
//
// An Error carries a message that reads as a cause chain ("booting vCPU 1: KVM_SET_MSRS: ...") and
// a kind that the edges (CLI exit code, RPC status) map onto: kUser is something the operator can
// fix (bad flag, missing file, no /dev/kvm permission) and exits 2; kFailure is everything else and
// exits 1.
#pragma once

#include <cstdlib>
#include <string>
#include <utility>
#include <variant>

namespace vmctl {

// kNotFound and kConflict are user errors with a more precise RPC status (NOT_FOUND,
// FAILED_PRECONDITION): no such VM; the VM is not in a state that allows the operation.
enum class ErrorKind { kUser, kFailure, kNotFound, kConflict };

class Error {
 public:
  Error(ErrorKind kind, std::string message) : kind_(kind), message_(std::move(message)) {}

  static Error user(std::string message) { return Error(ErrorKind::kUser, std::move(message)); }
  static Error failure(std::string message) {
    return Error(ErrorKind::kFailure, std::move(message));
  }
  static Error not_found(std::string message) {
    return Error(ErrorKind::kNotFound, std::move(message));
  }
  static Error conflict(std::string message) {
    return Error(ErrorKind::kConflict, std::move(message));
  }
  // "what: strerror(err)", remembering errno so callers can branch on it (EINTR, EAGAIN, ...).
  static Error from_errno(const std::string& what, int err);

  // Prefixes "context: " so the message reads outermost-first.
  Error&& with_context(const std::string& context) &&;

  ErrorKind kind() const { return kind_; }
  const std::string& message() const { return message_; }
  int sys_errno() const { return sys_errno_; }
  int exit_code() const { return kind_ == ErrorKind::kFailure ? 1 : 2; }

 private:
  ErrorKind kind_;
  std::string message_;
  int sys_errno_ = 0;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design, like std::expected.
  Result(Error error) : v_(std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

// Result<void>: success or an Error.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_{ErrorKind::kFailure, ""};
  bool ok_ = true;
};

using Status = Result<void>;

inline Status ok_status() {
  return Status();
}

}  // namespace vmctl

// TRY(expr): evaluate a Result; on error return it from the enclosing function (which must return a
// Result of any type). For Result<T> the expression's value is the T.
#define VMCTL_CONCAT_INNER(a, b) a##b
#define VMCTL_CONCAT(a, b) VMCTL_CONCAT_INNER(a, b)

#define TRY(expr)                                           \
  ({                                                        \
    auto&& _vmctl_r = (expr);                               \
    if (!_vmctl_r.ok()) return std::move(_vmctl_r).error(); \
    ::vmctl::detail::unwrap(std::move(_vmctl_r));           \
  })

// TRY_CTX(expr, context): as TRY, prefixing the error with a context string on failure.
#define TRY_CTX(expr, ctx)                                                    \
  ({                                                                          \
    auto&& _vmctl_r = (expr);                                                 \
    if (!_vmctl_r.ok()) return std::move(_vmctl_r).error().with_context(ctx); \
    ::vmctl::detail::unwrap(std::move(_vmctl_r));                             \
  })

namespace vmctl::detail {
template <typename T>
T unwrap(Result<T>&& r) {
  return std::move(r).value();
}
inline void unwrap(Result<void>&&) {}
}  // namespace vmctl::detail
