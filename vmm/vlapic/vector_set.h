// A set of the 256 interrupt vectors, the shape of the local APIC's IRR, ISR and TMR.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <optional>

namespace vmctl::vmm::vlapic {

class VectorSet {
 public:
  bool test(uint8_t vector) const { return (words_[vector >> 6] >> (vector & 63)) & 1; }
  void set(uint8_t vector) { words_[vector >> 6] |= 1ull << (vector & 63); }
  void clear(uint8_t vector) { words_[vector >> 6] &= ~(1ull << (vector & 63)); }
  void clear_all() { words_ = {}; }
  bool empty() const { return (words_[0] | words_[1] | words_[2] | words_[3]) == 0; }

  std::optional<uint8_t> highest() const {
    for (int w = 3; w >= 0; --w) {
      if (words_[w] != 0) return static_cast<uint8_t>(w * 64 + 63 - std::countl_zero(words_[w]));
    }
    return std::nullopt;
  }

  // The APIC page holds each set as eight 32-bit registers, vectors 32*i..32*i+31 in register i.
  uint32_t word32(int i) const { return static_cast<uint32_t>(words_[i >> 1] >> (32 * (i & 1))); }
  void set_word32(int i, uint32_t bits) {
    uint64_t& w = words_[i >> 1];
    int shift = 32 * (i & 1);
    w = (w & ~(0xffffffffull << shift)) | (uint64_t{bits} << shift);
  }
  // Vectors 0-15 are reserved (Intel SDM 10.5.2): no legal path sets them.
  bool has_reserved_vector() const { return (words_[0] & 0xffff) != 0; }

  bool operator==(const VectorSet&) const = default;

 private:
  std::array<uint64_t, 4> words_{};
};

}  // namespace vmctl::vmm::vlapic
