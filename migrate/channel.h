// gRPC channels to a vmctld: a unix socket (guarded by its file permissions) or TCP with mutual
// TLS. There is no plaintext TCP.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "base/error.h"

namespace vmctl::migrate {

struct TlsConfig {
  std::string ca;    // PEM file: the CA that signed the peer's certificate
  std::string cert;  // PEM file: this side's certificate chain
  std::string key;   // PEM file: this side's private key
  bool complete() const { return !ca.empty() && !cert.empty() && !key.empty(); }
};

// `address` is unix:/path (or a path starting with /) or host:port. TCP needs `tls` complete.
// `lane` > 0 makes a channel that does not share its connection with others to the same address
// (parallel migration streams).
Result<std::shared_ptr<grpc::Channel>> make_channel(const std::string& address,
                                                    const TlsConfig& tls, int lane = 0);

// Reads a whole (small) file, for PEM material.
Result<std::string> read_text_file(const std::string& path, const char* what);

}  // namespace vmctl::migrate
