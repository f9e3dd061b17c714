#!/usr/bin/env bash
# The README's second command: every check and test, against real local services.
# Installs and starts what is missing first, so it also works on a fresh machine and in CI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/lib.sh"

"$here/install-packages.sh"
"$here/start-services.sh"
cd "$repo"

log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Tests that run the dispatcher as separate processes (kill -9, limits shared across
# processes) start this binary; `cargo test` alone does not build it.
log "cargo build --bin sendmill"
cargo build --bin sendmill
# A run that hangs (a service gone, a stage retrying forever) ends here with a diagnosis
# instead of running into CI's limit with nothing said; a whole run takes ~15 min on
# 2 cores, so the bound is generous.
log "cargo test (at most ${SENDMILL_TEST_MINUTES:=40} min)"
# A test binary that dies of a signal (an intermittent SIGSEGV seen in a few full runs,
# cause not found yet) leaves a core dump in tests/ (cargo runs test binaries there;
# kernel.core_pattern is "core" on these machines), which diagnose.sh turns into
# backtraces.
ulimit -c unlimited 2>/dev/null || true
rm -f tests/core tests/core.*
status=0
timeout --kill-after=30s "${SENDMILL_TEST_MINUTES}m" cargo test --workspace --no-fail-fast || status=$?
if [ "$status" -ne 0 ]; then
  "$here/diagnose.sh" >&2
  # 124: timed out; 137: still running 30 s after that, killed.
  case $status in 124 | 137) die "cargo test did not finish within ${SENDMILL_TEST_MINUTES} min" ;; esac
  die "cargo test failed (exit $status); the failures are listed above the diagnosis"
fi
log "fuzz targets, ${SENDMILL_FUZZ_SECONDS:-30}s each"
"$here/fuzz.sh" "${SENDMILL_FUZZ_SECONDS:-30}"
