#!/usr/bin/env bash
# Fetches Debian's cloud kernel for the Linux boot test: downloads the package that
# linux-image-cloud-amd64 currently depends on with `apt-get download` and unpacks its vmlinuz
# into OUTDIR. The package is not installed. Idempotent: does nothing if OUTDIR/vmlinuz exists.
#   usage: scripts/fetch-debian-kernel.sh OUTDIR
set -euo pipefail

die() {
  echo "fetch-debian-kernel: $*" >&2
  exit 1
}
[[ $# -eq 1 && -n "$1" ]] || die "usage: fetch-debian-kernel.sh OUTDIR"
out="$1"

if [[ -s "$out/vmlinuz" ]]; then
  echo "$out/vmlinuz"
  exit 0
fi
mkdir -p "$out" 2>/dev/null || die "cannot create $out"
for tool in apt-cache apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || die "$tool not found: this needs a Debian or Ubuntu host"
done

meta=linux-image-cloud-amd64
# The metapackage depends on exactly one versioned kernel, linux-image-<abi>-cloud-amd64.
concrete_package() {
  apt-cache depends "$meta" 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n1 || true
}

updated=0
update_lists() {
  apt-get update -qq >/dev/null 2>&1 ||
    die "apt-get update failed: check the network or the apt sources"
  updated=1
}

pkg="$(concrete_package)"
if [[ -z "$pkg" ]]; then
  update_lists
  pkg="$(concrete_package)"
fi
[[ -n "$pkg" ]] || die "cannot resolve $meta to a kernel package: is it in the apt sources?"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt-get download drops privileges to _apt, which must be able to write the directory.
chmod 0755 "$work"
mkdir -m 0777 "$work/dl"

download() {
  (cd "$work/dl" && apt-get download -qq "$pkg" >"$work/apt.log" 2>&1)
}
if ! download; then
  # Stale package lists name a version the mirror no longer has: refresh once and retry.
  if [[ $updated -eq 0 ]]; then
    update_lists
    pkg="$(concrete_package)"
    [[ -n "$pkg" ]] || die "cannot resolve $meta to a kernel package after apt-get update"
  fi
  download || die "apt-get download $pkg failed: $(grep -v '^W:' "$work/apt.log" | tail -n1)"
fi

debs=("$work"/dl/*.deb)
[[ -f "${debs[0]}" ]] || die "apt-get download $pkg produced no .deb"
dpkg-deb -x "${debs[0]}" "$work/root" 2>"$work/dpkg.log" ||
  die "dpkg-deb -x ${debs[0]##*/} failed: $(tail -n1 "$work/dpkg.log")"
images=("$work"/root/boot/vmlinuz-*)
[[ -f "${images[0]}" ]] || die "$pkg contains no /boot/vmlinuz-*"

# Copy then rename, so an interrupted run never leaves a truncated vmlinuz that looks done.
cp "${images[0]}" "$out/vmlinuz.tmp" || die "cannot write $out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$pkg" >"$out/package"
echo "$out/vmlinuz"
