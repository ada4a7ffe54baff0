#!/usr/bin/env bash
# Fetches Debian's cloud kernel for the Linux boot test: downloads the package that
# linux-image-cloud-amd64 currently depends on with `apt-get download` and unpacks its vmlinuz
# into OUTDIR. The package is not installed. Idempotent: does nothing if OUTDIR/vmlinuz exists.
#   usage: scripts/fetch-debian-kernel.sh OUTDIR
set -euo pipefail

out="${1:?usage: fetch-debian-kernel.sh OUTDIR}"
die() { echo "fetch-debian-kernel: $*" >&2; exit 1; }

if [[ -s "$out/vmlinuz" ]]; then
  echo "$out/vmlinuz"
  exit 0
fi
command -v apt-get >/dev/null || die "apt-get not found: this needs a Debian or Ubuntu host"

concrete_package() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n1
}

pkg="$(concrete_package)"
if [[ -z "$pkg" ]]; then
  apt-get update -qq >/dev/null || die "apt-get update failed: check the network or apt sources"
  pkg="$(concrete_package)"
fi
[[ -n "$pkg" ]] || die "cannot resolve linux-image-cloud-amd64 to a kernel package (apt sources?)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt-get download drops privileges to _apt, which must be able to write the directory.
chmod 0777 "$work"
(cd "$work" && apt-get download -qq "$pkg" >/dev/null 2>"$work/apt.log") ||
  die "apt-get download $pkg failed: $(tail -n1 "$work/apt.log")"
deb="$(ls "$work"/*.deb 2>/dev/null | head -n1)"
[[ -n "$deb" ]] || die "apt-get download $pkg produced no .deb"
dpkg-deb -x "$deb" "$work/root"
image="$(ls "$work"/root/boot/vmlinuz-* 2>/dev/null | head -n1)"
[[ -n "$image" ]] || die "$pkg contains no /boot/vmlinuz-*"
mkdir -p "$out"
cp "$image" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$pkg" > "$out/package"
echo "$out/vmlinuz"
