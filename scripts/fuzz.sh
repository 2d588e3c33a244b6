#!/usr/bin/env bash
# Fuzz the policy engine for MINUTES (default 5). Not run in CI.
#
# Uses cargo-fuzz (libFuzzer) when a nightly toolchain is available; installs cargo-fuzz if
# missing. Without nightly it falls back to the random-input stress test
# (`policy/tests/hostile.rs::stress`, #[ignore]d in normal runs).
set -euo pipefail

MINUTES="${1:-5}"
SECS=$((MINUTES * 60))
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "installing cargo-fuzz…"
        cargo install cargo-fuzz
    fi
    cd "$ROOT/policy/fuzz"
    mkdir -p corpus/policy_check
    # Seed with the policy corpus statements.
    i=0
    for f in "$ROOT"/policy/tests/corpus/*.corpus; do
        grep -v '^#' "$f" | sed -n 's/^[^|]*| //p' | while IFS= read -r sql; do
            i=$((i + 1))
            printf '%s' "$sql" > "corpus/policy_check/seed-$(basename "$f" .corpus)-$i"
        done
    done
    exec cargo +nightly fuzz run policy_check corpus/policy_check -- -max_total_time="$SECS" -max_len=8192
else
    echo "no nightly toolchain found (rustup toolchain list): cargo-fuzz needs nightly."
    echo "falling back to the random-input stress test for ${MINUTES} minute(s)."
    cd "$ROOT"
    TENANTGATE_STRESS_SECS="$SECS" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-policy}" \
        cargo test -p tenantgate-policy --release --test hostile -- --ignored stress --nocapture
fi
