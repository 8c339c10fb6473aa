#!/usr/bin/env bash
# Build the marketprism-broker RPM with rpmbuild (Debian's `rpm` package is
# enough) and copy it to OUTDIR (default: dist/ in the repository root).
#
#   packaging/build-rpm.sh [--prebuilt[=BINARY]] [OUTDIR]
#
# --prebuilt, or PREBUILT=1 in the environment, packages the binary already
# built at target/release/marketprism-broker instead of letting the spec run
# `cargo build --release --locked`; --prebuilt=BINARY or PREBUILT=BINARY (a
# path) packages that file. The rpm is built in place from the working tree
# (rpmbuild --build-in-place: nothing is copied or tarred) with a private
# %_topdir in a temporary directory. Prints the path of the copied .rpm.
set -euo pipefail

usage() {
    sed -n '2,12s/^# \{0,1\}//p' "$0" >&2
    exit "${1:-64}"
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
spec=$root/packaging/rpm/marketprism-broker.spec

prebuilt=${PREBUILT:-}
outdir=
while [ $# -gt 0 ]; do
    case $1 in
    --prebuilt) prebuilt=1 ;;
    --prebuilt=*) prebuilt=${1#--prebuilt=} ;;
    -h | --help) usage 0 ;;
    -*) echo "build-rpm.sh: unknown option $1" >&2; usage ;;
    *)
        [ -z "$outdir" ] || usage
        outdir=$1
        ;;
    esac
    shift
done
outdir=${outdir:-$root/dist}

for tool in rpmbuild awk; do
    command -v "$tool" >/dev/null || {
        echo "build-rpm.sh: $tool not found (on Debian: apt-get install -y rpm)" >&2
        exit 69
    }
done

# The package version is Cargo.toml's [package] version, written only there.
version=$(awk -F'"' '/^[[]/ { p = ($0 == "[package]") } p && /^version *=/ { print $2; exit }' "$root/Cargo.toml")
[ -n "$version" ] || { echo "build-rpm.sh: no version in $root/Cargo.toml" >&2; exit 65; }

# The URL tag is Cargo.toml's homepage.
url=$(awk -F'"' '/^[[]/ { p = ($0 == "[package]") } p && /^homepage *=/ { print $2; exit }' "$root/Cargo.toml")
[ -n "$url" ] || { echo "build-rpm.sh: no homepage in $root/Cargo.toml" >&2; exit 65; }

defines=(--define "pkg_version $version" --define "pkg_url $url")
case $prebuilt in
'' | 0 | no | false) ;;
*)
    case $prebuilt in
    1 | yes | true) binary=$root/target/release/marketprism-broker ;;
    /*) binary=$prebuilt ;;
    *) binary=$PWD/$prebuilt ;;
    esac
    if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then
        echo "build-rpm.sh: prebuilt binary $binary is missing or not executable" >&2
        exit 66
    fi
    defines+=(--define "prebuilt_binary $binary")
    ;;
esac

# On a host whose rpm database does not describe the system (Debian: dpkg
# does), BuildRequires cannot be checked: skip that check.
nodeps=()
rpm -q rpm >/dev/null 2>&1 || nodeps=(--nodeps)

topdir=$(mktemp -d "${TMPDIR:-/tmp}/marketprism-broker-rpm.XXXXXX")
trap 'rm -rf "$topdir"' EXIT

# --build-in-place makes %_builddir the current directory: the repository.
# rpmbuild's own output goes to stderr; stdout is only the rpm's path.
(
    cd "$root"
    rpmbuild -bb --build-in-place "${nodeps[@]}" \
        --define "_topdir $topdir" \
        "${defines[@]}" \
        "$spec"
) >&2

shopt -s nullglob
rpms=("$topdir"/RPMS/*/marketprism-broker-"${version//-/\~}"-*.rpm)
[ ${#rpms[@]} -eq 1 ] || {
    echo "build-rpm.sh: expected one rpm, found ${#rpms[@]}" >&2
    exit 1
}

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
cp "${rpms[0]}" "$outdir/"
echo "$outdir/$(basename "${rpms[0]}")"
