#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/ for a bounded time each (default 30 s;
# `deploy/local/fuzz.sh 600` for a longer hunt). Stable toolchain, libFuzzer without a
# sanitizer: the code under test is safe Rust, and what is hunted is panics and broken
# invariants (header injection, undeliverable addresses, misread replies). A crash fails
# the run and leaves its input in fuzz/artifacts/<target>/; the corpus it grew stays in
# fuzz/corpus/<target>/ for the next run. Seeds live in fuzz/seeds/<target>/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/lib.sh"

seconds=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || die "cargo-fuzz is missing (deploy/local/install-packages.sh installs it)"
cd "$repo/fuzz"
log "building fuzz targets"
cargo fuzz build -s none -O
mkdir -p target
for target in $(cargo fuzz list); do
  log "fuzzing $target for ${seconds}s"
  mkdir -p "corpus/$target"
  output=target/fuzz-$target.log
  if ! cargo fuzz run -s none -O "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 >"$output" 2>&1; then
    tail -n 60 "$output" >&2
    die "fuzz target $target failed; the input is in fuzz/artifacts/$target/, the log in fuzz/$output"
  fi
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$output" || true
done
log "every fuzz target ran ${seconds}s without a crash"
