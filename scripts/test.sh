#!/usr/bin/env bash
# The one test command: installs what is missing (Debian/Ubuntu), builds the workspace once and
# runs every test, including the integration tests against a real PostgreSQL that the test
# harness starts by itself on a free port.
#
#   scripts/test.sh               install missing dependencies, build, test
#   scripts/test.sh --deps-only   only install missing dependencies (used by scripts/demo.sh)
#   scripts/test.sh -- ARGS       extra arguments for `cargo test` (e.g. -- -p tenantgate-tests)
#
# Safe to re-run; needs root or sudo only when a package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    build-essential pkg-config ca-certificates curl openssl
    libclang-dev clang
    postgresql postgresql-contrib pgbouncer
)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "not root and no sudo: run as root: $*"
    fi
}

install_packages() {
    command -v dpkg >/dev/null 2>&1 || {
        log "no dpkg: not a Debian system; install by hand: ${APT_PACKAGES[*]}"
        return 0
    }
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "system packages present"
        return 0
    fi
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if command -v cargo >/dev/null 2>&1; then
        return 0
    fi
    log "cargo not found: installing Rust with rustup (https://rustup.rs)"
    if ! command -v curl >/dev/null 2>&1 ||
        ! curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; then
        die "could not install Rust automatically; install it from https://rustup.rs (Rust >= 1.89) and re-run"
    fi
    export PATH="$HOME/.cargo/bin:$PATH"
    command -v cargo >/dev/null 2>&1 || die "cargo still not found after installing Rust"
}

deps_only=0
cargo_test_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --deps-only) deps_only=1 ;;
        --) shift; cargo_test_args=("$@"); break ;;
        *) die "unknown argument $1 (see the header of $0)" ;;
    esac
    shift
done

install_packages
install_rust
[ "$deps_only" -eq 1 ] && exit 0

log "$(cargo --version)"
log "building (cargo build --workspace --all-targets)"
cargo build --workspace --all-targets

log "testing (cargo test --workspace --no-fail-fast)"
test_log="$(mktemp -t tenantgate-test.XXXXXX)"
trap 'rm -f "$test_log"' EXIT
status=0
cargo test --workspace --no-fail-fast "${cargo_test_args[@]}" 2>&1 | tee "$test_log" || status=$?

# One line over every test binary, so a long log still ends with the count.
passed=0 failed=0 ignored=0
while read -r p f i; do
    passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i))
done < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$test_log")
echo
echo "summary: ${passed} passed, ${failed} failed, ${ignored} skipped"
if [ "$status" -ne 0 ]; then
    echo "FAILED (cargo test exit status $status)" >&2
    exit "$status"
fi
[ "$passed" -gt 0 ] || die "no test ran"
