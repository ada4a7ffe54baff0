// Mutual proof of the migration's one-time secret on a plaintext data connection (version 2 of
// the hello, data_hello.h), where the secret itself must never travel. Each side sends
// HMAC-SHA256(secret, its role, the migration id, the connection's index and count, both
// nonces): the destination proves it is the daemon that accepted the migration (the source
// never sends guest memory to another), the source proves it was given the secret, and fresh
// nonces on both sides make every proof useless for another connection.
#pragma once

#include <string>
#include <string_view>

#include "migrate/data_hello.h"

namespace vmctl::migrate {

inline constexpr std::string_view kSourceRole = "source";
inline constexpr std::string_view kDestinationRole = "destination";

// 32 hex digits from the system's random source.
std::string make_nonce();
// 64 hex digits.
std::string hello_proof(const std::string& secret, std::string_view role, const DataHello& hello,
                        const std::string& destination_nonce);
// Compares in time independent of where the texts differ.
bool same_text(const std::string& a, const std::string& b);

}  // namespace vmctl::migrate
