#!/usr/bin/env bash
# Checks of a built marketprism-broker RPM (packaging/build-rpm.sh):
#
#   tests/packaging/rpm.sh dist/marketprism-broker-0.1.0-1.x86_64.rpm
#
# Reads the package with `rpm -qp` only (nothing is installed): file list,
# modes and owners, the conffile, requirements, header fields and the
# scriptlets, which are also run against stub commands (getent, groupadd,
# useradd, systemctl) to see what they would do. Prints one PASS/FAIL line
# per check and "N passed, N failed"; exits 1 if anything failed.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 PACKAGE.rpm" >&2
    exit 64
fi
pkg=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

command -v rpm >/dev/null || { echo "rpm not found (on Debian: apt-get install -y rpm)" >&2; exit 69; }
[ -f "$pkg" ] || { echo "no such file: $pkg" >&2; exit 66; }

passed=0
failed=0
pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() {
    echo "FAIL: $1"
    if [ $# -gt 1 ]; then printf '%s\n' "$2" | sed 's/^/    /'; fi
    failed=$((failed + 1))
}
# check NAME COMMAND...: PASS when the command succeeds.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
# absent ERE FILE: no line of FILE matches.
absent() { ! grep -Eq "$1" "$2"; }

name=marketprism-broker
etc=/etc/$name
conf=$etc/broker.yaml
statedir=/var/lib/$name
docdir=/usr/share/doc/$name
unit=$name.service

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

q() { rpm -qp "$@" "$pkg" 2>/dev/null; }

# ---- header
version=$(awk -F'"' '/^[[]/ { p = ($0 == "[package]") } p && /^version *=/ { print $2; exit }' "$root/Cargo.toml")
version=${version//-/\~}
info=$(q -i) || { fail "rpm -qpi reads the package"; echo "0 passed, 1 failed"; exit 1; }
check "rpm -qpi: Name is $name" grep -Eq "^Name +: $name\$" <<<"$info"
check "rpm -qpi: Version is $version (Cargo.toml)" grep -Eq "^Version +: $version\$" <<<"$info"
check "rpm -qpi: Release is 1" grep -Eq '^Release +: 1([.].*)?$' <<<"$info"
check "rpm -qpi: License is Apache-2.0" grep -Eq '^License +: Apache-2\.0$' <<<"$info"
check "rpm -qpi: has a Summary" grep -Eq '^Summary +: .{10,}' <<<"$info"
# ---- the binary: stripped (no debug sections, no symbol table)
if command -v rpm2archive >/dev/null && command -v readelf >/dev/null; then
    rpm2archive - <"$pkg" | tar -xzf - -C "$tmp" ./usr/bin/$name
    sections=$(readelf -S --wide "$tmp/usr/bin/$name" 2>/dev/null)
    check "the binary is an ELF file" grep -q '\.text' <<<"$sections"
    # (.debug_gdb_scripts is loaded with the program: strip keeps it.)
    check "the binary is stripped (no .debug_info or .debug_line)" bash -c '! grep -Eq "\.debug_(info|line)" <<<"$1"' _ "$sections"
    check "the binary is stripped (no .symtab)" bash -c '! grep -q "\.symtab" <<<"$1"' _ "$sections"
else
    fail "rpm2archive and readelf are needed to look at the binary"
fi

url=$(q --qf '%{URL}')
homepage=$(awk -F'"' '/^homepage *=/ { print $2; exit }' "$root/Cargo.toml")
check "URL tag is Cargo.toml's homepage ($homepage)" test "$url" = "$homepage"

# ---- requirements
requires=$(q --requires)
check "rpm -qp --requires: nats-server" grep -Eq '^nats-server( |$)' <<<"$requires"
for tool in /usr/bin/getent /usr/sbin/groupadd /usr/sbin/useradd; do
    check "rpm -qp --requires: $tool (for %pre)" grep -Fxq "$tool" <<<"$requires"
done

# ---- file list: exactly these (the man page compressed or not)
expected=(
    "$etc"
    "$conf"
    "/usr/bin/$name"
    "/usr/lib/systemd/system/$unit"
    "/usr/lib/sysusers.d/$name.conf"
    "$docdir"
    "$docdir/README.md"
    "$docdir/examples"
    "/usr/share/man/man8/$name.8"
    "/usr/share/$name"
    "/usr/share/$name/grafana"
    "/usr/share/$name/grafana/$name.json"
    "/usr/share/$name/prometheus"
    "/usr/share/$name/prometheus/$name.rules.yml"
    "$statedir"
)
for f in "$root"/config/examples/*; do
    expected+=("$docdir/examples/${f##*/}")
done
printf '%s\n' "${expected[@]}" | LC_ALL=C sort >"$tmp/expected"
q -l | sed -E 's/\.(gz|bz2|xz|zst)$//' | LC_ALL=C sort >"$tmp/actual"
for f in "${expected[@]}"; do
    check "rpm -qlp: $f" grep -Fxq "$f" "$tmp/actual"
done
if extra=$(LC_ALL=C comm -13 "$tmp/expected" "$tmp/actual") && [ -z "$extra" ]; then
    pass "rpm -qlp: no other files"
else
    fail "rpm -qlp: no other files" "$extra"
fi

# ---- modes, owners, flags
q --qf '[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags}\n]' >"$tmp/attrs"
attrs_of() { awk -v f="$1" '$1 == f { $1 = ""; sub(/^ /, ""); print }' "$tmp/attrs"; }
conf_attrs=$(attrs_of "$conf")
check "$conf is -rw-r----- root $name" grep -Eq "^-rw-r----- root $name " <<<"$conf_attrs"
check "$conf has the config flag" grep -Eq ' [a-z]*c[a-z]*$' <<<"$conf_attrs"
check "$conf is noreplace" grep -Eq ' [a-z]*n[a-z]*$' <<<"$conf_attrs"
check "/usr/bin/$name is -rwxr-xr-x root root" grep -Eq '^-rwxr-xr-x root root' <<<"$(attrs_of /usr/bin/$name)"
check "$unit is -rw-r--r-- root root" grep -Eq '^-rw-r--r-- root root' <<<"$(attrs_of /usr/lib/systemd/system/$unit)"
check "sysusers file is -rw-r--r-- root root" grep -Eq '^-rw-r--r-- root root' <<<"$(attrs_of /usr/lib/sysusers.d/$name.conf)"
for f in grafana/$name.json prometheus/$name.rules.yml; do
    check "/usr/share/$name/$f is -rw-r--r-- root root" grep -Eq '^-rw-r--r-- root root' <<<"$(attrs_of "/usr/share/$name/$f")"
done
check "$statedir is drwxr-x--- $name $name" grep -Eq "^drwxr-x--- $name $name" <<<"$(attrs_of "$statedir")"
check "README.md is %doc" grep -Eq ' [a-z]*d[a-z]*$' <<<"$(attrs_of "$docdir/README.md")"
man=$(q -l | grep -E "^/usr/share/man/man8/$name\.8" || true)
check "man page is %doc" grep -Eq ' [a-z]*d[a-z]*$' <<<"$(attrs_of "$man")"

configfiles=$(q --configfiles)
check "rpm -qp --configfiles: only $conf" test "$configfiles" = "$conf"

# ---- scriptlets
all_scripts=$(q --scripts)
for tag in PREIN POSTIN PREUN POSTUN; do
    body=$(q --qf "%{$tag}")
    printf '%s\n' "$body" >"$tmp/$tag.sh"
    prog=$(q --qf "%{${tag}PROG}")
    if [ -z "$body" ] || [ "$body" = "(none)" ]; then
        fail "$tag scriptlet exists"
        continue
    fi
    pass "$tag scriptlet exists"
    check "$tag scriptlet runs with /bin/sh" test "$prog" = "/bin/sh"
    if macros=$(grep -nE '%[{(?!]|%[A-Za-z_]' "$tmp/$tag.sh"); then
        fail "$tag scriptlet has no unexpanded macros" "$macros"
    else
        pass "$tag scriptlet has no unexpanded macros"
    fi
    if errors=$(/bin/sh -n "$tmp/$tag.sh" 2>&1); then
        pass "$tag scriptlet is valid sh (sh -n)"
    else
        fail "$tag scriptlet is valid sh (sh -n)" "$errors"
    fi
done
if grep -Eq 'userdel|groupdel' <<<"$all_scripts"; then
    fail "no scriptlet removes the user or group"
else
    pass "no scriptlet removes the user or group"
fi

pre=$(cat "$tmp/PREIN.sh")
check "%pre: getent passwd $name" grep -Eq "getent passwd '?$name'?" <<<"$pre"
check "%pre: groupadd -r $name" grep -Eq "groupadd -r '?$name'?" <<<"$pre"
check "%pre: useradd -r, home $statedir, nologin shell" \
    grep -Eq "useradd -r .*-d '?$statedir'? .*-s '?(/usr)?/s?bin/nologin'?.* '?$name'?" <<<"$pre"

# Fedora's systemd-rpm-macros call systemd-update-helper; the spec's
# fallbacks call systemctl. Either is right.
helper=/usr/lib/systemd/systemd-update-helper
post=$(cat "$tmp/POSTIN.sh") preun=$(cat "$tmp/PREUN.sh") postun=$(cat "$tmp/POSTUN.sh")
check "%post: preset $unit on first install" \
    grep -Eq "systemctl (--no-reload )?preset $unit|$helper install-system-units $unit" <<<"$post"
stops_on_erase() {
    if grep -Fq "$helper remove-system-units $unit" <<<"$preun"; then return 0; fi
    grep -Eq "systemctl (--no-reload )?disable (--now )?$unit" <<<"$preun" &&
        grep -Eq "systemctl stop $unit|disable --now $unit" <<<"$preun"
}
check "%preun: disable and stop $unit on erase" stops_on_erase
check "%postun: try-restart $unit on upgrade" \
    grep -Eq "systemctl try-restart $unit|$helper mark-restart-system-units $unit" <<<"$postun"

# ---- run the scriptlets against stubs: PATH holds only the stubs, so
# nothing real is ever called.
if grep -Fq "$helper" <<<"$all_scripts"; then
    echo "SKIP: scriptlets use $helper (systemd-rpm-macros): not run against stubs"
else
    mkdir "$tmp/bin"
    for cmd in getent groupadd useradd systemctl; do
        cat >"$tmp/bin/$cmd" <<EOF
#!/bin/sh
echo "$cmd \$*" >>"$tmp/calls"
[ "$cmd" != getent ] || exit "\${GETENT_STATUS:-2}"
EOF
        chmod +x "$tmp/bin/$cmd"
    done
    # run TAG ARG [ENV...]: run the scriptlet as rpm does (sh script $1).
    run() {
        local tag=$1 arg=$2
        shift 2
        : >"$tmp/calls"
        env -i PATH="$tmp/bin" "$@" /bin/sh "$tmp/$tag.sh" "$arg" >"$tmp/out" 2>&1 || {
            fail "$tag \$1=$arg exits 0" "$(cat "$tmp/out")"
            return 0
        }
        pass "$tag \$1=$arg exits 0"
    }
    calls() { cat "$tmp/calls"; }
    if [ -d /run/systemd/system ]; then booted=1; else booted=0; fi

    run PREIN 1
    check "%pre on a new system: creates group and user" \
        grep -Eq "^groupadd -r $name\$" "$tmp/calls"
    check "%pre on a new system: useradd -r -g $name -d $statedir -s nologin" \
        grep -Eq "^useradd -r -g $name -d $statedir -s (/usr)?/s?bin/nologin .*$name\$" "$tmp/calls"
    run PREIN 2 GETENT_STATUS=0
    check "%pre with the user present: no groupadd/useradd" \
        absent '^(groupadd|useradd)' "$tmp/calls"

    run POSTIN 1
    check "%post install: systemctl --no-reload preset $unit" grep -Fxq "systemctl --no-reload preset $unit" "$tmp/calls"
    run POSTIN 2
    check "%post upgrade: no preset" absent preset "$tmp/calls"

    run PREUN 0
    check "%preun erase: systemctl --no-reload disable $unit" grep -Fxq "systemctl --no-reload disable $unit" "$tmp/calls"
    if [ $booted = 1 ]; then
        check "%preun erase: systemctl stop $unit" grep -Fxq "systemctl stop $unit" "$tmp/calls"
    fi
    run PREUN 1
    check "%preun upgrade: no systemctl" test ! -s "$tmp/calls"

    run POSTUN 1
    if [ $booted = 1 ]; then
        check "%postun upgrade: daemon-reload, try-restart $unit" \
            test "$(calls)" = "systemctl daemon-reload
systemctl try-restart $unit"
    else
        check "%postun upgrade without a running systemd: no systemctl" test ! -s "$tmp/calls"
    fi
    run POSTUN 0
    check "%postun erase: no try-restart" absent try-restart "$tmp/calls"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
