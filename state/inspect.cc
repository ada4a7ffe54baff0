#include "state/inspect.h"

#include <fmt/format.h>
#include <kj/exception.h>

#include "base/text.h"
#include "state/lapic.h"

namespace vmctl::state {
namespace {

namespace ps = proto::state;

std::string hex(uint64_t v) {
  return fmt::format("0x{:x}", v);
}

std::string text(capnp::Text::Reader t, size_t max_bytes = 512) {
  return sanitize_text(std::string_view(t.begin(), t.size()), max_bytes);
}

const char* kind_name(ps::StreamKind kind) {
  switch (kind) {
    case ps::StreamKind::FULL_SNAPSHOT:
      return "full snapshot";
    case ps::StreamKind::DIFF_SNAPSHOT:
      return "diff snapshot";
    case ps::StreamKind::MIGRATION:
      return "migration";
  }
  return "unknown";
}

nlohmann::json decode_lapic_record(ps::Lapic::Reader l) {
  LapicState s = from_record(l);
  nlohmann::json j;
  j["vcpu"] = l.getVcpuIndex();
  j["mode"] = apic_mode_name(s.mode);
  j["apic_base"] = hex(s.apic_base);
  j["id"] = s.id;
  j["version"] = hex(s.version);
  j["tpr"] = hex(s.tpr);
  j["ppr_recorded"] = hex(s.ppr);
  j["ppr_derived"] = hex(derive_ppr(s.tpr, s.isr));
  j["isr"] = vectors(s.isr);
  j["irr"] = vectors(s.irr);
  j["tmr"] = vectors(s.tmr);
  j["svr"] = hex(s.svr);
  j["ldr"] = hex(s.ldr);
  j["dfr"] = hex(s.dfr);
  j["esr"] = hex(s.esr);
  j["icr"] = hex((uint64_t{s.icr_high} << 32) | s.icr_low);
  j["lvt"] = {{"timer", hex(s.lvt_timer)}, {"thermal", hex(s.lvt_thermal)},
              {"perf", hex(s.lvt_perf)},   {"lint0", hex(s.lvt_lint0)},
              {"lint1", hex(s.lvt_lint1)}, {"error", hex(s.lvt_error)},
              {"cmci", hex(s.lvt_cmci)}};
  j["timer"] = {{"initial_count", s.timer_initial_count},
                {"current_count", s.timer_current_count},
                {"divide", hex(s.timer_divide)},
                {"tsc_deadline", s.tsc_deadline}};
  return j;
}

nlohmann::json decode_vcpu_record(ps::Vcpu::Reader v) {
  auto r = v.getRegs();
  auto s = v.getSregs();
  nlohmann::json j;
  j["vcpu"] = v.getIndex();
  j["mp_state"] = v.getMpState();
  j["regs"] = {{"rip", hex(r.getRip())}, {"rsp", hex(r.getRsp())}, {"rflags", hex(r.getRflags())},
               {"rax", hex(r.getRax())}, {"rbx", hex(r.getRbx())}, {"rcx", hex(r.getRcx())},
               {"rdx", hex(r.getRdx())}, {"rsi", hex(r.getRsi())}, {"rdi", hex(r.getRdi())},
               {"rbp", hex(r.getRbp())}};
  j["sregs"] = {{"cr0", hex(s.getCr0())},           {"cr3", hex(s.getCr3())},
                {"cr4", hex(s.getCr4())},           {"cr8", hex(s.getCr8())},
                {"efer", hex(s.getEfer())},         {"cs", hex(s.getCs().getSelector())},
                {"apic_base", hex(s.getApicBase())}};
  j["msrs"] = v.getMsrs().size();
  j["cpuid_entries"] = v.getCpuid().size();
  j["xsave_bytes"] = v.getXsave().size();
  j["tsc_khz"] = v.getTscKhz();
  return j;
}

Result<nlohmann::json> inspect_records(RecordReader& reader);

}  // namespace

Result<nlohmann::json> inspect_stream(RecordReader& reader) {
  // Cap'n Proto readers throw on malformed messages; that is bad input like any other.
  try {
    return inspect_records(reader);
  } catch (const kj::Exception& e) {
    return Error::user(fmt::format("{}: malformed record: {}", reader.name(),
                                   sanitize_text(e.getDescription().cStr())));
  } catch (const std::exception& e) {
    return Error::user(fmt::format("{}: malformed record: {}", reader.name(), e.what()));
  }
}

namespace {
Result<nlohmann::json> inspect_records(RecordReader& reader) {
  nlohmann::json out;
  out["records"] = nlohmann::json::array();
  out["vcpus"] = nlohmann::json::array();
  out["lapics"] = nlohmann::json::array();
  uint64_t memory_pages = 0, memory_bytes = 0;
  bool trailer = false;
  while (true) {
    std::optional<Record> record = TRY(reader.next());
    if (!record) break;
    auto msg = record->message();
    out["records"].push_back({{"type", record_type_name(record->type)},
                              {"offset", record->offset},
                              {"bytes", record->stored_size},
                              {"version", fmt::format("{}.{}", record->major, record->minor)},
                              {"compressed", record->compressed}});
    switch (record->type) {
      case ps::RecordType::HEADER: {
        auto h = msg->getRoot<ps::Header>();
        auto g = h.getGuest();
        auto host = h.getHost();
        // Text from the file goes into JSON (dump() throws on invalid UTF-8) and onto a terminal.
        out["header"] = {{"format", fmt::format("{}.{}", h.getFormatMajor(), h.getFormatMinor())},
                         {"producer", text(h.getProducer())},
                         {"kind", kind_name(h.getKind())},
                         {"id", text(h.getSnapshotId())},
                         {"parent", text(h.getParentId())},
                         {"created_unix_ns", h.getCreatedUnixNs()},
                         {"memory_bytes", g.getMemorySize()},
                         {"vcpus", g.getVcpuCount()},
                         {"cmdline", text(g.getCmdline(), 4096)},
                         {"host",
                          {{"hostname", text(host.getHostname())},
                           {"kernel", text(host.getKernelRelease())},
                           {"cpu", fmt::format("{} family {} model {}", text(host.getCpuVendor()),
                                               host.getCpuFamily(), host.getCpuModel())},
                           {"tsc_khz", host.getTscKhz()}}}};
        break;
      }
      case ps::RecordType::VCPU:
        out["vcpus"].push_back(decode_vcpu_record(msg->getRoot<ps::Vcpu>()));
        break;
      case ps::RecordType::LAPIC:
        out["lapics"].push_back(decode_lapic_record(msg->getRoot<ps::Lapic>()));
        break;
      case ps::RecordType::MEMORY_PAGES: {
        auto pages = msg->getRoot<ps::MemoryPages>();
        memory_pages += pages.getData().size() / 4096;
        memory_bytes += record->stored_size;
        break;
      }
      case ps::RecordType::MEMORY_FILE: {
        auto file = msg->getRoot<ps::MemoryFile>();
        out["memory_file"] = {{"path", text(file.getPath(), 4096)},
                              {"ram_bytes", file.getRamSize()},
                              {"file_bytes", file.getFileSize()}};
        break;
      }
      case ps::RecordType::TRAILER:
        trailer = true;
        out["trailer"] = {{"records", msg->getRoot<ps::Trailer>().getRecordCount()},
                          {"zero_pages_elided", msg->getRoot<ps::Trailer>().getZeroPagesElided()}};
        break;
      default:
        break;
    }
  }
  if (!out.contains("header") || out["records"][0]["type"] != "header") {
    return Error::user(fmt::format("{}: the stream does not start with a header", reader.name()));
  }
  if (!trailer) {
    return Error::user(fmt::format("{}: truncated: no trailer record", reader.name()));
  }
  out["memory"] = {{"pages", memory_pages}, {"stored_bytes", memory_bytes}};
  out["stream_bytes"] = reader.offset();
  return out;
}
}  // namespace

std::string format_inspection(const nlohmann::json& j) {
  std::string out;
  const auto& h = j["header"];
  out += fmt::format("{} {} (format {}, {})\n", h["kind"].get<std::string>(),
                     h["id"].get<std::string>(), h["format"].get<std::string>(),
                     h["producer"].get<std::string>());
  if (!h["parent"].get<std::string>().empty()) {
    out += fmt::format("  parent    {}\n", h["parent"].get<std::string>());
  }
  out += fmt::format("  guest     {} MiB, {} vCPU(s), cmdline \"{}\"\n",
                     h["memory_bytes"].get<uint64_t>() >> 20, h["vcpus"].get<unsigned>(),
                     h["cmdline"].get<std::string>());
  out +=
      fmt::format("  host      {} ({}), {}, TSC {} kHz\n", h["host"]["hostname"].get<std::string>(),
                  h["host"]["kernel"].get<std::string>(), h["host"]["cpu"].get<std::string>(),
                  h["host"]["tsc_khz"].get<uint32_t>());
  out +=
      fmt::format("  memory    {} non-zero pages in {} stored bytes; {} zero pages elided\n",
                  j["memory"]["pages"].get<uint64_t>(), j["memory"]["stored_bytes"].get<uint64_t>(),
                  j["trailer"]["zero_pages_elided"].get<uint64_t>());
  if (j.contains("memory_file")) {
    out += fmt::format("  mem file  {} ({} bytes; restore --lazy maps it)\n",
                       j["memory_file"]["path"].get<std::string>(),
                       j["memory_file"]["file_bytes"].get<uint64_t>());
  }
  out += fmt::format("  stream    {} records, {} bytes\n\nrecords:\n", j["records"].size(),
                     j["stream_bytes"].get<uint64_t>());
  // Consecutive records of one type are summarised on one line.
  const auto& records = j["records"];
  for (size_t i = 0; i < records.size();) {
    size_t k = i;
    uint64_t bytes = 0;
    while (k < records.size() && records[k]["type"] == records[i]["type"]) {
      bytes += records[k]["bytes"].get<uint64_t>();
      ++k;
    }
    out += fmt::format("  {:>10}  {:<14} x{:<6} {:>12} bytes  v{}\n",
                       records[i]["offset"].get<uint64_t>(), records[i]["type"].get<std::string>(),
                       k - i, bytes, records[i]["version"].get<std::string>());
    i = k;
  }
  for (const auto& v : j["vcpus"]) {
    out += fmt::format(
        "\nvCPU {}: mp_state {}, rip {}, rsp {}, rflags {}, cr0 {}, cr3 {}, cr4 {}, "
        "efer {}, cr8 {}\n",
        v["vcpu"].get<unsigned>(), v["mp_state"].get<unsigned>(),
        v["regs"]["rip"].get<std::string>(), v["regs"]["rsp"].get<std::string>(),
        v["regs"]["rflags"].get<std::string>(), v["sregs"]["cr0"].get<std::string>(),
        v["sregs"]["cr3"].get<std::string>(), v["sregs"]["cr4"].get<std::string>(),
        v["sregs"]["efer"].get<std::string>(), v["sregs"]["cr8"].get<std::string>());
    out += fmt::format("  {} MSRs, {} CPUID entries, {} bytes XSAVE, TSC {} kHz\n",
                       v["msrs"].get<unsigned>(), v["cpuid_entries"].get<unsigned>(),
                       v["xsave_bytes"].get<unsigned>(), v["tsc_khz"].get<unsigned>());
  }
  auto vec = [](const nlohmann::json& list) {
    std::string s;
    for (const auto& v : list) s += fmt::format("{}0x{:02x}", s.empty() ? "" : " ", v.get<int>());
    return s.empty() ? std::string("-") : s;
  };
  for (const auto& l : j["lapics"]) {
    out += fmt::format(
        "\nLAPIC of vCPU {}: {} (base {}), id {}, TPR {}, PPR {} (derived; recorded "
        "{})\n",
        l["vcpu"].get<unsigned>(), l["mode"].get<std::string>(), l["apic_base"].get<std::string>(),
        l["id"].get<unsigned>(), l["tpr"].get<std::string>(), l["ppr_derived"].get<std::string>(),
        l["ppr_recorded"].get<std::string>());
    out +=
        fmt::format("  ISR {}\n  IRR {}\n  TMR {}\n", vec(l["isr"]), vec(l["irr"]), vec(l["tmr"]));
    out += fmt::format("  SVR {}  LDR {}  DFR {}  ESR {}  ICR {}\n", l["svr"].get<std::string>(),
                       l["ldr"].get<std::string>(), l["dfr"].get<std::string>(),
                       l["esr"].get<std::string>(), l["icr"].get<std::string>());
    const auto& lvt = l["lvt"];
    out += fmt::format("  LVT timer {} thermal {} perf {} lint0 {} lint1 {} error {} cmci {}\n",
                       lvt["timer"].get<std::string>(), lvt["thermal"].get<std::string>(),
                       lvt["perf"].get<std::string>(), lvt["lint0"].get<std::string>(),
                       lvt["lint1"].get<std::string>(), lvt["error"].get<std::string>(),
                       lvt["cmci"].get<std::string>());
    const auto& t = l["timer"];
    out += fmt::format("  timer initial {} current {} divide {} tsc-deadline {}\n",
                       t["initial_count"].get<uint32_t>(), t["current_count"].get<uint32_t>(),
                       t["divide"].get<std::string>(), t["tsc_deadline"].get<uint64_t>());
  }
  return out;
}

}  // namespace vmctl::state
