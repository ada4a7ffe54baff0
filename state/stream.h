// The record stream: the one byte format of snapshot files and the migration wire.
//
// A stream is a sequence of frames. Each frame is a fixed 40-byte little-endian header followed by
// a payload:
//
//   offset size field
//        0    4 magic "VMRC"
//        4    2 record type (proto::state::RecordType)
//        6    1 schema major of this record
//        7    1 schema minor of this record
//        8    4 flags (bit 0: payload is zstd-compressed, bit 1: required, bit 2: payload
//                 authenticated by the connection, not by this checksum: page_runs.h)
//       12    4 record sequence number: 1, 2, 3, ... in stream order (format 1.2 on; 0 in the
//              frames of older writers, which left this field reserved)
//       16    8 stored payload size (bytes in the stream)
//       24    8 raw payload size (after decompression)
//       32    8 XXH3-64 of bytes 0-31 of this header and the stored payload
//
// The payload is a Cap'n Proto message (flat array of segments) of the struct the type names.
// The first record is a Header, the last a Trailer; a stream that ends before its Trailer is
// truncated. See proto/state.capnp for the compatibility rule.
//
// Untrusted input: a reader refuses a frame whose sizes exceed what its record type can hold
// (state/stream_limits.h) before it allocates, and a numbered stream whose numbers are not exactly
// consecutive (a record dropped, duplicated or replayed by a faulty transport or a hostile peer:
// each record's own checksum cannot tell).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "base/atomic_file.h"
#include "base/error.h"
#include "base/fd.h"
#include "proto/state.capnp.h"

struct XXH3_state_s;  // <xxhash.h>

namespace vmctl::state {

using RecordType = proto::state::RecordType;

inline constexpr uint32_t kFrameMagic = 0x43524d56;  // "VMRC" little endian
inline constexpr size_t kFrameHeaderSize = 40;
inline constexpr uint32_t kFrameZstd = 1u << 0;
// A reader that does not know this record's type must refuse the stream (see state.capnp).
inline constexpr uint32_t kFrameRequired = 1u << 1;
// The checksum covers the frame header only: the payload's integrity is the connection's, which
// authenticates every byte it carries (TLS). Only pageRuns frames use it (state/page_runs.h), and
// only a reader told its source is such a connection accepts it.
inline constexpr uint32_t kFramePayloadByTransport = 1u << 2;
inline constexpr uint32_t kKnownFrameFlags = kFrameZstd | kFrameRequired | kFramePayloadByTransport;
// No record is larger than this (memory records carry at most a few MiB); a frame claiming more is
// corrupt, and refusing it bounds what a reader allocates for untrusted input.
inline constexpr uint64_t kMaxRecordSize = 256ull << 20;
// The first format minor whose frames carry a sequence number.
inline constexpr uint8_t kFirstNumberedMinor = 2;

uint16_t format_major();
uint16_t format_minor();
const char* record_type_name(RecordType type);
// How many record types this version knows (types are numbered from 0).
uint16_t known_record_types();

struct FrameHeader {
  uint32_t magic = kFrameMagic;
  uint16_t type = 0;
  uint8_t major = 0;
  uint8_t minor = 0;
  uint32_t flags = 0;
  uint32_t sequence = 0;  // 0: written before format 1.2
  uint64_t stored_size = 0;
  uint64_t raw_size = 0;
  uint64_t checksum = 0;
};
static_assert(sizeof(FrameHeader) == kFrameHeaderSize);

// Where a stream goes. write() writes everything or fails.
class ByteSink {
 public:
  virtual ~ByteSink() = default;
  virtual Status write(const void* data, size_t len) = 0;
  // Gathers pieces (a socket sends them in one system call); by default, one write each.
  virtual Status writev(const struct iovec* iov, int count);
};

// Where a stream comes from. read() fills `len` bytes unless the stream ends first; it returns how
// many it filled (0 at the end).
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual Result<size_t> read(void* data, size_t len) = 0;
};

// Writes a file atomically: bytes go to a new temporary file beside `path` (base/atomic_file.h:
// "<path>.tmp-<pid>-<random>", O_EXCL|O_NOFOLLOW, mode 0600), and commit() fsyncs it, renames it
// over `path` and fsyncs the directory. Destroyed without commit() (an error, a crash of the
// writer's logic), the temporary file is removed and `path` is untouched; a writer that died
// leaves its temporary file, which the next FileSink for `path` removes.
class FileSink : public ByteSink {
 public:
  // The temporary file is named after `temp_name_of` (default: `path`): a file committed under an
  // intermediate name (a pending memory file) still has its leftovers found as its final name's.
  static Result<std::unique_ptr<FileSink>> create(const std::string& path,
                                                  const std::string& temp_name_of = "");
  ~FileSink() override;
  Status write(const void* data, size_t len) override;
  // Advances without writing: the skipped range reads as zeros and takes no disk space.
  Status skip(uint64_t len);
  Status commit();
  uint64_t bytes_written() const { return written_ + buffered_; }

 private:
  FileSink(std::string path, TempFile temp);
  Status flush();

  std::string path_;
  TempFile temp_;
  std::vector<uint8_t> buffer_;
  size_t buffered_ = 0;
  uint64_t written_ = 0;
  bool committed_ = false;
};

class FileSource : public ByteSource {
 public:
  static Result<std::unique_ptr<FileSource>> open(const std::string& path);
  // Any readable descriptor (a socket carrying a migration stream); `name` is for messages.
  static std::unique_ptr<FileSource> adopt(Fd fd, std::string name) {
    return std::unique_ptr<FileSource>(new FileSource(std::move(name), std::move(fd), 0));
  }
  Result<size_t> read(void* data, size_t len) override;
  uint64_t size() const { return size_; }

 private:
  FileSource(std::string path, Fd fd, uint64_t size)
      : path_(std::move(path)), fd_(std::move(fd)), size_(size) {}
  std::string path_;
  Fd fd_;
  uint64_t size_;
};

// Appends to a growing buffer (tests, the migration sender's batching).
class MemorySink : public ByteSink {
 public:
  Status write(const void* data, size_t len) override;
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

class MemorySource : public ByteSource {
 public:
  explicit MemorySource(std::vector<uint8_t> bytes) : bytes_(std::move(bytes)) {}
  Result<size_t> read(void* data, size_t len) override;

 private:
  std::vector<uint8_t> bytes_;
  size_t pos_ = 0;
};

struct WriterOptions {
  // zstd level for memory records; 0 stores them uncompressed. Other records are small and are
  // never compressed.
  int compression_level = 1;
};

class RecordWriter {
 public:
  RecordWriter(ByteSink& sink, WriterOptions options) : sink_(sink), options_(options) {}

  // Serializes and appends one record. `compress` asks for zstd (if the options allow it).
  // Safe to call from several threads: compression runs in the caller's thread, records go to the
  // sink whole, one at a time.
  Status write(RecordType type, capnp::MessageBuilder& message, bool compress = false);
  bool compresses() const { return options_.compression_level > 0; }
  const WriterOptions& options() const { return options_; }
  // Appends records another writer (with these options) encoded into memory, renumbering them to
  // follow this writer's records (their checksums are recomputed in place). `frames` must be
  // exactly `records` whole frames.
  Status append_encoded(std::vector<uint8_t>& frames, uint64_t records);
  // Appends one record the caller frames itself (page runs, state/page_runs.h): `emit` gets the
  // record's sequence number and the sink, writes the whole frame, and returns its size.
  Status write_frame(const std::function<Result<uint64_t>(ByteSink&, uint32_t sequence)>& emit);
  uint64_t records() const { return records_; }
  uint64_t bytes() const { return bytes_; }

 private:
  Status write_segments(RecordType type, capnp::MessageBuilder& message);
  // The number of the next record (mu_ held).
  Result<uint32_t> next_sequence() const;

  ByteSink& sink_;
  WriterOptions options_;
  std::mutex mu_;  // the sink and the counters
  uint64_t records_ = 0;
  uint64_t bytes_ = 0;
  std::vector<uint32_t> segment_table_;
};

// One record as read: its header fields and the decompressed, checksum-verified payload.
struct Record {
  RecordType type;
  uint8_t major = 0;
  uint8_t minor = 0;
  uint64_t offset = 0;       // of the frame header in the stream
  uint32_t sequence = 0;     // its number in the stream (0 in streams written before 1.2)
  uint64_t stored_size = 0;  // bytes in the stream
  bool compressed = false;
  // A pageRuns record's payload is not read into `payload`: the caller reads it where it belongs
  // (guest memory) with RecordReader::read_payload and ends it with end_payload.
  bool streamed = false;
  kj::Array<capnp::word> payload;

  // A reader over the payload; valid while this Record lives.
  std::unique_ptr<capnp::FlatArrayMessageReader> message() const;
};

class RecordReader {
 public:
  // `name` is used in messages ("snapshot /tmp/a.snap", "migration stream from 10.0.0.2").
  // The name may hold a path from anywhere: it is sanitised (base/text.h) for messages.
  RecordReader(ByteSource& source, const std::string& name);

  // The next record, std::nullopt at a clean end of stream, or an error naming what is wrong
  // (truncation, corruption, a newer format, a record too large for its type, a gap or repeat in
  // the numbering) and where.
  Result<std::optional<Record>> next();
  uint64_t offset() const { return offset_; }
  const std::string& name() const { return name_; }
  // Records returned so far.
  uint64_t records_read() const { return index_; }
  // Whether the stream numbers its records (known once the first record is read).
  bool numbered() const { return numbered_; }
  // The guest's memory size from the stream's header: it bounds the size of dirty-log records,
  // which are otherwise held to the generic bound.
  void set_guest_memory_size(uint64_t bytes) { guest_memory_size_ = bytes; }
  // The source authenticates everything it carries (a TLS connection): frames may leave their
  // payload's integrity to it (kFramePayloadByTransport). Never for files.
  void set_authenticated_transport(bool yes) { authenticated_transport_ = yes; }

  // The payload of the streamed record next() returned last, read in pieces into `data`...
  Status read_payload(void* data, size_t len);
  // ... to its end, where its checksum is checked.
  Status end_payload();

 private:
  Error corrupt(const std::string& what) const;
  Status check_sizes(const FrameHeader& header) const;
  Status check_sequence(const FrameHeader& header);

  ByteSource& source_;
  std::string name_;
  uint64_t offset_ = 0;
  uint64_t index_ = 0;
  bool numbered_ = false;
  uint32_t last_sequence_ = 0;
  uint64_t guest_memory_size_ = 0;
  bool authenticated_transport_ = false;
  // The streamed record being read.
  struct Streamed {
    FrameHeader header;
    uint64_t remaining = 0;
    bool hashed = false;
    struct FreeHash {
      void operator()(::XXH3_state_s* state) const;
    };
    std::unique_ptr<::XXH3_state_s, FreeHash> hash;
  };
  std::optional<Streamed> streamed_;
};

}  // namespace vmctl::state
