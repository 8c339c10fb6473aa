#!/usr/bin/env bash
# Builds the release artifacts into dist/ (or OUTDIR): the Debian package
# (dpkg-buildpackage from debian/, which also builds the release binary),
# the RPM (from that same binary), and SHA256SUMS over all of them.
#
#   packaging/build-packages.sh [OUTDIR]
#
# DEB_BUILD_OPTIONS is passed through (scripts/test sets nocheck: the
# unit tests have run already).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
outdir=$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)
cd "$root"

version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
cargo_version=$(awk -F'"' '/^version *=/ { print $2; exit }' Cargo.toml)
if [ "${version%%[-+~]*}" != "$cargo_version" ]; then
    echo "build-packages.sh: debian/changelog says $version, Cargo.toml $cargo_version" >&2
    exit 1
fi

# dpkg-buildpackage writes its results next to the source tree (..);
# collect them.
dpkg-buildpackage -b -us -uc >&2
for f in "marketprism-broker_${version}_${arch}.deb" "marketprism-broker-dbgsym_${version}_${arch}.deb" \
    "marketprism-broker_${version}_${arch}.buildinfo" "marketprism-broker_${version}_${arch}.changes"; do
    if [ -f "../$f" ]; then mv "../$f" "$outdir/"; fi
done

rpm=$(PREBUILT="${CARGO_TARGET_DIR:-$root/target}/release/marketprism-broker" packaging/build-rpm.sh "$outdir")

(
    cd "$outdir"
    sha256sum -- *.deb *.rpm >SHA256SUMS
)
echo "$outdir/marketprism-broker_${version}_${arch}.deb"
echo "$rpm"
echo "$outdir/SHA256SUMS"
