#!/usr/bin/env bash
# Installs, from Debian packages, everything Sendmill's local services, build and tests
# need. Idempotent: installs only what is missing, and refreshes the package lists once.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

packages=(
  # build: rdkafka's bundled librdkafka and aws-lc need a C toolchain
  gcc g++ make cmake pkg-config libssl-dev zlib1g-dev perl
  # services
  redis-server postgresql postgresql-client clickhouse-server clickhouse-client
  dnsmasq-base postfix
  # test peers and tools: dkimpy verifies signatures, kcat reads topics, swaks/curl poke
  python3 python3-dkim python3-dnspython kcat swaks curl ca-certificates
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  # postfix asks how to configure itself; we only want its binaries (smtp-sink, postfix
  # for per-recipient tests), never a system MTA listening on :25.
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "all Debian packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  # Debian's own cargo is older than the crates Sendmill builds with; a rustup toolchain
  # (>= the workspace rust-version) must already be on the machine.
  die "no cargo on PATH: install a Rust toolchain >= 1.95 (rustup) and re-run"
fi
