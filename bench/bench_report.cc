#include "bench/bench_report.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <fstream>

#include <fmt/format.h>

namespace vmctl::bench {
namespace {

std::string cell(const nlohmann::json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return fmt::format("{:.3f}", v.get<double>());
  return v.dump();
}

}  // namespace

std::string Report::table() const {
  std::vector<size_t> width;
  for (const std::string& c : columns_) width.push_back(c.size());
  for (const nlohmann::json& row : rows_) {
    for (size_t i = 0; i < columns_.size(); ++i) {
      width[i] = std::max(width[i], cell(row.value(columns_[i], nlohmann::json())).size());
    }
  }
  std::string out = name_ + "\n";
  auto line = [&](auto value_of) {
    for (size_t i = 0; i < columns_.size(); ++i) {
      std::string v = value_of(i);
      // Text left, numbers right, as a reader scans them.
      out += i == 0 ? fmt::format("{:<{}}", v, width[i]) : fmt::format("  {:>{}}", v, width[i]);
    }
    out += "\n";
  };
  line([&](size_t i) { return columns_[i]; });
  line([&](size_t i) { return std::string(width[i], '-'); });
  for (const nlohmann::json& row : rows_) {
    line([&](size_t i) { return cell(row.value(columns_[i], nlohmann::json())); });
  }
  return out;
}

std::string Report::markdown() const {
  std::string out = "### " + name_ + "\n\n|";
  std::string rule = "|";
  for (size_t i = 0; i < columns_.size(); ++i) {
    out += " " + columns_[i] + " |";
    rule += i < text_columns_ ? "---|" : "---:|";
  }
  out += "\n" + rule + "\n";
  for (const nlohmann::json& row : rows_) {
    out += "|";
    for (const std::string& c : columns_) out += " " + cell(row.value(c, nlohmann::json())) + " |";
    out += "\n";
  }
  return out;
}

nlohmann::json Report::json() const {
  return {{"benchmark", name_}, {"context", context_}, {"results", rows_}};
}

int Report::finish(const std::string& json_path) const {
  std::fputs(table().c_str(), stdout);
  if (json_path.empty()) return 0;
  std::ofstream out(json_path);
  out << json().dump(2) << "\n";
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
    return 1;
  }
  std::printf("JSON: %s\n", json_path.c_str());
  return 0;
}

nlohmann::json host_context() {
  utsname u{};
  uname(&u);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::string cpu;
  std::ifstream info("/proc/cpuinfo");
  for (std::string l; std::getline(info, l);) {
    if (l.rfind("model name", 0) == 0) {
      cpu = l.substr(l.find(':') + 2);
      break;
    }
  }
  return {{"hostname", host},
          {"kernel", u.release},
          {"cpu", cpu},
          {"cpus", sysconf(_SC_NPROCESSORS_ONLN)},
          {"unix_time", static_cast<int64_t>(std::time(nullptr))}};
}

}  // namespace vmctl::bench
