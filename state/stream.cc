#include "state/stream.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>

#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <fmt/format.h>

#include "base/text.h"
#include "state/stream_limits.h"

namespace vmctl::state {
namespace {

constexpr size_t kFileBufferSize = 4 << 20;

// The checksum covers the frame header (all fields before the checksum) and the stored payload, so
// a flipped type, version or flag bit is caught like a flipped payload bit. The payload may come in
// pieces (a Cap'n Proto message's segment table, then its segments): the sum is that of their
// concatenation.
uint64_t frame_checksum(const FrameHeader& header, kj::ArrayPtr<const kj::byte> payload,
                        kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments = {}) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  XXH3_64bits_update(state, &header, offsetof(FrameHeader, checksum));
  XXH3_64bits_update(state, payload.begin(), payload.size());
  for (const auto& segment : segments) {
    XXH3_64bits_update(state, segment.begin(), segment.size() * sizeof(capnp::word));
  }
  uint64_t sum = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return sum;
}

// The header of a record frame of this type; stored size and checksum are the caller's.
FrameHeader record_header(RecordType type, size_t raw_size) {
  FrameHeader header;
  header.type = static_cast<uint16_t>(type);
  header.major = static_cast<uint8_t>(format_major());
  header.minor = static_cast<uint8_t>(format_minor());
  header.raw_size = raw_size;
  // Skipping a memory file record would restore a machine without its RAM.
  if (type == RecordType::MEMORY_FILE) header.flags |= kFrameRequired;
  return header;
}

// One zstd context per thread, kept: ZSTD_compress and ZSTD_decompress make and free a context
// (with its tables) for every call, which for 1 MiB records is a noticeable part of the work.
ZSTD_CCtx* thread_compressor() {
  thread_local std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> ctx(ZSTD_createCCtx(),
                                                                      ZSTD_freeCCtx);
  return ctx.get();
}
ZSTD_DCtx* thread_decompressor() {
  thread_local std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> ctx(ZSTD_createDCtx(),
                                                                      ZSTD_freeDCtx);
  return ctx.get();
}

}  // namespace

uint16_t format_major() {
  return proto::state::FORMAT_MAJOR;
}
uint16_t format_minor() {
  return proto::state::FORMAT_MINOR;
}

const char* record_type_name(RecordType type) {
  switch (type) {
    case RecordType::HEADER:
      return "header";
    case RecordType::TRAILER:
      return "trailer";
    case RecordType::VCPU:
      return "vcpu";
    case RecordType::LAPIC:
      return "lapic";
    case RecordType::IRQCHIP:
      return "irqchip";
    case RecordType::PIT:
      return "pit";
    case RecordType::CLOCK:
      return "clock";
    case RecordType::DEVICE:
      return "device";
    case RecordType::MEMORY_PAGES:
      return "memory-pages";
    case RecordType::DIRTY_LOG:
      return "dirty-log";
    case RecordType::MEMORY_FILE:
      return "memory-file";
    case RecordType::PAGE_RUNS:
      return "page-runs";
  }
  return "unknown";
}

uint16_t known_record_types() {
  static const uint16_t count =
      static_cast<uint16_t>(capnp::Schema::from<RecordType>().getEnumerants().size());
  return count;
}

// ------------------------------------------------------------------ files

FileSink::FileSink(std::string path, TempFile temp)
    : path_(std::move(path)), temp_(std::move(temp)) {
  buffer_.resize(kFileBufferSize);
}

Result<std::unique_ptr<FileSink>> FileSink::create(const std::string& path,
                                                   const std::string& temp_name_of) {
  TempFile temp = TRY(create_temp_file(temp_name_of.empty() ? path : temp_name_of));
  return std::unique_ptr<FileSink>(new FileSink(path, std::move(temp)));
}

FileSink::~FileSink() {
  if (!committed_) ::unlink(temp_.path.c_str());
}

Status FileSink::flush() {
  size_t done = 0;
  while (done < buffered_) {
    ssize_t n = ::write(temp_.fd.get(), buffer_.data() + done, buffered_ - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(fmt::format("writing {}", temp_.path), errno);
    }
    done += static_cast<size_t>(n);
  }
  written_ += buffered_;
  buffered_ = 0;
  return ok_status();
}

Status FileSink::skip(uint64_t len) {
  TRY(flush());
  if (::lseek(temp_.fd.get(), static_cast<off_t>(len), SEEK_CUR) < 0) {
    return Error::from_errno(fmt::format("seeking in {}", temp_.path), errno);
  }
  written_ += len;
  return ok_status();
}

Status FileSink::write(const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  if (buffered_ == 0 && len >= buffer_.size()) {
    // Large writes (guest memory) go straight to the file: the buffer would only add a copy.
    while (len > 0) {
      ssize_t n = ::write(temp_.fd.get(), p, len);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Error::from_errno(fmt::format("writing {}", temp_.path), errno);
      }
      p += n;
      len -= static_cast<size_t>(n);
      written_ += static_cast<uint64_t>(n);
    }
    return ok_status();
  }
  while (len > 0) {
    if (buffered_ == buffer_.size()) TRY(flush());
    size_t n = std::min(len, buffer_.size() - buffered_);
    std::memcpy(buffer_.data() + buffered_, p, n);
    buffered_ += n;
    p += n;
    len -= n;
  }
  return ok_status();
}

Status FileSink::commit() {
  TRY(flush());
  // A trailing skip leaves the file short of its logical size until it is extended.
  if (::ftruncate(temp_.fd.get(), static_cast<off_t>(written_)) != 0) {
    return Error::from_errno(fmt::format("sizing {}", temp_.path), errno);
  }
  TRY(commit_temp_file(temp_, path_));
  committed_ = true;
  return ok_status();
}

Result<std::unique_ptr<FileSource>> FileSource::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error::user(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Error::user(fmt::format("{} is not a regular file", path));
  }
  return std::unique_ptr<FileSource>(
      new FileSource(path, Fd(fd), static_cast<uint64_t>(st.st_size)));
}

Result<size_t> FileSource::read(void* data, size_t len) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::read(fd_.get(), static_cast<uint8_t*>(data) + done, len - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(fmt::format("reading {}", path_), errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

Status MemorySink::write(const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  bytes_.insert(bytes_.end(), p, p + len);
  return ok_status();
}

Result<size_t> MemorySource::read(void* data, size_t len) {
  size_t n = std::min(len, bytes_.size() - pos_);
  if (n == 0) return n;  // an empty vector's data() may be null, which memcpy forbids
  std::memcpy(data, bytes_.data() + pos_, n);
  pos_ += n;
  return n;
}

// ------------------------------------------------------------------ writer

Status RecordWriter::write(RecordType type, capnp::MessageBuilder& message, bool compress) {
  if (!compress || options_.compression_level <= 0) return write_segments(type, message);
  kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  kj::ArrayPtr<const kj::byte> raw = words.asBytes();
  FrameHeader header = record_header(type, raw.size());
  const uint8_t* stored = raw.begin();
  size_t stored_size = raw.size();
  std::vector<uint8_t> scratch(ZSTD_compressBound(raw.size()));
  size_t n = ZSTD_compressCCtx(thread_compressor(), scratch.data(), scratch.size(), raw.begin(),
                               raw.size(), options_.compression_level);
  if (ZSTD_isError(n)) {
    return Error::failure(fmt::format("zstd compression failed: {}", ZSTD_getErrorName(n)));
  }
  // Keep whatever is smaller (random data does not compress), unless it compresses so well that a
  // reader would take it for a zstd bomb (stream_limits.h): then raw.
  uint64_t max_ratio = record_limit(header.type).max_compression_ratio;
  if (n < raw.size() && raw.size() <= n * max_ratio) {
    stored = scratch.data();
    stored_size = n;
    header.flags |= kFrameZstd;
  }
  header.stored_size = stored_size;
  // Numbered and checksummed under the lock: records reach the sink in the order of their numbers.
  std::lock_guard lock(mu_);
  header.sequence = TRY(next_sequence());
  header.checksum = frame_checksum(header, kj::arrayPtr(stored, stored_size));
  TRY(sink_.write(&header, sizeof(header)));
  TRY(sink_.write(stored, stored_size));
  ++records_;
  bytes_ += sizeof(header) + stored_size;
  return ok_status();
}

Status ByteSink::writev(const struct iovec* iov, int count) {
  for (int i = 0; i < count; ++i) TRY(write(iov[i].iov_base, iov[i].iov_len));
  return ok_status();
}

Status RecordWriter::write_frame(
    const std::function<Result<uint64_t>(ByteSink&, uint32_t sequence)>& emit) {
  std::lock_guard lock(mu_);
  uint32_t sequence = TRY(next_sequence());
  uint64_t size = TRY(emit(sink_, sequence));
  ++records_;
  bytes_ += size;
  return ok_status();
}

Result<uint32_t> RecordWriter::next_sequence() const {
  if (records_ >= UINT32_MAX) {
    return Error::failure("the stream has more records than its 32-bit numbering can count");
  }
  return static_cast<uint32_t>(records_ + 1);
}

Status RecordWriter::append_encoded(std::vector<uint8_t>& frames, uint64_t records) {
  std::lock_guard lock(mu_);
  // The frames were numbered 1, 2, ... by the writer that encoded them; here they follow this
  // stream's records. Only the header and the checksum change (the payload is hashed again).
  size_t pos = 0;
  for (uint64_t i = 0; i < records; ++i) {
    FrameHeader header;
    if (frames.size() - pos < sizeof(header)) {
      return Error::failure("append_encoded: fewer frames than records");
    }
    std::memcpy(&header, frames.data() + pos, sizeof(header));
    if (header.magic != kFrameMagic || frames.size() - pos - sizeof(header) < header.stored_size) {
      return Error::failure("append_encoded: the encoded frames are not whole");
    }
    if (records_ + i >= UINT32_MAX) {
      return Error::failure("the stream has more records than its 32-bit numbering can count");
    }
    header.sequence = static_cast<uint32_t>(records_ + i + 1);
    const uint8_t* payload = frames.data() + pos + sizeof(header);
    header.checksum = frame_checksum(header, kj::arrayPtr(payload, header.stored_size));
    std::memcpy(frames.data() + pos, &header, sizeof(header));
    pos += sizeof(header) + header.stored_size;
  }
  if (pos != frames.size()) return Error::failure("append_encoded: more frames than records");
  if (!frames.empty()) TRY(sink_.write(frames.data(), frames.size()));
  records_ += records;
  bytes_ += frames.size();
  return ok_status();
}

// An uncompressed record goes out without being flattened first: the segment table (exactly what
// capnp::messageToFlatArray puts first), then each segment straight from the builder. The bytes
// and the checksum are those of the flat array; a memory record (1 MiB of pages) is not copied
// once more on its way out.
Status RecordWriter::write_segments(RecordType type, capnp::MessageBuilder& message) {
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments = message.getSegmentsForOutput();
  std::lock_guard lock(mu_);
  size_t table_words = segments.size() / 2 + 1;
  segment_table_.assign(table_words * 2, 0);
  segment_table_[0] = static_cast<uint32_t>(segments.size() - 1);
  size_t raw_size = table_words * sizeof(capnp::word);
  for (size_t i = 0; i < segments.size(); ++i) {
    segment_table_[i + 1] = static_cast<uint32_t>(segments[i].size());
    raw_size += segments[i].size() * sizeof(capnp::word);
  }
  FrameHeader header = record_header(type, raw_size);
  header.stored_size = raw_size;
  header.sequence = TRY(next_sequence());
  kj::ArrayPtr<const kj::byte> table(reinterpret_cast<const kj::byte*>(segment_table_.data()),
                                     table_words * sizeof(capnp::word));
  header.checksum = frame_checksum(header, table, segments);
  TRY(sink_.write(&header, sizeof(header)));
  TRY(sink_.write(segment_table_.data(), table_words * sizeof(capnp::word)));
  for (const auto& segment : segments) {
    TRY(sink_.write(segment.begin(), segment.size() * sizeof(capnp::word)));
  }
  ++records_;
  bytes_ += sizeof(header) + raw_size;
  return ok_status();
}

// ------------------------------------------------------------------ reader

std::unique_ptr<capnp::FlatArrayMessageReader> Record::message() const {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = kMaxRecordSize / sizeof(capnp::word) * 2;
  return std::make_unique<capnp::FlatArrayMessageReader>(payload.asPtr(), options);
}

RecordReader::RecordReader(ByteSource& source, const std::string& name)
    : source_(source), name_(sanitize_text(name)) {}

Error RecordReader::corrupt(const std::string& what) const {
  return Error::user(fmt::format("{}: record {} at byte {}: {}", name_, index_, offset_, what));
}

// From the frame header alone, before anything is allocated: a record larger than its type can be
// or compressed beyond what real data compresses to (a zstd bomb) is refused.
Status RecordReader::check_sizes(const FrameHeader& header) const {
  if (header.stored_size > kMaxRecordSize || header.raw_size > kMaxRecordSize) {
    return corrupt(fmt::format("frame claims {} bytes, more than any record can hold: corrupt",
                               std::max(header.stored_size, header.raw_size)));
  }
  const RecordLimit limit = record_limit(header.type, guest_memory_size_);
  const bool known = header.type < known_record_types();
  const std::string what =
      known ? fmt::format("{} record", record_type_name(static_cast<RecordType>(header.type)))
            : fmt::format("record of unknown type {}", header.type);
  if (header.raw_size > limit.max_raw_bytes) {
    return corrupt(fmt::format("the {} claims {} bytes, more than a {} can hold ({}): corrupt",
                               what, header.raw_size, known ? what : "record of a newer type",
                               limit.max_raw_bytes));
  }
  // Writers keep the compressed form only when it is smaller, so the stored bytes (which are read
  // into memory first) are bounded by the raw limit too.
  if ((header.flags & kFrameZstd) && header.stored_size >= header.raw_size) {
    return corrupt(fmt::format("the {} stores {} compressed bytes for {} raw ones: corrupt", what,
                               header.stored_size, header.raw_size));
  }
  // Writers before format 1.2 did not bound the ratio: their (unnumbered) records are bounded by
  // size alone. Every numbered record is held to it, whatever minor it claims.
  bool bounded_ratio = header.minor >= kFirstNumberedMinor || header.sequence != 0;
  if ((header.flags & kFrameZstd) && bounded_ratio &&
      header.raw_size > header.stored_size * limit.max_compression_ratio) {
    return corrupt(fmt::format(
        "the {} expands from {} to {} bytes, more than x{} (a zstd bomb, not compressed data): "
        "corrupt",
        what, header.stored_size, header.raw_size, limit.max_compression_ratio));
  }
  return ok_status();
}

// Records of format 1.2 on are numbered 1, 2, 3, ...; older streams leave every number 0. A gap
// means a record was lost on its way, a repeat that one was delivered twice: either would restore
// a different machine than was saved, record checksums notwithstanding.
Status RecordReader::check_sequence(const FrameHeader& header) {
  if (header.minor >= kFirstNumberedMinor && header.sequence == 0) {
    return corrupt(
        fmt::format("the record is not numbered, but format 1.{} on numbers every record: corrupt",
                    kFirstNumberedMinor));
  }
  if (index_ == 0) {
    numbered_ = header.sequence != 0;
    if (numbered_ && header.sequence != 1) {
      return corrupt(fmt::format(
          "the stream's first record is numbered {}, not 1: the records before it are missing",
          header.sequence));
    }
  } else if (!numbered_ && header.sequence != 0) {
    return corrupt(
        fmt::format("record numbered {} in a stream whose first record is not numbered: corrupt",
                    header.sequence));
  } else if (numbered_ && header.sequence != last_sequence_ + 1) {
    uint32_t expected = last_sequence_ + 1;
    std::string why =
        header.sequence > expected
            ? fmt::format("{} record{} missing (dropped)", header.sequence - expected,
                          header.sequence - expected == 1 ? " is" : "s are")
            : std::string(header.sequence == last_sequence_ ? "a record is duplicated"
                                                            : "records are replayed or reordered");
    return corrupt(fmt::format("record numbered {} follows record {}: {}", header.sequence,
                               last_sequence_, why));
  }
  last_sequence_ = header.sequence;
  return ok_status();
}

Result<std::optional<Record>> RecordReader::next() {
  FrameHeader header;
  size_t got = TRY(source_.read(&header, sizeof(header)));
  if (got == 0) return std::optional<Record>();
  if (got < sizeof(header)) {
    return corrupt(fmt::format("truncated: the stream ends inside a frame header ({} of {} bytes)",
                               got, sizeof(header)));
  }
  if (header.magic != kFrameMagic) {
    return corrupt(index_ == 0 ? "not a vmctl state stream (bad magic)"
                               : "bad frame magic: the stream is corrupt");
  }
  if (header.major > format_major()) {
    return Error::user(fmt::format(
        "{}: written by state format {}.{}, but this vmctl reads format {}.x: upgrade vmctl to "
        "read it",
        name_, header.major, header.minor, format_major()));
  }
  if (header.major < format_major()) {
    return Error::user(fmt::format(
        "{}: written by state format {}.{}, which this vmctl (format {}.{}) no longer reads", name_,
        header.major, header.minor, format_major(), format_minor()));
  }
  TRY(check_sizes(header));
  if (header.raw_size % sizeof(capnp::word) != 0 || header.raw_size == 0) {
    return corrupt("payload size is not a whole number of words: corrupt");
  }
  if ((header.flags & ~kKnownFrameFlags) != 0) {
    return Error::user(fmt::format(
        "{}: record {} uses frame flags 0x{:x} this vmctl does not know (written by format "
        "{}.{}): upgrade vmctl to read it",
        name_, index_, header.flags & ~kKnownFrameFlags, header.major, header.minor));
  }
  if ((header.flags & kFrameRequired) && header.type >= known_record_types()) {
    return Error::user(fmt::format(
        "{}: record {} has type {}, which this vmctl does not know and must not skip (written by "
        "format {}.{}, this vmctl reads {}.{}): upgrade vmctl to read it",
        name_, index_, header.type, header.major, header.minor, format_major(), format_minor()));
  }
  if (!(header.flags & kFrameZstd) && header.stored_size != header.raw_size) {
    return corrupt("stored and raw sizes differ on an uncompressed record: corrupt");
  }
  if (streamed_) {
    return Error::failure(
        fmt::format("{}: record {} read before the one before it was read to "
                    "its end (a bug)",
                    name_, index_));
  }
  if ((header.flags & kFramePayloadByTransport) &&
      (!authenticated_transport_ || header.type != static_cast<uint16_t>(RecordType::PAGE_RUNS))) {
    return corrupt(authenticated_transport_
                       ? "only page-runs records may leave their payload to the connection"
                       : "the record leaves its payload's integrity to the connection, but this "
                         "stream does not come over an authenticated one: refused");
  }
  if (header.type == static_cast<uint16_t>(RecordType::PAGE_RUNS)) {
    // Streamed: the caller reads the payload where it belongs (state/page_runs.h).
    if (header.flags & kFrameZstd) return corrupt("a page-runs record cannot be compressed");
    TRY(check_sequence(header));
    Streamed s;
    s.header = header;
    s.remaining = header.stored_size;
    s.hashed = !(header.flags & kFramePayloadByTransport);
    s.hash.reset(XXH3_createState());
    XXH3_64bits_reset(s.hash.get());
    XXH3_64bits_update(s.hash.get(), &header, offsetof(FrameHeader, checksum));
    Record record;
    record.type = RecordType::PAGE_RUNS;
    record.major = header.major;
    record.minor = header.minor;
    record.offset = offset_;
    record.sequence = header.sequence;
    record.stored_size = header.stored_size;
    record.streamed = true;
    streamed_ = std::move(s);
    return std::optional<Record>(std::move(record));
  }

  Record record;
  record.type = static_cast<RecordType>(header.type);
  record.major = header.major;
  record.minor = header.minor;
  record.offset = offset_;
  record.sequence = header.sequence;
  record.stored_size = header.stored_size;
  record.compressed = header.flags & kFrameZstd;
  record.payload = kj::heapArray<capnp::word>(header.raw_size / sizeof(capnp::word));

  std::vector<uint8_t> compressed;
  uint8_t* target = reinterpret_cast<uint8_t*>(record.payload.begin());
  if (record.compressed) {
    compressed.resize(header.stored_size);
    target = compressed.data();
  }
  got = TRY(source_.read(target, header.stored_size));
  if (got < header.stored_size) {
    return corrupt(
        fmt::format("truncated: the {} record needs {} bytes but the stream ends after {}",
                    record_type_name(record.type), header.stored_size, got));
  }
  // The fuzzer build skips the checksum so mutated inputs reach zstd and the Cap'n Proto decoders,
  // which is where malformed data must be caught too (a checksum is no defence against a bug in
  // the writer or against a crafted file).
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
  if (frame_checksum(header, kj::arrayPtr(target, header.stored_size)) != header.checksum) {
#else
  if (false) {
#endif
    return corrupt(fmt::format("checksum mismatch in the {} record: the data is corrupt",
                               record_type_name(record.type)));
  }
  if (record.compressed) {
    size_t n = ZSTD_decompressDCtx(thread_decompressor(), record.payload.begin(), header.raw_size,
                                   compressed.data(), compressed.size());
    if (ZSTD_isError(n) || n != header.raw_size) {
      return corrupt("zstd payload does not decompress to its declared size: corrupt");
    }
  }
  TRY(check_sequence(header));
  offset_ += sizeof(header) + header.stored_size;
  ++index_;
  return std::optional<Record>(std::move(record));
}

void RecordReader::Streamed::FreeHash::operator()(XXH3_state_t* state) const {
  XXH3_freeState(state);
}

Status RecordReader::read_payload(void* data, size_t len) {
  if (!streamed_)
    return Error::failure(fmt::format("{}: no streamed record to read (a bug)", name_));
  if (len > streamed_->remaining) {
    return corrupt(fmt::format("the {} record's parts need more than its {} bytes: corrupt",
                               record_type_name(static_cast<RecordType>(streamed_->header.type)),
                               streamed_->header.stored_size));
  }
  size_t got = TRY(source_.read(data, len));
  if (got < len) {
    return corrupt(fmt::format("truncated: the {} record needs {} bytes but the stream ends early",
                               record_type_name(static_cast<RecordType>(streamed_->header.type)),
                               streamed_->header.stored_size));
  }
  if (streamed_->hashed) XXH3_64bits_update(streamed_->hash.get(), data, len);
  streamed_->remaining -= len;
  return ok_status();
}

Status RecordReader::end_payload() {
  if (!streamed_)
    return Error::failure(fmt::format("{}: no streamed record to end (a bug)", name_));
  Streamed s = std::move(*streamed_);
  streamed_.reset();
  if (s.remaining != 0) {
    return corrupt(fmt::format("{} bytes of the record were not read: corrupt", s.remaining));
  }
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
  if (XXH3_64bits_digest(s.hash.get()) != s.header.checksum) {
    return corrupt(fmt::format("checksum mismatch in the {} record: the data is corrupt",
                               record_type_name(static_cast<RecordType>(s.header.type))));
  }
#endif
  offset_ += sizeof(FrameHeader) + s.header.stored_size;
  ++index_;
  return ok_status();
}

}  // namespace vmctl::state
