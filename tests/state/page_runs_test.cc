#include "state/page_runs.h"

#include <gtest/gtest.h>

#include <cstring>

namespace vmctl::state {
namespace {

constexpr uint64_t kPage = 4096;

vmm::GuestMemory memory(uint64_t mib) {
  return std::move(vmm::GuestMemory::create(mib << 20)).value();
}

void fill_page(vmm::GuestMemory& m, uint64_t page, uint8_t byte) {
  std::memset(m.host_address(page * kPage, kPage), byte, kPage);
}

// The frame for `runs` of `m`, as a sender writes it: header, table, data.
std::vector<uint8_t> frame(const vmm::GuestMemory& m, const std::vector<PageRun>& runs,
                           uint32_t sequence, bool by_transport = false) {
  std::vector<iovec> data;
  for (const PageRun& r : runs) {
    if (r.kind == PageRunKind::kData) {
      data.push_back({m.host_address(r.first_page * kPage, r.count * kPage), r.count * kPage});
    }
  }
  PageRunsFrame f = make_page_runs_frame(runs, data, sequence, by_transport);
  std::vector<uint8_t> out(reinterpret_cast<uint8_t*>(&f.header),
                           reinterpret_cast<uint8_t*>(&f.header) + sizeof f.header);
  out.insert(out.end(), f.table.begin(), f.table.end());
  for (const iovec& v : data) {
    out.insert(out.end(), static_cast<uint8_t*>(v.iov_base),
               static_cast<uint8_t*>(v.iov_base) + v.iov_len);
  }
  return out;
}

Result<uint64_t> apply(std::vector<uint8_t> bytes, vmm::GuestMemory& into,
                       bool authenticated = false) {
  MemorySource source(std::move(bytes));
  RecordReader reader(source, "test stream");
  reader.set_authenticated_transport(authenticated);
  std::optional<Record> r = TRY(reader.next());
  if (!r) return Error::user("no record");
  EXPECT_TRUE(r->streamed);
  return apply_page_runs(reader, *r, into);
}

TEST(PageRuns, DataAndZeroRunsGoStraightIntoGuestMemory) {
  vmm::GuestMemory src = memory(16), dst = memory(16);
  for (uint64_t p : {10, 11, 12, 300}) fill_page(src, p, static_cast<uint8_t>(p));
  fill_page(dst, 50, 0xee);  // a page the guest has since cleared
  std::vector<PageRun> runs = {
      {10, 3, PageRunKind::kData}, {50, 1, PageRunKind::kZero}, {300, 1, PageRunKind::kData}};
  Result<uint64_t> applied = apply(frame(src, runs, 1), dst);
  ASSERT_TRUE(applied.ok()) << applied.error().message();
  EXPECT_EQ(*applied, 5u);
  for (uint64_t p : {10, 11, 12, 300}) {
    EXPECT_EQ(
        std::memcmp(src.host_address(p * kPage, kPage), dst.host_address(p * kPage, kPage), kPage),
        0)
        << p;
  }
  EXPECT_EQ(*dst.host_address(50 * kPage + 100, 1), 0);
}

TEST(PageRuns, ACorruptPageFailsTheChecksum) {
  vmm::GuestMemory src = memory(16), dst = memory(16);
  fill_page(src, 7, 0x42);
  std::vector<uint8_t> bytes = frame(src, {{7, 1, PageRunKind::kData}}, 1);
  bytes[bytes.size() - 100] ^= 1;
  Result<uint64_t> applied = apply(bytes, dst);
  ASSERT_FALSE(applied.ok());
  EXPECT_NE(applied.error().message().find("checksum mismatch in the page-runs record"),
            std::string::npos)
      << applied.error().message();
}

// Leaving the payload to the connection is for TLS connections only: a file or a plain socket
// that claims it is refused.
TEST(PageRuns, PayloadLeftToTheTransportOnlyFromAnAuthenticatedOne) {
  vmm::GuestMemory src = memory(16), dst = memory(16);
  fill_page(src, 7, 0x42);
  std::vector<uint8_t> bytes = frame(src, {{7, 1, PageRunKind::kData}}, 1, /*by_transport=*/true);
  Result<uint64_t> refused = apply(bytes, dst, /*authenticated=*/false);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("does not come over an authenticated one"),
            std::string::npos)
      << refused.error().message();
  EXPECT_TRUE(apply(bytes, dst, /*authenticated=*/true).ok());
}

TEST(PageRuns, RunsOutsideGuestRamOrInconsistentSizesAreRefused) {
  vmm::GuestMemory src = memory(16), dst = memory(64);
  // 60 MiB lies in dst's RAM but not src's: build the frame from a bigger memory.
  fill_page(dst, (60ull << 20) / kPage, 1);
  vmm::GuestMemory small = memory(16);
  std::vector<uint8_t> far = frame(dst, {{(60ull << 20) / kPage, 1, PageRunKind::kData}}, 1);
  Result<uint64_t> outside = apply(far, small);
  ASSERT_FALSE(outside.ok());
  EXPECT_NE(outside.error().message().find("outside guest RAM"), std::string::npos)
      << outside.error().message();
  // A first page chosen to overflow first_page * 4096.
  std::vector<uint8_t> overflow = frame(src, {{1, 1, PageRunKind::kZero}}, 1);
  uint64_t huge = (UINT64_MAX / kPage) + 1;
  std::memcpy(overflow.data() + kFrameHeaderSize + 8, &huge, 8);
  overflow = [&] {  // keep the checksum right: only the bounds check should refuse it
    std::vector<PageRun> runs = {{huge, 1, PageRunKind::kZero}};
    PageRunsFrame f = make_page_runs_frame(runs, {}, 1, false);
    std::vector<uint8_t> out(reinterpret_cast<uint8_t*>(&f.header),
                             reinterpret_cast<uint8_t*>(&f.header) + sizeof f.header);
    out.insert(out.end(), f.table.begin(), f.table.end());
    return out;
  }();
  Result<uint64_t> overflowed = apply(overflow, small);
  ASSERT_FALSE(overflowed.ok());
  EXPECT_NE(overflowed.error().message().find("outside guest RAM"), std::string::npos);
  // More pages than a record may carry.
  std::vector<PageRun> many = {{0, kPageRunsMaxPages + 1, PageRunKind::kZero}};
  PageRunsFrame f = make_page_runs_frame(many, {}, 1, false);
  std::vector<uint8_t> big(reinterpret_cast<uint8_t*>(&f.header),
                           reinterpret_cast<uint8_t*>(&f.header) + sizeof f.header);
  big.insert(big.end(), f.table.begin(), f.table.end());
  Result<uint64_t> too_many = apply(big, small);
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(too_many.error().message().find("more than 256 pages"), std::string::npos)
      << too_many.error().message();
}

}  // namespace
}  // namespace vmctl::state
