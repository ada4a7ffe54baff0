// Reader for KVM's binary statistics fd (KVM_GET_STATS_FD, Documentation/virt/kvm/api.rst 4.133):
// a header, then descriptors (name, type, unit, offset, size), then u64 values read with pread.
// Descriptors are parsed once; each sample is one pread of the data block, cheap enough to poll.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/fd.h"

namespace vmctl::vmm::kvm {

struct StatValue {
  std::string name;
  uint64_t value;
};

class StatsReader {
 public:
  static Result<StatsReader> open(Fd stats_fd);
  // Every scalar (size 1) statistic, in descriptor order. Histograms are skipped.
  Result<std::vector<StatValue>> sample() const;

 private:
  struct Descriptor {
    std::string name;
    uint32_t offset;  // in bytes, from the data block
  };
  Fd fd_;
  uint32_t data_offset_ = 0;
  uint32_t data_size_ = 0;
  std::vector<Descriptor> descriptors_;
};

}  // namespace vmctl::vmm::kvm
