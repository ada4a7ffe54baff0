#include "vmm/kvm/stats.h"

#include <unistd.h>
#include "vmm/kvm/kvm_uapi.h"

#include <cerrno>
#include <cstring>

namespace vmctl::vmm::kvm {

Result<StatsReader> StatsReader::open(Fd stats_fd) {
  StatsReader reader;
  kvm_stats_header header{};
  if (::pread(stats_fd.get(), &header, sizeof header, 0) != sizeof header) {
    return Error::from_errno("reading the KVM stats header", errno);
  }
  // Each descriptor is a kvm_stats_desc followed by a name of header.name_size bytes.
  size_t desc_size = sizeof(kvm_stats_desc) + header.name_size;
  std::vector<uint8_t> descs(desc_size * header.num_desc);
  if (::pread(stats_fd.get(), descs.data(), descs.size(), header.desc_offset) !=
      static_cast<ssize_t>(descs.size())) {
    return Error::from_errno("reading the KVM stats descriptors", errno);
  }
  uint32_t end = 0;
  for (uint32_t i = 0; i < header.num_desc; ++i) {
    const auto* d = reinterpret_cast<const kvm_stats_desc*>(descs.data() + i * desc_size);
    uint32_t bytes = d->size * sizeof(uint64_t);
    end = std::max(end, d->offset + bytes);
    if (d->size != 1) continue;
    const char* name = reinterpret_cast<const char*>(d) + sizeof(kvm_stats_desc);
    reader.descriptors_.push_back(
        Descriptor{std::string(name, strnlen(name, header.name_size)), d->offset});
  }
  reader.data_offset_ = header.data_offset;
  reader.data_size_ = end;
  reader.fd_ = std::move(stats_fd);
  return reader;
}

Result<std::vector<StatValue>> StatsReader::sample() const {
  std::vector<uint8_t> data(data_size_);
  if (::pread(fd_.get(), data.data(), data.size(), data_offset_) !=
      static_cast<ssize_t>(data.size())) {
    return Error::from_errno("reading KVM stats values", errno);
  }
  std::vector<StatValue> values;
  values.reserve(descriptors_.size());
  for (const Descriptor& d : descriptors_) {
    uint64_t v;
    std::memcpy(&v, data.data() + d.offset, sizeof v);
    values.push_back(StatValue{d.name, v});
  }
  return values;
}

}  // namespace vmctl::vmm::kvm
