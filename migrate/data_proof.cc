#include "migrate/data_proof.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <stdexcept>

#include <fmt/format.h>

namespace vmctl::migrate {
namespace {

std::string hex(const unsigned char* bytes, size_t len) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (size_t i = 0; i < len; ++i) {
    out += kDigits[bytes[i] >> 4];
    out += kDigits[bytes[i] & 15];
  }
  return out;
}

}  // namespace

std::string make_nonce() {
  unsigned char bytes[16];
  // Without randomness no connection could be authenticated: that is not a state to go on in.
  if (RAND_bytes(bytes, sizeof bytes) != 1) throw std::runtime_error("RAND_bytes failed");
  return hex(bytes, sizeof bytes);
}

std::string hello_proof(const std::string& secret, std::string_view role, const DataHello& hello,
                        const std::string& destination_nonce) {
  const std::string message =
      fmt::format("vmctl-data-proof 2 {} {} {} {} {} {}", role, hello.migration_id, hello.index,
                  hello.count, hello.nonce, destination_nonce);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &len);
  return hex(mac, len);
}

bool same_text(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace vmctl::migrate
