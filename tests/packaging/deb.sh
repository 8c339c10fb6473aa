#!/usr/bin/env bash
# Checks on the built Debian package: metadata, contents, conffile,
# maintainer scripts, and the lintian gate (no errors, no warnings).
#   tests/packaging/deb.sh dist/marketprism-broker_<version>_<arch>.deb
set -euo pipefail

deb=${1:?usage: $0 PACKAGE.deb}
passed=0
failed=0
pass() { echo "PASS  $*"; passed=$((passed + 1)); }
fail() { echo "FAIL  $*"; failed=$((failed + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

contents=$(dpkg-deb -c "$deb" | awk '{ print $1, $2, $6 }')
field() { dpkg-deb -f "$deb" "$1"; }
has() { grep -qE -- "$2" <<<"$1"; }

check "Package is marketprism-broker" test "$(field Package)" = marketprism-broker
homepage=$(awk -F'"' '/^homepage *=/ { print $2; exit }' "$(dirname "${BASH_SOURCE[0]}")/../../Cargo.toml")
check "Homepage is Cargo.toml's homepage ($homepage)" test "$(field Homepage)" = "$homepage"
check "Depends on nats-server (>= 2.9)" has "$(field Depends)" 'nats-server \(>= 2\.9\)'
check "Depends on a sysusers implementation" has "$(field Depends)" 'systemd \| systemd-standalone-sysusers'
for f in \
    './usr/bin/marketprism-broker' \
    './lib/systemd/system/marketprism-broker.service' \
    './usr/lib/sysusers.d/marketprism-broker.conf' \
    './etc/marketprism-broker/broker.yaml' \
    './usr/share/man/man8/marketprism-broker.8.gz' \
    './usr/share/doc/marketprism-broker/examples/seed-services.yaml' \
    './usr/share/doc/marketprism-broker/copyright' \
    './usr/share/marketprism-broker/grafana/marketprism-broker.json' \
    './usr/share/marketprism-broker/prometheus/marketprism-broker.rules.yml'; do
    check "contains $f" has "$contents" " ${f//./\\.}\$"
done
check "the binary is executable (0755)" has "$contents" '^-rwxr-xr-x root/root \./usr/bin/marketprism-broker$'
check "the dashboard and rules are 0644" has "$contents" '^-rw-r--r-- root/root \./usr/share/marketprism-broker/prometheus/marketprism-broker\.rules\.yml$'
# The shipped files are the repository's (byte for byte) and load.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
unpacked=$(mktemp -d)
dpkg-deb -x "$deb" "$unpacked"
share=$unpacked/usr/share/marketprism-broker
check "the dashboard is monitoring/grafana's" cmp -s "$share/grafana/marketprism-broker.json" "$root/monitoring/grafana/marketprism-broker.json"
check "the alert rules are monitoring/prometheus's" cmp -s "$share/prometheus/marketprism-broker.rules.yml" "$root/monitoring/prometheus/marketprism-broker.rules.yml"
check "the dashboard is valid JSON" python3 -m json.tool "$share/grafana/marketprism-broker.json" /dev/null
if command -v promtool >/dev/null 2>&1 || [ -n "${MPB_PROMTOOL:-}" ]; then
    promtool_accepts() { "${MPB_PROMTOOL:-promtool}" check rules "$1" >/dev/null; }
    check "promtool check rules accepts the shipped rules" promtool_accepts "$share/prometheus/marketprism-broker.rules.yml"
fi
rm -rf "$unpacked"

ctl=$(mktemp -d)
trap 'rm -rf "$ctl"' EXIT
dpkg-deb -e "$deb" "$ctl"
check "broker.yaml is a conffile" grep -qx /etc/marketprism-broker/broker.yaml "$ctl/conffiles"
check "postinst creates the account with systemd-sysusers" grep -q 'systemd-sysusers marketprism-broker.conf' "$ctl/postinst"
# shellcheck disable=SC2016 # a literal $conf in the script
check "postinst makes the config 0640 root:marketprism-broker" grep -q 'chown root:marketprism-broker "$conf"' "$ctl/postinst"
check "postinst enables the unit" grep -q 'deb-systemd-helper.*enable.*marketprism-broker.service' "$ctl/postinst"
starts_or_restarts() {
    grep -qE "deb-systemd-invoke .*marketprism-broker.service" "$ctl/postinst" &&
        grep -q '_dh_action=restart' "$ctl/postinst" && grep -q '_dh_action=start' "$ctl/postinst"
}
check "postinst starts the unit, and restarts it on upgrade" starts_or_restarts
check "prerm stops the unit on remove" grep -q 'deb-systemd-invoke stop .*marketprism-broker.service' "$ctl/prerm"
check "postrm removes state on purge" grep -q 'rm -rf /var/lib/marketprism-broker' "$ctl/postrm"
no_account_removal() { ! grep -qE '(userdel|deluser|groupdel|delgroup)' "$ctl/postrm" "$ctl/prerm" "$ctl/postinst"; }
check "no maintainer script removes the account" no_account_removal
for s in postinst prerm postrm; do
    check "$s is valid sh" sh -n "$ctl/$s"
done

# Lintian: errors and warnings fail; each override is justified in
# debian/*.lintian-overrides.
dbgsym=$(dirname "$deb")/$(basename "$deb" | sed 's/^marketprism-broker_/marketprism-broker-dbgsym_/')
lint_targets=("$deb")
if [ -f "$dbgsym" ]; then lint_targets+=("$dbgsym"); fi
lint=$(lintian --pedantic "${lint_targets[@]}" 2>&1 | grep -v 'running with root privileges' || true)
while IFS= read -r line; do [ -n "$line" ] && echo "      lintian: $line"; done <<<"$lint"
lint_clean() { ! grep -qE '^(E|W): ' <<<"$lint"; }
check "lintian: no errors or warnings" lint_clean

echo "deb: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
