#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (as root):
#   scripts/dev.sh run [vmctl run options]   install deps, build, boot the demo guest (or your kernel)
#   scripts/dev.sh test                      install deps, build, run the whole test suite
#   scripts/dev.sh bench [NAME...]           install deps, build, run the benchmarks (JSON in build/bench)
#   scripts/dev.sh bench-qemu [OPTIONS]      ... and vmctl side by side with QEMU (bench/README.md)
#   scripts/dev.sh deps | build              the individual steps
# Idempotent: packages already installed are not reinstalled; the build is incremental.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${VMCTL_BUILD_DIR:-$ROOT/build}"

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  capnproto libcapnp-dev libzstd-dev libxxhash-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
  libgtest-dev libcli11-dev libfmt-dev libspdlog-dev nlohmann-json3-dev
  libtomlplusplus-dev libseccomp-dev
  iproute2 openssl procps
  clang libclang-rt-14-dev
  qemu-system-x86
)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    log "dependencies: all installed"
    return
  fi
  log "installing: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "dev.sh: installing packages needs root (run with sudo, or install: ${missing[*]})" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() {
  log "building in $BUILD"
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
    cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  cmake --build "$BUILD" --parallel "$(nproc)"
}

check_kvm() {
  if [[ ! -e /dev/kvm ]]; then
    echo "dev.sh: /dev/kvm is missing: the tests need real KVM (enable virtualization and load kvm_intel/kvm_amd)" >&2
    exit 1
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  deps) deps ;;
  build) deps; build ;;
  run)
    deps
    build
    exec "$BUILD/cli/vmctl" run "$@"
    ;;
  test)
    deps
    check_kvm
    build
    log "fetching the Debian cloud kernel for the Linux boot test"
    bash "$ROOT/scripts/fetch-debian-kernel.sh" "$BUILD/linux" >/dev/null
    log "running the tests"
    cd "$BUILD"
    ctest --output-on-failure --timeout 600 "$@"
    ;;
  bench)
    deps
    check_kvm
    build
    names=("$@")
    ((${#names[@]})) || names=(snapshot migration tpr)
    for name in "${names[@]}"; do
      log "benchmark: $name"
      "$BUILD/bench/${name}_bench" --json "$BUILD/bench/$name.json"
    done
    ;;
  bench-qemu)
    deps  # qemu-system-x86 is in the package list
    check_kvm
    build
    log "benchmark: vmctl vs QEMU (takes minutes; --smoke for one small case)"
    "$BUILD/bench/compare_bench" --json "$BUILD/bench/compare.json" \
      --markdown "$BUILD/bench/compare.md" "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh run [vmctl run options] | test [ctest options] | bench [NAME...] | bench-qemu [options] | deps | build" >&2
    exit 2
    ;;
esac
