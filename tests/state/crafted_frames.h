// Helpers for tests that craft record streams byte by byte: what a hostile peer or a broken
// transport could send. Frames are edited in place and resealed (checksum recomputed), so the
// reader's checks behind the checksum are what the tests reach.
#pragma once

#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "state/stream.h"

namespace vmctl::state::testing {

inline FrameHeader frame_at(const std::vector<uint8_t>& bytes, size_t offset) {
  FrameHeader h;
  std::memcpy(&h, bytes.data() + offset, sizeof h);
  return h;
}

// The checksum as the writer computes it: header bytes 0-31, then the stored payload.
inline uint64_t checksum_of(const FrameHeader& h, const uint8_t* payload) {
  std::vector<uint8_t> buf(offsetof(FrameHeader, checksum) + h.stored_size);
  std::memcpy(buf.data(), &h, offsetof(FrameHeader, checksum));
  if (h.stored_size)
    std::memcpy(buf.data() + offsetof(FrameHeader, checksum), payload, h.stored_size);
  return XXH3_64bits(buf.data(), buf.size());
}

// Writes `h` at `offset` with a checksum that matches it and the payload behind it.
inline void put_frame(std::vector<uint8_t>& bytes, size_t offset, FrameHeader h) {
  h.checksum = checksum_of(h, bytes.data() + offset + sizeof h);
  std::memcpy(bytes.data() + offset, &h, sizeof h);
}

// Where each frame of a well-formed stream starts.
inline std::vector<size_t> frame_offsets(const std::vector<uint8_t>& bytes) {
  std::vector<size_t> out;
  for (size_t off = 0; off + sizeof(FrameHeader) <= bytes.size();) {
    out.push_back(off);
    off += sizeof(FrameHeader) + frame_at(bytes, off).stored_size;
  }
  return out;
}

// The bytes of frame `index` (header and payload).
inline std::vector<uint8_t> frame_bytes(const std::vector<uint8_t>& bytes, size_t index) {
  std::vector<size_t> offs = frame_offsets(bytes);
  size_t begin = offs.at(index);
  size_t end = begin + sizeof(FrameHeader) + frame_at(bytes, begin).stored_size;
  return std::vector<uint8_t>(bytes.begin() + begin, bytes.begin() + end);
}

// One frame around `payload`, sealed.
inline std::vector<uint8_t> make_frame(uint16_t type, const std::vector<uint8_t>& payload,
                                       uint64_t raw_size, uint32_t flags, uint8_t minor,
                                       uint32_t sequence) {
  FrameHeader h;
  h.type = type;
  h.major = static_cast<uint8_t>(format_major());
  h.minor = minor;
  h.flags = flags;
  h.sequence = sequence;
  h.stored_size = payload.size();
  h.raw_size = raw_size;
  std::vector<uint8_t> out(sizeof h);
  out.insert(out.end(), payload.begin(), payload.end());
  put_frame(out, 0, h);
  return out;
}

inline std::vector<uint8_t> flat(capnp::MessageBuilder& message) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  return std::vector<uint8_t>(words.asBytes().begin(), words.asBytes().end());
}

}  // namespace vmctl::state::testing
