#!/usr/bin/env bash
# The one demo command: a PostgreSQL with two tenants behind tenantgate, on this machine.
#
#   scripts/demo.sh          install what is missing, build, (re)start Postgres on 127.0.0.1:5433
#                            and tenantgate on 127.0.0.1:6432, show an allowed and a rejected query
#   scripts/demo.sh stop     stop both
#
# Everything lives in .demo/ (Postgres data in .demo/pg, tenantgate log, pid, audit log, TLS
# certificate). Safe to re-run: it stops what an earlier run started and reloads the schema.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

DEMO="$ROOT/.demo"
PG_PORT=5433
PROXY_PORT=6432
CONFIG_SRC="$ROOT/examples/demo/tenantgate.toml"
CONFIG="$DEMO/tenantgate.toml"
PID_FILE="$DEMO/tenantgate.pid"
PROXY_LOG="$DEMO/tenantgate.log"
BIN="$ROOT/target/release/tenantgate"
SOCK_DIR="/tmp/tenantgate-demo-$(id -u)"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

pg_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -n1)"
    [ -n "$dir" ] || die "no PostgreSQL under /usr/lib/postgresql (run scripts/test.sh --deps-only)"
    echo "$dir"
}

# Postgres refuses to run as root: as root, the server runs as the `postgres` OS user.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# The data directory must be reachable by the server's OS user. .demo/pg is used when it is;
# otherwise (e.g. the repository is under /root) the data lives in postgres's home and .demo/pg
# is a symlink to it.
data_dir() {
    mkdir -p "$DEMO"
    if [ -L "$DEMO/pg" ]; then
        readlink -f "$DEMO/pg"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "$DEMO/pg"
        return 0
    fi
    mkdir -p "$DEMO/pg"
    chown postgres: "$DEMO/pg"
    if runuser -u postgres -- test -w "$DEMO/pg" 2>/dev/null; then
        echo "$DEMO/pg"
        return 0
    fi
    local home
    home="$(getent passwd postgres | cut -d: -f6)"
    mkdir -p "$home/tenantgate-demo/pg"
    chown -R postgres: "$home/tenantgate-demo"
    rm -rf "$DEMO/pg"
    ln -s "$home/tenantgate-demo/pg" "$DEMO/pg"
    echo "$home/tenantgate-demo/pg"
}

stop_proxy() {
    [ -f "$PID_FILE" ] || return 0
    local pid
    pid="$(cat "$PID_FILE")"
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "tenantgate" ]; then
        log "stopping tenantgate (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
}

stop_postgres() {
    local bin data
    bin="$(pg_bin)"
    data="$(data_dir)"
    if [ -f "$data/postmaster.pid" ]; then
        log "stopping the demo Postgres"
        as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

start_postgres() {
    local bin data
    bin="$(pg_bin)"
    data="$(data_dir)"
    if [ -f "$data/PG_VERSION" ] && [ "$(cat "$data/PG_VERSION")" != "$(basename "$(dirname "$bin")")" ]; then
        log "data directory is from another PostgreSQL major: re-initializing"
        rm -rf "$data"
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        log "initializing $data"
        rm -rf "$data"
        mkdir -p "$data"
        if [ "$(id -u)" -eq 0 ]; then chown postgres: "$data"; fi
        chmod 700 "$data"
        as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            -E UTF8 --no-locale >/dev/null
    fi
    mkdir -p "$SOCK_DIR"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$SOCK_DIR"; fi
    if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
        die "port $PG_PORT is taken by another server; stop it first"
    fi
    log "starting Postgres on 127.0.0.1:$PG_PORT"
    as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
        -o "-p $PG_PORT -k $SOCK_DIR -c listen_addresses=127.0.0.1" start >/dev/null ||
        { tail -n 20 "$data/server.log" >&2 || true; die "Postgres did not start"; }
}

superuser_psql() {
    "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK_DIR" -p "$PG_PORT" -U postgres "$@"
}

load_schema() {
    if [ "$(superuser_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'app'")" != "1" ]; then
        superuser_psql -d postgres -c "CREATE DATABASE app"
    fi
    log "loading examples/demo/schema.sql"
    PGOPTIONS="-c client_min_messages=warning" \
        superuser_psql -d app -f "$ROOT/examples/demo/schema.sql" >/dev/null
}

# TLS for clients when openssl is there: a self-signed certificate and a config copy with
# tls_mode = "allow" (plain and TLS clients both work).
write_config() {
    if command -v openssl >/dev/null 2>&1; then
        if [ ! -f "$DEMO/server.crt" ] || [ ! -f "$DEMO/server.key" ]; then
            log "generating a self-signed TLS certificate in .demo/"
            openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=localhost" \
                -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
                -keyout "$DEMO/server.key" -out "$DEMO/server.crt" >/dev/null 2>&1
            chmod 600 "$DEMO/server.key"
        fi
        sed -e "s|^tls_mode = \"disable\".*|tls_mode = \"allow\"\ntls_cert = \"$DEMO/server.crt\"\ntls_key = \"$DEMO/server.key\"|" \
            "$CONFIG_SRC" >"$CONFIG"
        TLS=1
    else
        cp "$CONFIG_SRC" "$CONFIG"
        TLS=0
    fi
}

start_proxy() {
    log "starting tenantgate on 127.0.0.1:$PROXY_PORT (log: .demo/tenantgate.log)"
    # Started from the repository root: the config's relative audit path is .demo/audit.jsonl.
    nohup "$BIN" serve -c "$CONFIG" >>"$PROXY_LOG" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    local pid
    pid="$(cat "$PID_FILE")"
    for _ in $(seq 1 60); do
        if PGPASSWORD=acme_pw PGCONNECT_TIMEOUT=2 "$(pg_bin)/psql" -X -q -tA \
            "host=127.0.0.1 port=$PROXY_PORT dbname=app user=acme_app sslmode=disable" \
            -c "select 1" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$PROXY_LOG" >&2; die "tenantgate exited"; }
        sleep 0.5
    done
    tail -n 30 "$PROXY_LOG" >&2
    die "tenantgate does not answer on port $PROXY_PORT"
}

as_tenant() {
    local user="$1" password="$2" sql="$3"
    PGPASSWORD="$password" "$(pg_bin)/psql" -X -v ON_ERROR_STOP=1 \
        "host=127.0.0.1 port=$PROXY_PORT dbname=app user=$user sslmode=prefer" -c "$sql"
}

show_demo() {
    local allowed="SELECT id, total FROM orders WHERE tenant_id = current_setting('app.current_tenant')"
    echo
    echo "--- allowed: acme_app (tenant acme) reads its own orders"
    echo "\$ $allowed"
    as_tenant acme_app acme_pw "$allowed" || die "the allowed query failed (see .demo/tenantgate.log)"
    echo "--- the same query as globex_app (tenant globex) sees only globex's orders"
    as_tenant globex_app globex_pw "$allowed" || die "the allowed query failed (see .demo/tenantgate.log)"
    echo "--- the same query as initech_app: tenant initech has a schema of its own (schema isolation)"
    as_tenant initech_app initech_pw "$allowed" || die "the allowed query failed (see .demo/tenantgate.log)"
    echo "--- rejected: a query that is not constrained to the tenant"
    echo "\$ SELECT * FROM orders"
    if as_tenant acme_app acme_pw "SELECT * FROM orders" 2>&1; then
        echo "(not rejected: is [policy] mode = \"enforce\"?)"
    fi
    echo
    echo "tenantgate is running (pid $(cat "$PID_FILE")). Connect with:"
    echo "  psql \"host=127.0.0.1 port=$PROXY_PORT dbname=app user=acme_app password=acme_pw\""
    echo "  psql \"host=127.0.0.1 port=$PROXY_PORT dbname=app user=globex_app password=globex_pw\""
    echo "  psql \"host=127.0.0.1 port=$PROXY_PORT dbname=app user=initech_app password=initech_pw\"   (schema isolation)"
    if [ "$TLS" -eq 1 ]; then
        echo "  psql \"host=127.0.0.1 port=$PROXY_PORT dbname=app user=acme_app password=acme_pw sslmode=require\""
        echo "      (TLS with a self-signed certificate: .demo/server.crt)"
    else
        echo "  (TLS is off: openssl is not installed)"
    fi
    echo "Log: .demo/tenantgate.log   Audit log: .demo/audit.jsonl   Config: .demo/tenantgate.toml"
    echo "Stop with: scripts/demo.sh stop"
}

case "${1:-start}" in
    stop)
        stop_proxy
        stop_postgres
        log "stopped"
        ;;
    start)
        bash "$ROOT/scripts/test.sh" --deps-only
        if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        fi
        log "building (cargo build --release -p tenantgate)"
        cargo build --release -p tenantgate
        stop_proxy
        stop_postgres
        start_postgres
        load_schema
        write_config
        start_proxy
        show_demo
        ;;
    *)
        die "usage: scripts/demo.sh [start|stop]"
        ;;
esac
