// Benchmark results: rows of named values, printed as an aligned table and written as JSON.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace vmctl::bench {

class Report {
 public:
  Report(std::string name, std::vector<std::string> columns)
      : name_(std::move(name)), columns_(std::move(columns)) {}

  // One row: a value per column (numbers are printed with `precision` decimals).
  void add(const nlohmann::json& row) { rows_.push_back(row); }
  // How many leading columns hold text (left-aligned in markdown; the rest are right-aligned).
  void set_text_columns(size_t n) { text_columns_ = n; }
  void set_context(const std::string& key, const nlohmann::json& value) { context_[key] = value; }

  std::string table() const;
  // The same rows as a GitHub markdown table (a heading line with the name, then the table).
  std::string markdown() const;
  nlohmann::json json() const;
  // Prints the table to stdout and, when `json_path` is not empty, writes the JSON there.
  int finish(const std::string& json_path) const;

 private:
  std::string name_;
  std::vector<std::string> columns_;
  std::vector<nlohmann::json> rows_;
  nlohmann::json context_ = nlohmann::json::object();
  size_t text_columns_ = 1;
};

// Host facts every report records, so results from different machines are not confused.
nlohmann::json host_context();

}  // namespace vmctl::bench
