// The first line on every data connection (migrate/data_plane.md): which migration it belongs to,
// the one-time secret the destination gave for it, and which of how many connections it is.
//
//   source -> destination   VMCTL-DATA 1 <migration id> <secret> <index> <count>\n
//   destination -> source   OK\n    or    REFUSED <why>\n
//
// On a plaintext connection (a trusted network) the secret never travels: version 2 carries a
// nonce of the source instead, and both sides prove they know the secret (data_proof.h):
//
//   source -> destination   VMCTL-DATA 2 <migration id> <source nonce> <index> <count>\n
//   destination -> source   CHALLENGE <destination nonce> <destination proof>\n
//   source -> destination   PROOF <source proof>\n
//   destination -> source   OK\n    or    REFUSED <why>\n
#pragma once

#include <string>
#include <string_view>

#include "base/error.h"

namespace vmctl::migrate {

inline constexpr size_t kHelloMaxBytes = 512;
inline constexpr unsigned kMaxDataConnections = 16;

struct DataHello {
  std::string migration_id;
  std::string secret;  // version 1
  unsigned index = 0;
  unsigned count = 0;
  unsigned version = 1;  // 1: with the secret (TLS, unix socket); 2: with a nonce (plaintext)
  std::string nonce;     // version 2: the source's, 32 hex digits
};

std::string format_hello(const DataHello& hello);
// A line that is not a well-formed hello is a clear error (its text sanitised), never a crash.
Result<DataHello> parse_hello(std::string_view line);

}  // namespace vmctl::migrate
