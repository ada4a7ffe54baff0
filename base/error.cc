#include "base/error.h"

#include <cstring>

namespace vmctl {

Error Error::from_errno(const std::string& what, int err) {
  // Permission and missing-file errors are the operator's to fix; anything else is a failure.
  ErrorKind kind =
      (err == EACCES || err == EPERM || err == ENOENT) ? ErrorKind::kUser : ErrorKind::kFailure;
  Error e(kind, what + ": " + std::strerror(err));
  e.sys_errno_ = err;
  return e;
}

Error&& Error::with_context(const std::string& context) && {
  message_ = context + ": " + message_;
  return std::move(*this);
}

}  // namespace vmctl
