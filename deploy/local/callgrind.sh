#!/usr/bin/env bash
# Instructions per message of each part of the per-message work, counted by
# `valgrind --tool=callgrind` on `sendmill bench work` (src/bench/work.rs): each part is
# run with N messages and with none, and (I(N) - I(0)) / N is printed. Repeatable to well
# under 1 % for the same binary, where seconds on these shared machines are not.
#
#   cargo build --release --bin sendmill
#   deploy/local/callgrind.sh [BINARY] [--json FILE]
#
# Needs valgrind (deploy/local/install-packages.sh installs it). Takes ~2 minutes.
set -euo pipefail

binary=target/release/sendmill
json=""
while [ $# -gt 0 ]; do
    case "$1" in
        --json) json="$2"; shift 2 ;;
        *) binary="$1"; shift ;;
    esac
done
[ -x "$binary" ] || { echo "callgrind.sh: no binary at $binary (cargo build --release --bin sendmill)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed (deploy/local/install-packages.sh)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Instructions (Ir) of one run of `bench work`.
count() {
    local part=$1 messages=$2 out="$work/$1.$2.out"
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$binary" bench work --part "$part" --messages "$messages" >/dev/null 2>"$work/log" \
        || { cat "$work/log" >&2; exit 1; }
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

printf '%-16s %10s %16s\n' part messages "instructions/msg"
entries=()
# part:messages; the RSA parts are slower under valgrind, so fewer.
for spec in rsa:40 build:200 seal:40 render:40 requested-codec:400 ready-codec:400 plan:400; do
    part=${spec%%:*}
    messages=${spec##*:}
    base=$(count "$part" 0)
    full=$(count "$part" "$messages")
    per=$(( (full - base) / messages ))
    printf '%-16s %10d %16d\n' "$part" "$messages" "$per"
    entries+=("\"$part\": $per")
done
if [ -n "$json" ]; then
    (IFS=,; echo "{${entries[*]}}") > "$json"
fi
