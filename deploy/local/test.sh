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
log "cargo test"
cargo test --workspace --no-fail-fast
log "fuzz targets, ${SENDMILL_FUZZ_SECONDS:-30}s each"
"$here/fuzz.sh" "${SENDMILL_FUZZ_SECONDS:-30}"
