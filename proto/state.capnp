@0xbf2d46aa9abf780a;
# vmctl state records: the one format for snapshot files and the live-migration wire.
#
# A stream is a sequence of frames (see state/stream.h): a Header record first, then typed records,
# then a Trailer. Every frame names its record type and the schema version its payload was written
# with; the payload is one of the structs below as a Cap'n Proto message (optionally zstd
# compressed, always checksummed).
#
# COMPATIBILITY RULE
#   - Adding a field (at the end, with a new ordinal), adding an enum value that old readers may
#     treat as unknown, or adding a record type that old readers may skip is a MINOR bump
#     (formatMinor + 1). Old readers ignore what they do not know; Cap'n Proto guarantees that
#     new fields read as their defaults in old data.
#   - Giving a meaning to a frame header field marked reserved (old readers ignore it, and old
#     writers left it zero) is also a MINOR bump.
#   - Anything else (renaming a field's meaning, changing a type, removing a field, changing the
#     frame layout, changing how memory or the LAPIC are encoded) is a MAJOR bump (formatMajor + 1,
#     formatMinor = 0).
#   - A reader accepts every minor of its own major and refuses a newer major with a message naming
#     both versions. Older majors are read by keeping their decoder (see state/README.md).
#   - A record old readers must not skip (skipping it would restore a different machine) is written
#     with the REQUIRED frame flag: a reader that does not know its type refuses the stream and
#     says to upgrade, instead of ignoring it. Readers also refuse frame flags they do not know.
#   Field ordinals are never reused.
#
# HISTORY
#   1.0  first format
#   1.1  memoryFile record (guest RAM in a separate raw file, for lazy restore), REQUIRED flag
#   1.2  frames carry a record sequence number (1, 2, 3, ... in the formerly reserved field at
#        offset 12; older readers ignore it), so a dropped or duplicated record is detected;
#        migration streams must be numbered. Compressed records stay within a per-type ratio.
#   1.3  pageRuns record: guest pages with a small binary run table instead of a Cap'n Proto
#        message, so they go from guest memory to the wire and from the wire into guest memory
#        without a copy; on a connection that authenticates what it carries (TLS), its frame may
#        leave the page data to the connection (the PAYLOAD_BY_TRANSPORT frame flag).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vmctl::proto::state");

const formatMajor :UInt16 = 1;
const formatMinor :UInt16 = 3;

# The 16-bit record type in each frame header.
enum RecordType {
  header @0;
  trailer @1;
  vcpu @2;
  lapic @3;
  irqchip @4;
  pit @5;
  clock @6;
  device @7;
  memoryPages @8;
  dirtyLog @9;
  memoryFile @10;   # 1.1; written REQUIRED
  pageRuns @11;     # 1.3; written REQUIRED; a raw payload, not Cap'n Proto (state/page_runs.h)
}

# ------------------------------------------------------------------ header and trailer

enum StreamKind {
  fullSnapshot @0;
  diffSnapshot @1;   # pages dirtied since the parent snapshot only; names the parent by id
  migration @2;
}

struct Header {
  formatMajor @0 :UInt16;
  formatMinor @1 :UInt16;
  producer @2 :Text;           # "vmctl 0.1.0"
  createdUnixNs @3 :UInt64;
  kind @4 :StreamKind;
  snapshotId @5 :Text;         # 32 hex digits, unique per stream
  parentId @6 :Text;           # diff snapshots: the snapshotId of the parent, else empty
  guest @7 :GuestConfig;
  host @8 :HostFacts;
}

struct GuestConfig {
  memorySize @0 :UInt64;       # bytes of RAM
  vcpuCount @1 :UInt32;
  regions @2 :List(MemoryRegion);
  devices @3 :List(Text);      # device names in creation order, e.g. "serial8250@0x3f8"
  cmdline @4 :Text;            # informational: the command line the guest booted with
}

struct MemoryRegion {
  slot @0 :UInt32;
  guestPhys @1 :UInt64;
  size @2 :UInt64;
}

struct HostFacts {
  hostname @0 :Text;
  kernelRelease @1 :Text;
  cpuVendor @2 :Text;          # "GenuineIntel", "AuthenticAMD"
  cpuFamily @3 :UInt32;
  cpuModel @4 :UInt32;
  cpuStepping @5 :UInt32;
  kvmApiVersion @6 :UInt32;
  capabilities @7 :List(Capability);  # the KVM capabilities this stream depends on
  tscKhz @8 :UInt32;
}

struct Capability {
  name @0 :Text;
  value @1 :Int32;             # KVM_CHECK_EXTENSION result
}

struct Trailer {
  recordCount @0 :UInt64;      # records before the trailer, header included (checked)
  memoryPages @1 :UInt64;      # pages carried by memoryPages records (checked; with a memory
                               # file: the non-zero pages in that file)
  zeroPagesElided @2 :UInt64;
}

# ------------------------------------------------------------------ vCPU

struct Vcpu {
  index @0 :UInt32;
  mpState @1 :UInt32;          # KVM_MP_STATE_*
  regs @2 :Regs;
  sregs @3 :Sregs;
  xcrs @4 :List(Xcr);
  xsave @5 :Data;              # KVM_GET_XSAVE2 region, as many bytes as the host reported
  debugRegs @6 :DebugRegs;
  msrs @7 :List(Msr);          # restore sets TSC_DEADLINE (0x6e0) separately, after the LAPIC
  events @8 :Events;
  cpuid @9 :List(CpuidEntry);  # the table set with KVM_SET_CPUID2: restored first
  tscKhz @10 :UInt32;
}

struct Regs {
  rax @0 :UInt64;  rbx @1 :UInt64;  rcx @2 :UInt64;  rdx @3 :UInt64;
  rsi @4 :UInt64;  rdi @5 :UInt64;  rsp @6 :UInt64;  rbp @7 :UInt64;
  r8 @8 :UInt64;   r9 @9 :UInt64;   r10 @10 :UInt64; r11 @11 :UInt64;
  r12 @12 :UInt64; r13 @13 :UInt64; r14 @14 :UInt64; r15 @15 :UInt64;
  rip @16 :UInt64; rflags @17 :UInt64;
}

struct Segment {
  base @0 :UInt64;
  limit @1 :UInt32;
  selector @2 :UInt16;
  type @3 :UInt8;
  present @4 :Bool;
  dpl @5 :UInt8;
  db @6 :Bool;
  s @7 :Bool;
  l @8 :Bool;
  g @9 :Bool;
  avl @10 :Bool;
  unusable @11 :Bool;
}

struct DescriptorTable {
  base @0 :UInt64;
  limit @1 :UInt16;
}

struct Sregs {
  cs @0 :Segment;  ds @1 :Segment;  es @2 :Segment;  fs @3 :Segment;
  gs @4 :Segment;  ss @5 :Segment;  tr @6 :Segment;  ldt @7 :Segment;
  gdt @8 :DescriptorTable;
  idt @9 :DescriptorTable;
  cr0 @10 :UInt64; cr2 @11 :UInt64; cr3 @12 :UInt64; cr4 @13 :UInt64; cr8 @14 :UInt64;
  efer @15 :UInt64;
  apicBase @16 :UInt64;
  interruptBitmap @17 :List(UInt64);  # KVM's pending external interrupt (4 words)
}

struct Xcr {
  index @0 :UInt32;
  value @1 :UInt64;
}

struct DebugRegs {
  db @0 :List(UInt64);         # DR0-DR3
  dr6 @1 :UInt64;
  dr7 @2 :UInt64;
  flags @3 :UInt64;
}

struct Msr {
  index @0 :UInt32;
  value @1 :UInt64;
}

struct Events {
  exceptionInjected @0 :Bool;
  exceptionNr @1 :UInt8;
  exceptionHasErrorCode @2 :Bool;
  exceptionPending @3 :Bool;
  exceptionErrorCode @4 :UInt32;
  interruptInjected @5 :Bool;
  interruptNr @6 :UInt8;
  interruptSoft @7 :Bool;
  interruptShadow @8 :UInt8;
  nmiInjected @9 :Bool;
  nmiPending @10 :Bool;
  nmiMasked @11 :Bool;
  sipiVector @12 :UInt32;
  flags @13 :UInt32;           # KVM_VCPUEVENT_VALID_* as captured
  smiSmm @14 :Bool;
  smiPending @15 :Bool;
  smiInsideNmi @16 :Bool;
  smiLatchedInit @17 :UInt8;
  tripleFaultPending @18 :Bool;
  exceptionHasPayload @19 :Bool;
  exceptionPayload @20 :UInt64;
}

struct CpuidEntry {
  function @0 :UInt32;
  index @1 :UInt32;
  flags @2 :UInt32;
  eax @3 :UInt32;
  ebx @4 :UInt32;
  ecx @5 :UInt32;
  edx @6 :UInt32;
}

# ------------------------------------------------------------------ local APIC
# Architectural state only, decoded from named registers of the KVM_GET_LAPIC page. No
# implementation structure (no in-service stack, no cached highest vector). PPR is not state: it
# follows from TPR and the highest ISR vector. `ppr` records what KVM reported at capture so that
# restore can check record, derivation and the restored KVM state agree.

enum ApicMode {
  disabled @0;
  xapic @1;
  x2apic @2;
}

struct Lapic {
  vcpuIndex @0 :UInt32;
  apicBase @1 :UInt64;         # IA32_APIC_BASE MSR (base address, BSP, EXTD, EN bits)
  mode @2 :ApicMode;           # follows from apicBase; stored for readers and checked
  id @3 :UInt32;               # full ID (x2APIC: 32 bits; xAPIC: 8 bits)
  version @4 :UInt32;
  tpr @5 :UInt8;
  apr @6 :UInt8;
  ppr @7 :UInt8;               # as captured; must equal derived(tpr, isr)
  ldr @8 :UInt32;
  dfr @9 :UInt32;
  svr @10 :UInt32;
  isr @11 :List(UInt64);       # 256-bit sets as four words, bit n = vector n
  tmr @12 :List(UInt64);
  irr @13 :List(UInt64);
  esr @14 :UInt32;
  icrLow @15 :UInt32;
  icrHigh @16 :UInt32;
  lvtTimer @17 :UInt32;
  lvtThermal @18 :UInt32;
  lvtPerf @19 :UInt32;
  lvtLint0 @20 :UInt32;
  lvtLint1 @21 :UInt32;
  lvtError @22 :UInt32;
  lvtCmci @23 :UInt32;
  timerInitialCount @24 :UInt32;
  timerCurrentCount @25 :UInt32;
  timerDivide @26 :UInt32;
  tscDeadline @27 :UInt64;     # IA32_TSC_DEADLINE, for the timer's TSC-deadline mode
}

# ------------------------------------------------------------------ VM level

struct Pic {
  lastIrr @0 :UInt8;
  irr @1 :UInt8;
  imr @2 :UInt8;
  isr @3 :UInt8;
  priorityAdd @4 :UInt8;
  irqBase @5 :UInt8;
  readRegSelect @6 :UInt8;
  poll @7 :UInt8;
  specialMask @8 :UInt8;
  initState @9 :UInt8;
  autoEoi @10 :UInt8;
  rotateOnAutoEoi @11 :UInt8;
  specialFullyNestedMode @12 :UInt8;
  init4 @13 :UInt8;
  elcr @14 :UInt8;
  elcrMask @15 :UInt8;
}

struct Ioapic {
  baseAddress @0 :UInt64;
  ioregsel @1 :UInt32;
  id @2 :UInt32;
  irr @3 :UInt32;
  redirection @4 :List(UInt64);  # 24 redirection table entries
}

struct Irqchip {
  picMaster @0 :Pic;
  picSlave @1 :Pic;
  ioapic @2 :Ioapic;
}

struct PitChannel {
  count @0 :UInt32;
  latchedCount @1 :UInt16;
  countLatched @2 :UInt8;
  statusLatched @3 :UInt8;
  status @4 :UInt8;
  readState @5 :UInt8;
  writeState @6 :UInt8;
  writeLatch @7 :UInt8;
  rwMode @8 :UInt8;
  mode @9 :UInt8;
  bcd @10 :UInt8;
  gate @11 :UInt8;
  countLoadTime @12 :Int64;
}

struct Pit {
  channels @0 :List(PitChannel);
  flags @1 :UInt32;
}

struct Clock {
  clock @0 :UInt64;            # kvmclock nanoseconds
  flags @1 :UInt32;            # KVM_CLOCK_* flags as captured
  realtime @2 :UInt64;         # host CLOCK_REALTIME at capture (KVM_CLOCK_REALTIME)
  hostTsc @3 :UInt64;
}

struct Device {
  name @0 :Text;
  union {
    serial8250 @1 :Serial8250;
    cmosRtc @2 :CmosRtc;
  }
}

struct Serial8250 {
  ier @0 :UInt8;
  lcr @1 :UInt8;
  mcr @2 :UInt8;
  scr @3 :UInt8;
  dll @4 :UInt8;
  dlm @5 :UInt8;
  fcr @6 :UInt8;
  threPending @7 :Bool;
  rxFifo @8 :Data;
}

struct CmosRtc {
  bytes @0 :Data;              # the 128 CMOS bytes (time registers are recomputed from host time)
  index @1 :UInt8;
}

# ------------------------------------------------------------------ memory

# Pages in runs of consecutive guest frames; `data` holds the runs' pages back to back. All-zero
# pages are left out of full snapshots (memory starts zeroed); in diff snapshots and migration
# rounds, a page in the DirtyLog that no MemoryPages record carries is zero.
struct MemoryPages {
  runs @0 :List(PageRun);
  data @1 :Data;
}

# Full snapshots written with a memory file (`vmctl snapshot --memory-file`) carry guest RAM in
# that file instead of MemoryPages records, so restore can map it (`vmctl restore --lazy`). The
# file is a 4 KiB header (magic "VMCTLMEM", version, RAM size, the snapshot id of the stream it
# belongs to) followed by the regions' bytes back to back in region order; all-zero pages are
# holes. This record comes right after the header, before anything that needs guest RAM.
struct MemoryFile {
  path @0 :Text;               # relative paths are relative to the snapshot file's directory
  ramSize @1 :UInt64;
  headerSize @2 :UInt64;       # where region 0 starts in the file
  fileSize @3 :UInt64;         # header + RAM; checked before mapping (a short file would fault)
}

struct PageRun {
  firstPage @0 :UInt64;        # guest frame number (guest physical address / 4096)
  count @1 :UInt32;
}

# The pages a diff snapshot (or a migration round) covers, per region, run-length encoded:
# `runs` alternates clean and dirty lengths in pages, starting with clean.
struct DirtyLog {
  regions @0 :List(RegionDirtyLog);
}

struct RegionDirtyLog {
  slot @0 :UInt32;
  guestPhys @1 :UInt64;
  pages @2 :UInt64;
  runs @3 :List(UInt64);
}
