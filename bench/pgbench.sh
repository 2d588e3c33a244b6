#!/usr/bin/env bash
# pgbench comparison: PostgreSQL direct vs PgBouncer vs tenantgate, one command.
#
#   bench/pgbench.sh                      full run (DURATION=10 s per cell, SCALE=10)
#   DURATION=2 SCALE=1 bench/pgbench.sh   quick trial
#
# It installs what is missing (postgresql, pgbouncer; apt, as root or via sudo), builds tenantgate
# (release), starts a throw-away PostgreSQL, PgBouncer and tenantgate on free loopback ports in a
# temporary directory, runs `pgbench -n -S -M <mode> -c <clients> -j $JOBS -T <DURATION + connect
# allowance>` for every target x mode x clients cell, measures tenantgate's RSS with $IDLE_CLIENTS idle clients, prints a
# Markdown table and writes bench/results/pgbench-<timestamp>.json (+ latest.json, .md and the
# logs in bench/results/pgbench-<timestamp>/). Everything it started is stopped on exit, also on
# failure or Ctrl-C; re-running is safe (fresh directory and ports every time; leftovers of a run
# that was killed with SIGKILL are cleaned up by the next run).
#
# Environment (defaults in brackets):
#   DURATION [10]  seconds per cell          SCALE [10]   pgbench -i scale factor
#   JOBS [2]       pgbench -j                CLIENTS ["1 32 1000"]
#   MODES ["simple extended prepared"]       TARGETS ["direct relay pgbouncer tenantgate"]
#                  relay: proxy/examples/relay_floor.rs, one upstream connection per client and
#                  bytes copied both ways on one tokio thread, no parsing or pooling: what any
#                  relaying proxy costs on this machine (TCP client leg; cells above
#                  DIRECT_MAX_CLIENTS skipped like direct's)
#   DIRECT_MAX_CLIENTS [100]  direct cells with more clients are skipped (see README)
#   CONNECT_ALLOWANCE [15]  seconds added to -T per 1000 clients (integer arithmetic: none for 32):
#                  pgbench's -T clock starts before its clients have connected, and 1000 SCRAM
#                  logins take several seconds (see README)
#   CELL_TIMEOUT [2*T+90]  hard limit per cell; a hang fails that cell, not the run
#   WARMUP [3]     seconds of direct pgbench before the cells (fills the caches)
#   IDLE_CLIENTS [10000]  idle connections for the RSS measurement (0 = skip)
#   SKIP_BUILD [0] use the existing target/release/tenantgate
#   TG_WORKERS [0] tenantgate's [proxy] workers (0 = automatic: one per core, one on <= 2 cores)
#   KEEP_TMP [0]   keep the temporary directory (data directory, configs, logs)
#   POLICY [1]             tenant isolation cost cells (direct vs policy off/enforce/enforce+audit)
#   POLICY_CLIENTS [1 32]  client counts for those cells
#   INSTRUCTIONS [0]       1 = also count tenantgate's instructions per transaction (callgrind)
#   CACHE_UNNAMED [1]      1 = after each extended group, a tenantgate+cache-unnamed cell
#                          (cache_unnamed_statements = true)
#   SERVER_SOCKET [tcp]    how both poolers reach Postgres: tcp (127.0.0.1) or unix (its
#                          Unix-domain socket)
#   CLIENT_SOCKET [tcp]    how pgbench reaches every target: tcp, or unix (Postgres' socket for
#                          direct, where local logins are trust, not SCRAM; each pooler's
#                          unix_socket_dir). The idle-client and callgrind runs use TCP always.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BENCH="$ROOT/bench"
RESULTS="$BENCH/results"

DURATION="${DURATION:-10}"
SCALE="${SCALE:-10}"
JOBS="${JOBS:-2}"
CLIENTS="${CLIENTS:-1 32 1000}"
MODES="${MODES:-simple extended prepared}"
TARGETS="${TARGETS:-direct relay pgbouncer tenantgate}"
DIRECT_MAX_CLIENTS="${DIRECT_MAX_CLIENTS:-100}"
CONNECT_ALLOWANCE="${CONNECT_ALLOWANCE:-15}"
CELL_TIMEOUT="${CELL_TIMEOUT:-}"
WARMUP="${WARMUP:-3}"
IDLE_CLIENTS="${IDLE_CLIENTS:-10000}"
SKIP_BUILD="${SKIP_BUILD:-0}"
TG_WORKERS="${TG_WORKERS:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
POLICY="${POLICY:-1}"
POLICY_CLIENTS="${POLICY_CLIENTS:-1 32}"
INSTRUCTIONS="${INSTRUCTIONS:-0}"
CACHE_UNNAMED="${CACHE_UNNAMED:-1}"
SERVER_SOCKET="${SERVER_SOCKET:-tcp}"
CLIENT_SOCKET="${CLIENT_SOCKET:-tcp}"
POOL_SIZE=8
MIX_TENANTS="t1 t2 t3 t4 t5 t6 t7 t8"   # tenants (and logins) of the isolation cost cells
PGBENCH_OPTS="-n -S"   # -n: no VACUUM before each cell (the data is read-only; -i vacuumed it)

# 1000 clients (and 10k idle ones) need many file descriptors; the hard limit may be lower.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1
SUDO=()
[ "$IS_ROOT" -eq 1 ] || SUDO=(sudo)   # only used to install packages

# PostgreSQL and PgBouncer refuse to run as root: as root they run as the `postgres` OS user.
as_pg() {
    if [ "$IS_ROOT" -eq 1 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# ---------------------------------------------------------------------------------------------
# 1. Packages and build
# ---------------------------------------------------------------------------------------------
APT_UPDATED=0
need_pkg() {   # need_pkg PACKAGE...: apt-get install those that `dpkg -s` does not report installed
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing ${missing[*]}"
    [ "$IS_ROOT" -eq 1 ] || command -v sudo >/dev/null || die "not root and no sudo: install ${missing[*]} yourself"
    if [ "$APT_UPDATED" -eq 0 ]; then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

need_pkg postgresql pgbouncer
command -v python3 >/dev/null || need_pkg python3
command -v timeout >/dev/null || need_pkg coreutils
command -v runuser >/dev/null || need_pkg util-linux

PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
[ -x "$PGBIN/postgres" ] || die "no PostgreSQL server under /usr/lib/postgresql"
PGBENCH="$PGBIN/pgbench"
PSQL="$PGBIN/psql"
PGBOUNCER=/usr/sbin/pgbouncer
[ -x "$PGBOUNCER" ] || die "$PGBOUNCER missing (package pgbouncer)"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/release/tenantgate"
RELAY_BIN="$TARGET_DIR/release/examples/relay_floor"
if [ "$SKIP_BUILD" = 1 ]; then
    [ -x "$BIN" ] || die "SKIP_BUILD=1 but $BIN does not exist"
    if [[ " $TARGETS " == *" relay "* ]] && [ ! -x "$RELAY_BIN" ]; then
        die "SKIP_BUILD=1 but $RELAY_BIN does not exist (cargo build --release -p tenantgate --example relay_floor)"
    fi
else
    log "building tenantgate (cargo build --release -p tenantgate --bin tenantgate --example relay_floor)"
    cargo build --release -p tenantgate --bin tenantgate --example relay_floor
fi

# ---------------------------------------------------------------------------------------------
# State, cleanup
# ---------------------------------------------------------------------------------------------
TS="$(date -u +%Y%m%dT%H%M%SZ)"
TMP=""
TG_PID=""
RELAY_PID=""
IDLE_PID=""
CELL_PID=""
RUN_LOGS="$RESULTS/pgbench-$TS"

stop_pid() {   # stop_pid PID COMM: SIGTERM (then SIGKILL) a process only if it still is COMM
    local pid="$1" comm="$2" i
    [ -n "$pid" ] || return 0
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

stop_tenantgate() {
    [ -n "$TG_PID" ] || return 0
    stop_pid "$TG_PID" tenantgate
    wait "$TG_PID" 2>/dev/null || true
    TG_PID=""
}

stop_pgbouncer() {   # stop_pgbouncer DIR
    local f="$1/pgbouncer/pgbouncer.pid"
    [ -f "$f" ] && stop_pid "$(cat "$f" 2>/dev/null)" pgbouncer
    return 0
}

stop_postgres() {    # stop_postgres DIR
    [ -f "$1/pg/postmaster.pid" ] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$1/pg" -m fast -t 30 stop >/dev/null 2>&1 \
        || as_pg "$PGBIN/pg_ctl" -D "$1/pg" -m immediate stop >/dev/null 2>&1 || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM ERR
    set +e
    [ -n "$IDLE_PID" ] && kill "$IDLE_PID" 2>/dev/null
    [ -n "${CG_PID:-}" ] && kill "$CG_PID" 2>/dev/null
    [ -n "$CELL_PID" ] && kill -TERM "$CELL_PID" 2>/dev/null && wait "$CELL_PID" 2>/dev/null
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        log "cleaning up"
        stop_tenantgate
        stop_pid "$RELAY_PID" relay_floor
        stop_pgbouncer "$TMP"
        stop_postgres "$TMP"
        mkdir -p "$RUN_LOGS"
        cp -r "$TMP/cells" "$TMP/cells.tsv" "$RUN_LOGS/" 2>/dev/null
        cp "$TMP"/*.log "$TMP"/tenantgate*.toml "$TMP/pgbouncer/pgbouncer.ini" \
            "$TMP/pgbouncer/pgbouncer.log" "$RUN_LOGS/" 2>/dev/null
        if [ "$KEEP_TMP" = 1 ]; then
            log "kept $TMP"
        else
            rm -rf "$TMP"
        fi
        log "logs: ${RUN_LOGS#$ROOT/}/"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'warn "command failed (line $LINENO): $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# Leftovers of runs that died without cleaning up (SIGKILL, OOM): their runner is gone.
for d in /tmp/tenantgate-bench.*; do
    [ -d "$d" ] && [ -f "$d/runner.pid" ] || continue
    kill -0 "$(cat "$d/runner.pid")" 2>/dev/null && continue
    log "removing leftovers of an earlier run in $d"
    [ -f "$d/tenantgate.pid" ] && stop_pid "$(cat "$d/tenantgate.pid")" tenantgate
    [ -f "$d/relay.pid" ] && stop_pid "$(cat "$d/relay.pid")" relay_floor
    stop_pgbouncer "$d"
    stop_postgres "$d"
    rm -rf "$d"
done

TMP="$(mktemp -d /tmp/tenantgate-bench.XXXXXX)"
chmod 755 "$TMP"
echo $$ >"$TMP/runner.pid"
mkdir -p "$TMP/pg" "$TMP/sock" "$TMP/pgbouncer" "$TMP/cells" "$RESULTS"
[ "$IS_ROOT" -eq 1 ] && chown postgres: "$TMP/pg" "$TMP/sock" "$TMP/pgbouncer"
chmod 700 "$TMP/pg"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {   # wait_port PORT SECONDS
    local i
    for i in $(seq 1 $(($2 * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

PW="bench-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
PG_PORT="$(free_port)"
case "$SERVER_SOCKET" in
    tcp) SERVER_HOST=127.0.0.1 ;;
    unix) SERVER_HOST="$TMP/sock" ;;
    *) die "SERVER_SOCKET must be tcp or unix, not '$SERVER_SOCKET'" ;;
esac
# The poolers' client sockets: a directory both PgBouncer (user postgres) and tenantgate can write.
mkdir -p "$TMP/clientsock" && chmod 1777 "$TMP/clientsock"
case "$CLIENT_SOCKET" in
    tcp) POOLER_CLIENT_HOST=127.0.0.1; DIRECT_CLIENT_HOST=127.0.0.1; PGB_UNIX_DIR="" ;;
    unix) POOLER_CLIENT_HOST="$TMP/clientsock"; DIRECT_CLIENT_HOST="$TMP/sock"; PGB_UNIX_DIR="$TMP/clientsock" ;;
    *) die "CLIENT_SOCKET must be tcp or unix, not '$CLIENT_SOCKET'" ;;
esac
PGB_PORT="$(free_port)"
TG_PORT="$(free_port)"
RELAY_PORT="$(free_port)"
while [ "$PGB_PORT" = "$PG_PORT" ]; do PGB_PORT="$(free_port)"; done
while [ "$TG_PORT" = "$PG_PORT" ] || [ "$TG_PORT" = "$PGB_PORT" ]; do TG_PORT="$(free_port)"; done
while [[ " $PG_PORT $PGB_PORT $TG_PORT " == *" $RELAY_PORT "* ]]; do RELAY_PORT="$(free_port)"; done

# ---------------------------------------------------------------------------------------------
# 2. PostgreSQL
# ---------------------------------------------------------------------------------------------
log "PostgreSQL ($PGBIN) on 127.0.0.1:$PG_PORT, data in $TMP/pg"
as_pg "$PGBIN/initdb" -D "$TMP/pg" -U postgres -E UTF8 --auth-local=trust \
    --auth-host=scram-sha-256 >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
cat >>"$TMP/pg/postgresql.conf" <<EOF
# bench/pgbench.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/sock'
max_connections = 1100
shared_buffers = 256MB
fsync = off
synchronous_commit = off
EOF
touch "$TMP/postgres.log"
[ "$IS_ROOT" -eq 1 ] && chown postgres: "$TMP/postgres.log"
as_pg "$PGBIN/pg_ctl" -D "$TMP/pg" -l "$TMP/postgres.log" -w -t 60 start >/dev/null \
    || { tail -n 30 "$TMP/postgres.log" >&2; die "PostgreSQL did not start"; }

psql_super() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$TMP/sock" -p "$PG_PORT" -U postgres "$@"; }
psql_super -d postgres -c "CREATE ROLE bench LOGIN PASSWORD '$PW'" -c "CREATE DATABASE bench OWNER bench"
export PGPASSWORD="$PW"
log "pgbench -i -s $SCALE"
"$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U bench bench >"$TMP/pgbench-init.log" 2>&1 \
    || { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ---------------------------------------------------------------------------------------------
# 3. PgBouncer and tenantgate
# ---------------------------------------------------------------------------------------------
PGB_VERSION="$("$PGBOUNCER" --version 2>/dev/null | head -n1 | awk '{print $2}')"
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
if version_ge "$PGB_VERSION" 1.21; then
    PGB_PREPARED=supported
    PGB_PREPARED_LINE="max_prepared_statements = 200"
else
    PGB_PREPARED=unsupported
    PGB_PREPARED_LINE="; max_prepared_statements needs PgBouncer >= 1.21 (this is $PGB_VERSION)"
fi

log "PgBouncer $PGB_VERSION on 127.0.0.1:$PGB_PORT (prepared statements in transaction mode: $PGB_PREPARED)"
printf '"bench" "%s"\n' "$PW" >"$TMP/pgbouncer/userlist.txt"
cat >"$TMP/pgbouncer/pgbouncer.ini" <<EOF
[databases]
bench = host=$SERVER_HOST port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir = $PGB_UNIX_DIR
auth_type = scram-sha-256
auth_file = $TMP/pgbouncer/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 2000
$PGB_PREPARED_LINE
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer/pgbouncer.log
pidfile = $TMP/pgbouncer/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
chmod 600 "$TMP/pgbouncer/userlist.txt"
[ "$IS_ROOT" -eq 1 ] && chown -R postgres: "$TMP/pgbouncer"
# runuser's PAM session (pam_limits) resets the soft nofile limit to 1024: raise it again.
as_pg sh -c 'ulimit -n "$1" && exec "$2" -d "$3"' sh "$(ulimit -n)" "$PGBOUNCER" "$TMP/pgbouncer/pgbouncer.ini" \
    || { cat "$TMP/pgbouncer/pgbouncer.log" >&2 2>/dev/null; die "PgBouncer did not start"; }
wait_port "$PGB_PORT" 10 || { cat "$TMP/pgbouncer/pgbouncer.log" >&2; die "PgBouncer is not listening"; }

# The [proxy] and [[databases]] part of every tenantgate config this script writes.
tenantgate_config_head() {   # tenantgate_config_head COMMENT
    cat <<EOF
# generated by bench/pgbench.sh ($1)
[proxy]
listen = "127.0.0.1:$TG_PORT"
$([ "$CLIENT_SOCKET" = unix ] && echo "unix_socket_dir = \"$TMP/clientsock\"")
auth_type = "scram-sha-256"
max_client_connections = 20000
max_prepared_statements = 200
log_level = "warn"
workers = $TG_WORKERS

[[databases]]
name = "bench"
host = "$SERVER_HOST"
port = $PG_PORT
dbname = "bench"
user = "bench"
password = "$PW"
pool_mode = "transaction"
pool_size = $POOL_SIZE
EOF
}

{ tenantgate_config_head "pooling"; cat <<EOF

# The benchmark login: no tenant, no policy checks; this measures pooling.
[[users]]
name = "bench"
password = "$PW"
bypass_policy = true

# For the idle-client RSS measurement (bench/idle_clients.py speaks no SCRAM).
[[users]]
name = "idle"
auth_type = "trust"
bypass_policy = true
EOF
} >"$TMP/tenantgate.toml"

start_tenantgate() {
    "$BIN" check -c "$TMP/tenantgate.toml" >/dev/null || die "tenantgate check failed on the generated config"
    "$BIN" serve -c "$TMP/tenantgate.toml" >>"$TMP/tenantgate.log" 2>&1 &
    TG_PID=$!
    echo "$TG_PID" >"$TMP/tenantgate.pid"
    wait_port "$TG_PORT" 20 || { tail -n 30 "$TMP/tenantgate.log" >&2; die "tenantgate is not listening"; }
    # The Unix socket is bound just after the TCP listener.
    if [ "$CLIENT_SOCKET" = unix ]; then
        for _ in $(seq 100); do [ -S "$TMP/clientsock/.s.PGSQL.$TG_PORT" ] && break; sleep 0.1; done
    fi
}
log "tenantgate ($BIN) on 127.0.0.1:$TG_PORT"
start_tenantgate

if [[ " $TARGETS " == *" relay "* ]]; then
    case "$SERVER_SOCKET" in
        tcp) RELAY_UPSTREAM="127.0.0.1:$PG_PORT" ;;
        unix) RELAY_UPSTREAM="$TMP/sock/.s.PGSQL.$PG_PORT" ;;
    esac
    log "relay floor ($RELAY_BIN) on 127.0.0.1:$RELAY_PORT to $RELAY_UPSTREAM"
    "$RELAY_BIN" "127.0.0.1:$RELAY_PORT" "$RELAY_UPSTREAM" >>"$TMP/relay.log" 2>&1 &
    RELAY_PID=$!
    echo "$RELAY_PID" >"$TMP/relay.pid"
    wait_port "$RELAY_PORT" 10 || { cat "$TMP/relay.log" >&2; die "the relay is not listening"; }
fi

target_host() {
    case "$1" in
        direct) echo "$DIRECT_CLIENT_HOST" ;;
        relay) echo 127.0.0.1 ;;
        *) echo "$POOLER_CLIENT_HOST" ;;
    esac
}

target_port() {
    case "$1" in
        direct) echo "$PG_PORT" ;;
        pgbouncer) echo "$PGB_PORT" ;;
        tenantgate*) echo "$TG_PORT" ;;
        relay) echo "$RELAY_PORT" ;;
    esac
}

for t in $TARGETS; do
    out="$("$PSQL" -X -At -h "$(target_host "$t")" -p "$(target_port "$t")" -U bench -d bench \
        -c "SELECT count(*) FROM pgbench_branches" 2>&1)" \
        || die "cannot query through $t: $out"
done

# ---------------------------------------------------------------------------------------------
# 4. The cells
# ---------------------------------------------------------------------------------------------
CELLS="$TMP/cells.tsv"
: >"$CELLS"

clean() { tr '\t\n\r' '   ' | sed 's/  */ /g; s/^ //; s/ $//' | cut -c1-400; }

# Columns: as CELL_FIELDS in bench/report.py.
record() {   # record TARGET MODE CLIENTS STATUS TPS LAT FAILED ABORTED TXNS RC ELAPSED ERROR NOTE CONN_MS T CPU_USER CPU_SYS
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$CELLS"
}

tg_alive() { [ -n "$TG_PID" ] && kill -0 "$TG_PID" 2>/dev/null; }

# The pooler's CPU time (user and system clock ticks, /proc/PID/stat fields 14 and 15) around a
# cell, per transaction: less noisy than tps on a shared machine, and it includes the cell's
# logins (SCRAM), which matter at 1000 clients.
CLK_TCK="$(getconf CLK_TCK)"
pooler_pid() {
    case "$1" in
        pgbouncer) cat "$TMP/pgbouncer/pgbouncer.pid" 2>/dev/null ;;
        tenantgate*) echo "$TG_PID" ;;
        relay) echo "$RELAY_PID" ;;
    esac
}
cpu_ticks() { [ -n "$1" ] && awk '{ print $14, $15 }' "/proc/$1/stat" 2>/dev/null; }

# One pgbench per login in $CELL_USERS (each with CLIENTS / #users clients, -j 1), run at once;
# their results are summed into OUT in pgbench's own format, so run_cell reads them as one.
split_cell() {   # split_cell OUT LIMIT CLIENTS T PORT MODE [extra pgbench args...]
    local out="$1" limit="$2" clients="$3" T="$4" port="$5" mode="$6" u i=0 rc=0
    shift 6
    local users=($CELL_USERS) pids=()
    local per=$((clients / ${#users[@]}))
    [ "$per" -ge 1 ] || per=1
    for u in "${users[@]}"; do
        timeout -k 10 "$limit" "$PGBENCH" ${CELL_OPTS:-$PGBENCH_OPTS} -M "${CELL_PGMODE:-$mode}" -c "$per" -j 1 \
            -T "$T" "$@" -h "$POOLER_CLIENT_HOST" -p "$port" -U "$u" bench >"$out.$i" 2>&1 &
        pids+=($!)
        i=$((i + 1))
    done
    for i in "${!pids[@]}"; do wait "${pids[$i]}" || rc=$?; done
    cat "$out".* >"$out.all"
    awk -v n="${#users[@]}" '
        /^tps = /                                      { tps += $3 }
        /^latency average = /                          { lat += $4 }
        /^initial connection time = /                  { if ($5 > conn) conn = $5 }
        /^number of failed transactions: /             { failed += $5 }
        /^number of transactions actually processed: / { txns += $NF }
        /error|FATAL|ERROR|aborted|could not/          { print }
        END {
            printf "number of transactions actually processed: %d\n", txns
            printf "number of failed transactions: %d (summed over %d pgbench processes)\n", failed, n
            printf "latency average = %.3f ms\n", lat / n
            printf "initial connection time = %.3f ms\n", conn
            printf "tps = %.6f (summed over %d pgbench processes)\n", tps, n
        }' "$out.all" >"$out"
    return "$rc"
}

run_cell() {   # run_cell TARGET MODE CLIENTS [extra pgbench args...]
    local target="$1" mode="$2" clients="$3"
    shift 3
    local name="$target-$mode-$clients"
    local out="$TMP/cells/$name.txt"
    if { [ "$target" = direct ] || [ "$target" = relay ]; } && [ "$clients" -gt "$DIRECT_MAX_CLIENTS" ]; then
        log "$name: skipped"
        record "$target" "$mode" "$clients" skipped "" "" "" "" "" "" "" "" \
            "$target connections above $DIRECT_MAX_CLIENTS are not measured: one backend per client is what a pooler exists to avoid" "" ""
        return 0
    fi
    if [ "$target" != "${target#tenantgate}" ] && ! tg_alive; then
        warn "tenantgate is not running (see the log); restarting it for $name"
        echo "=== bench/pgbench.sh: tenantgate was not running before $name; restarted ===" >>"$TMP/tenantgate.log"
        start_tenantgate
    fi
    local log_before
    log_before="$(wc -l <"$TMP/tenantgate.log")"
    local T=$((DURATION + clients * CONNECT_ALLOWANCE / 1000))
    local limit="${CELL_TIMEOUT:-$((T * 2 + 90))}"
    if [ -n "${CELL_USERS:-}" ]; then
        log "$name: one pgbench ${CELL_OPTS:-$PGBENCH_OPTS} -M ${CELL_PGMODE:-$mode} -c <$clients / logins> -j 1 -T $T $* per login: $CELL_USERS"
    else
        log "$name: pgbench ${CELL_OPTS:-$PGBENCH_OPTS} -M ${CELL_PGMODE:-$mode} -c $clients -j $JOBS -T $T $*"
    fi
    local rc=0 t0 t1 pid cpu0 cpu1 cpu_user="" cpu_sys=""
    pid="$(pooler_pid "$target")"
    cpu0="$(cpu_ticks "$pid" || true)"
    t0="$(date +%s.%N)"
    # In the background + `wait`: a Ctrl-C then interrupts the wait at once (bash defers traps
    # while a foreground child runs, and timeout puts pgbench in its own process group).
    if [ -n "${CELL_USERS:-}" ]; then
        split_cell "$out" "$limit" "$clients" "$T" "$(target_port "$target")" "$mode" "$@" || rc=$?
    else
        timeout -k 10 "$limit" "$PGBENCH" ${CELL_OPTS:-$PGBENCH_OPTS} -M "${CELL_PGMODE:-$mode}" -c "$clients" -j "$JOBS" \
            -T "$T" "$@" -h "$(target_host "$target")" -p "$(target_port "$target")" -U "${CELL_USER:-bench}" bench >"$out" 2>&1 &
        CELL_PID=$!
        wait "$CELL_PID" || rc=$?
        CELL_PID=""
    fi
    t1="$(date +%s.%N)"
    cpu1="$(cpu_ticks "$pid" || true)"
    local tps lat failed aborted errors txns err note="" status conn
    conn="$(sed -n 's/^initial connection time = \([0-9.]*\) ms.*/\1/p' "$out" | tail -n1)"
    tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | tail -n1)"
    lat="$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | tail -n1)"
    failed="$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | tail -n1)"
    txns="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | tail -n1)"
    aborted="$(grep -c 'aborted in command' "$out" || true)"
    errors="$(grep -c 'error:' "$out" || true)"
    err="$(grep -m1 -E '^pgbench: (error|fatal)|FATAL|ERROR|aborted|could not' "$out" | clean || true)"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        err="hung: killed by timeout after ${limit}s${err:+; $err}"
    fi
    if [ -n "$cpu0" ] && [ -n "$cpu1" ] && [ "${txns:-0}" -gt 0 ]; then
        read -r cpu_user cpu_sys < <(awk -v a="$cpu0" -v b="$cpu1" -v hz="$CLK_TCK" -v n="$txns" 'BEGIN {
            split(a, x, " "); split(b, y, " ");
            printf "%.2f %.2f\n", (y[1] - x[1]) / hz * 1e6 / n, (y[2] - x[2]) / hz * 1e6 / n }')
    fi
    if [ "$rc" -eq 0 ] && [ -n "$tps" ] && [ "${failed:-0}" -eq 0 ] && [ "$errors" -eq 0 ]; then
        status=ok
        err=""
    else
        status=failed
        if [ -z "$err" ] && [ "${txns:-}" = 0 ]; then
            err="no transaction completed within -T ${T}s${conn:-: the clients did not even finish connecting (raise CONNECT_ALLOWANCE)}"
        fi
        [ -n "$err" ] || err="$(tail -n 3 "$out" | clean)"
        if [ "$errors" -gt 1 ]; then err="$errors error lines, first: $err"; fi
    fi
    if [ "$target" = pgbouncer ] && [ "$mode" = prepared ] && [ "$PGB_PREPARED" = unsupported ]; then
        note="PgBouncer $PGB_VERSION has no prepared-statement support in transaction mode (max_prepared_statements needs >= 1.21)"
        if [ "$status" = ok ]; then
            note="$note; pgbench reported no error in this cell, which is luck (one client, or every server connection happened to have P_0), not support"
        fi
        status=unsupported
    fi
    if [ "$target" != "${target#tenantgate}" ]; then
        local new
        new="$(tail -n +"$((log_before + 1))" "$TMP/tenantgate.log" | grep -cE 'WARN|ERROR' || true)"
        if [ "$new" -gt 0 ]; then
            note="${note:+$note; }tenantgate logged $new warning/error line(s), first: $(tail -n +"$((log_before + 1))" "$TMP/tenantgate.log" | grep -m1 -E 'WARN|ERROR' | clean)"
        fi
        if ! tg_alive; then
            status=failed
            note="${note:+$note; }tenantgate exited during this cell"
        fi
    fi
    record "$target" "$mode" "$clients" "$status" "$tps" "$lat" "$failed" "$aborted" "$txns" "$rc" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" "$err" "$note" "$conn" "$T" \
        "$cpu_user" "$cpu_sys"
    log "$name: $status tps=${tps:--} latency=${lat:--} ms failed=${failed:--} aborted=$aborted errors=$errors${err:+ ($err)}"
}

if [ "$WARMUP" -gt 0 ]; then
    log "warm-up: ${WARMUP}s of pgbench -S directly"
    "$PGBENCH" -n -S -c 2 -j 2 -T "$WARMUP" -h 127.0.0.1 -p "$PG_PORT" -U bench bench >"$TMP/warmup.log" 2>&1 || true
fi

# The pooling configuration with cache_unnamed_statements (extended mode sends unnamed statements).
cache_unnamed_cell() {   # cache_unnamed_cell CLIENTS
    cp "$TMP/tenantgate.toml" "$TMP/tenantgate.pooling.toml"
    sed 's/^max_prepared_statements = .*/&\ncache_unnamed_statements = true/' \
        "$TMP/tenantgate.pooling.toml" >"$TMP/tenantgate.toml"
    stop_tenantgate
    start_tenantgate
    run_cell tenantgate+cache-unnamed extended "$1"
    stop_tenantgate
    cp "$TMP/tenantgate.pooling.toml" "$TMP/tenantgate.toml"
    start_tenantgate
}

RUN_START="$(date +%s)"
# Cells of one (mode, clients) pair run back to back so that ratios compare neighbours in time.
for c in $CLIENTS; do
    for m in $MODES; do
        for t in $TARGETS; do
            run_cell "$t" "$m" "$c"
        done
        if [ "$m" = extended ] && [ "$CACHE_UNNAMED" = 1 ] && [[ " $TARGETS " == *" tenantgate "* ]]; then
            cache_unnamed_cell "$c"
        fi
    done
done
# ---------------------------------------------------------------------------------------------
# 7. Tenant isolation cost: the same tenant-filtered point select, directly (the tenant set with
#    PGOPTIONS) and through tenantgate with [policy] mode = "off", "enforce", and "enforce" plus
#    the audit log (log_allowed = "all"). POLICY=0 skips it.
# ---------------------------------------------------------------------------------------------
policy_config() {   # policy_config MODE AUDIT_PATH: the tenantgate config for one variant
    tenantgate_config_head "tenant isolation cost"
    local t
    for t in $MIX_TENANTS; do
        printf '\n[[users]]\nname = "%s"\npassword = "%s"\ntenant = "%s"\n' "$t" "$PW" "$t"
    done
    cat <<EOF

[policy]
mode = "$1"
EOF
    if [ -n "$2" ]; then
        printf '\n[audit]\npath = "%s"\nlog_allowed = "all"\n' "$2"
    fi
}

policy_runs() {
    [ "$POLICY" = 1 ] || return 0
    log "tenant isolation cost: tenant_accounts (tenant_id, aid) for tenants $MIX_TENANTS"
    psql_super -d bench <<EOF >/dev/null
DROP TABLE IF EXISTS tenant_accounts;
CREATE TABLE tenant_accounts (tenant_id text NOT NULL, aid int NOT NULL, abalance int NOT NULL DEFAULT 0,
                              PRIMARY KEY (tenant_id, aid));
INSERT INTO tenant_accounts SELECT 't' || t, g, 0 FROM generate_series(1, 100000 * $SCALE) g, generate_series(1, $(echo $MIX_TENANTS | wc -w)) t;
ANALYZE tenant_accounts;
GRANT SELECT ON tenant_accounts TO bench;
EOF
    local script="$BENCH/tenant_select.sql" m c variant
    cp "$TMP/tenantgate.toml" "$TMP/tenantgate.pooling.toml"
    for m in extended prepared; do
        for c in $POLICY_CLIENTS; do
            CELL_OPTS="-n" CELL_PGMODE="$m" PGOPTIONS="-c app.current_tenant=t1" \
                run_cell direct "tenant-$m" "$c" -f "$script" -D "naccounts=$((100000 * SCALE))"
            for variant in off enforce audit enforce-8-tenants; do
                stop_tenantgate
                local mode="$variant" audit="" users=""
                if [ "$variant" = audit ]; then mode=enforce; audit="$TMP/audit.jsonl"; rm -f "$audit"*; fi
                if [ "$variant" = enforce-8-tenants ]; then
                    # Clients of eight tenants share the servers: nearly every checkout changes
                    # the server's tenant. Skipped at 1 client (one pgbench per tenant).
                    [ "$c" -ge 8 ] || continue
                    mode=enforce
                    users="$MIX_TENANTS"
                fi
                policy_config "$mode" "$audit" >"$TMP/tenantgate.toml"
                start_tenantgate
                CELL_OPTS="-n" CELL_PGMODE="$m" CELL_USER=t1 CELL_USERS="$users" \
                    run_cell "tenantgate+$variant" "tenant-$m" "$c" -f "$script" -D "naccounts=$((100000 * SCALE))"
            done
        done
    done
    if [ -f "$TMP/audit.jsonl" ]; then
        NOTE_POLICY="audit log of the last audit cell: $("$BIN" audit verify "$TMP/audit.jsonl" 2>&1 | head -n1)"
        log "$NOTE_POLICY"
    fi
    # Back to the pooling configuration for what follows.
    stop_tenantgate
    cp "$TMP/tenantgate.pooling.toml" "$TMP/tenantgate.toml"
    start_tenantgate
}
NOTE_POLICY=""
policy_runs
RUN_SECS=$(( $(date +%s) - RUN_START ))

# ---------------------------------------------------------------------------------------------
# 6. tenantgate RSS with many idle clients (a fresh process, so pgbench load does not inflate it)
# ---------------------------------------------------------------------------------------------
IDLE_JSON=""
if [ "$IDLE_CLIENTS" -gt 0 ]; then
    log "tenantgate RSS with $IDLE_CLIENTS idle clients (fresh tenantgate; nofile limit $(ulimit -n))"
    # PgBouncer is done; stopping it leaves only tenantgate's server connections for the probe.
    stop_pgbouncer "$TMP"
    echo "=== bench/pgbench.sh: restarting tenantgate for the idle-client measurement ===" >>"$TMP/tenantgate.log"
    stop_tenantgate
    start_tenantgate
    sleep 1
    IDLE_JSON="$TMP/idle.json"
    probe="$PSQL -X -At -h $TMP/sock -p $PG_PORT -U postgres -d postgres -c \"SELECT count(*) || ' (pg_stat_activity rows of role bench)' FROM pg_stat_activity WHERE usename = 'bench'\""
    python3 "$BENCH/idle_clients.py" --host 127.0.0.1 --port "$TG_PORT" --user idle --database bench \
        --count "$IDLE_CLIENTS" --pid "$TG_PID" --probe-cmd "$probe" >"$IDLE_JSON" 2>"$TMP/idle_clients.log" &
    IDLE_PID=$!
    idle_rc=0
    wait "$IDLE_PID" || idle_rc=$?
    IDLE_PID=""
    tail -n 1 "$TMP/idle_clients.log" >&2 || true
    [ "$idle_rc" -eq 0 ] || warn "idle_clients.py exited with $idle_rc (see the JSON / idle_clients.log)"
    [ -s "$IDLE_JSON" ] || echo "{\"error\": \"idle_clients.py exit $idle_rc: $(tail -n 3 "$TMP/idle_clients.log" | clean | sed 's/"/\\"/g')\"}" >"$IDLE_JSON"
    tg_alive || warn "tenantgate exited during the idle-client measurement"
fi

# ---------------------------------------------------------------------------------------------
# 6b. tenantgate's own instructions per transaction, counted by callgrind (INSTRUCTIONS=1).
#     Counts, not seconds: they repeat from run to run whatever else the machine is doing, so
#     two builds can be compared where tps differences drown in noise. Logins use the trust
#     user `idle` (no SCRAM in the count); the count includes everything else tenantgate runs.
# ---------------------------------------------------------------------------------------------
NOTE_INSTR=""
if [ "$INSTRUCTIONS" = 1 ]; then
    need_pkg valgrind
    stop_tenantgate
    log "tenantgate under callgrind: pgbench -S -M extended -c 32 -t 300 (user idle)"
    CG_OUT="$TMP/callgrind.out"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$CG_OUT" \
        "$BIN" serve -c "$TMP/tenantgate.toml" >>"$TMP/tenantgate-callgrind.log" 2>&1 &
    CG_PID=$!
    cg_pgbench() {
        "$PGBENCH" -n -S -M extended -c 32 -j "$JOBS" -t "$1" -h 127.0.0.1 -p "$TG_PORT" -U idle bench 2>&1
    }
    if wait_port "$TG_PORT" 120; then
        cg_pgbench 20 >/dev/null || true   # warm-up: the pool's servers, caches
        callgrind_control -i on "$CG_PID" >/dev/null
        cg_txns="$(cg_pgbench 300 | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')"
        callgrind_control -i off "$CG_PID" >/dev/null
        callgrind_control -d "$CG_PID" >/dev/null
        kill -TERM "$CG_PID" 2>/dev/null
        wait "$CG_PID" 2>/dev/null || true
        # awk reads to the end: an early exit would kill callgrind_annotate with SIGPIPE.
        cg_total="$(callgrind_annotate "$(ls -S "$CG_OUT"* | head -n1)" 2>/dev/null \
            | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }' || true)"
        if [ -n "$cg_txns" ] && [ "${cg_txns:-0}" -gt 0 ] && [ -n "$cg_total" ]; then
            NOTE_INSTR="tenantgate executed $((cg_total / cg_txns)) instructions per transaction under callgrind ($cg_total for $cg_txns transactions of pgbench -S -M extended -c 32, logins included, trust auth, bypass_policy)"
            log "$NOTE_INSTR"
        else
            warn "callgrind count failed (transactions: ${cg_txns:-none}, total: ${cg_total:-none})"
        fi
    else
        warn "tenantgate under valgrind did not start listening; see $TMP/tenantgate-callgrind.log"
        kill -TERM "$CG_PID" 2>/dev/null
        wait "$CG_PID" 2>/dev/null || true
    fi
fi

# ---------------------------------------------------------------------------------------------
# 5. Report
# ---------------------------------------------------------------------------------------------
META="$TMP/meta.tsv"
{
    printf 'timestamp\t%s\n' "$TS"
    printf 'hostname\t%s\n' "$(hostname)"
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'cpu_model\t%s\n' "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
    printf 'mem_total_kb\t%s\n' "$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'os\t%s\n' "$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
    printf 'pgbench_version\t%s\n' "$("$PGBENCH" --version)"
    printf 'pgbouncer_version\t%s\n' "$PGB_VERSION"
    printf 'postgres_version\t%s\n' "$("$PGBIN/postgres" --version)"
    printf 'tenantgate_version\t%s\n' "$("$BIN" --version 2>/dev/null)"
    printf 'git_commit\t%s\n' "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    printf 'git_dirty\t%s\n' "$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo true || echo false)"
    printf 'duration_s\t%s\n' "$DURATION"
    printf 'scale\t%s\n' "$SCALE"
    printf 'jobs\t%s\n' "$JOBS"
    printf 'pool_size\t%s\n' "$POOL_SIZE"
    printf 'server_socket\t%s\n' "$SERVER_SOCKET"
    printf 'client_socket\t%s\n' "$CLIENT_SOCKET"
    printf 'clients\t%s\n' "$CLIENTS"
    printf 'modes\t%s\n' "$MODES"
    printf 'targets\t%s\n' "$TARGETS"
    printf 'direct_max_clients\t%s\n' "$DIRECT_MAX_CLIENTS"
    printf 'cell_timeout_s\t%s\n' "${CELL_TIMEOUT:-2*T+90}"
    printf 'connect_allowance_s_per_1000_clients\t%s\n' "$CONNECT_ALLOWANCE"
    printf 'warmup_s\t%s\n' "$WARMUP"
    printf 'idle_clients\t%s\n' "$IDLE_CLIENTS"
    printf 'pgbouncer_prepared\t%s\n' "$PGB_PREPARED"
    printf 'policy\t%s\n' "$POLICY"
    printf 'pgbench_options\t%s\n' "$PGBENCH_OPTS -M <mode> -c <clients> -j $JOBS -T <DURATION + clients*CONNECT_ALLOWANCE/1000>"
    printf 'note_cells_seconds\t%s\n' "pgbench cells took ${RUN_SECS}s in total"
    [ -n "$NOTE_POLICY" ] && printf 'note_policy\t%s\n' "$NOTE_POLICY"
    [ -n "$NOTE_INSTR" ] && printf 'note_instructions\t%s\n' "$NOTE_INSTR"
    true
} >"$META"

echo
python3 "$BENCH/report.py" --cells "$CELLS" --meta "$META" ${IDLE_JSON:+--idle "$IDLE_JSON"} \
    --json "$RESULTS/pgbench-$TS.json" --json "$RESULTS/latest.json" \
    --md "$RESULTS/pgbench-$TS.md" --md "$RESULTS/latest.md"
echo
log "results: ${RESULTS#$ROOT/}/pgbench-$TS.json (and latest.json, .md); cells took ${RUN_SECS}s"
if awk -F'\t' '$4 == "failed" { found = 1 } END { exit !found }' "$CELLS"; then
    warn "some cells failed; tenantgate log tail:"
    tail -n 20 "$TMP/tenantgate.log" >&2 || true
fi
