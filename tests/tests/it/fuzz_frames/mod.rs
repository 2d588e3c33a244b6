//! Seeded, deterministic mutation fuzzing of what clients send: valid streams (startup packets,
//! the SCRAM/md5 exchange, simple and extended protocol, COPY, FunctionCall, Terminate) are
//! mutated (bytes flipped, truncated, duplicated, spliced, lengths set to boundary values,
//! unknown tags, bad counts in Bind, NULs inside and missing after strings, messages in the
//! wrong phase) and sent to the proxy in session and transaction pooling, by a tenant user and a
//! bypass user. For every case the connection must end (or keep answering) within seconds and
//! no row of another tenant may reach a tenant user; after every batch a normal client still
//! works and no proxy task has panicked; at the end no server is leaked or left in a
//! transaction.
//!
//! `TENANTGATE_FUZZ_FRAMES_CASES` sets the number of cases per pool mode (default 150) and
//! `TENANTGATE_FUZZ_FRAMES_SEED` the seed. A failure names the case; `case(seed, n)` rebuilds
//! its bytes.

mod cases;
mod regressions;

use cases::{Case, Start, Then, XorShift, TRUST_BYPASS};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;
use tenantgate_config::{Config, PoolMode};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::*;
use tenantgate_tests::wire::RawConn;
use tenantgate_tests::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, SimpleQueryMessage};

const ADMIN: &str = "fuzz_admin";
const SECRET: &[u8] = b"globex-secret";
const PROBE_ANSWER: &[u8] = b"fuzzprobe";
/// How long a case may take to be answered or closed.
const CASE_DEADLINE: Duration = Duration::from_secs(10);
const BATCH: u64 = 25;

const SCHEMA: &str = "
SET ROLE tg_server;
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text,
    PRIMARY KEY (tenant_id, id));
INSERT INTO orders VALUES ('acme', 1, 'acme-one'), ('acme', 2, 'acme-two'),
    ('globex', 1, 'globex-secret'), ('globex', 2, 'globex-secret');
CREATE TABLE scratch (tenant_id text NOT NULL, v text);
RESET ROLE;
";

/// Panics anywhere in this process outside the test code itself (the proxy runs in-process,
/// and a panicking session task is otherwise only a line on stderr).
static PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_MESSAGES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info.location().map(|l| l.to_string()).unwrap_or_default();
            if !location.starts_with("tests/") {
                PANICS.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut m) = PANIC_MESSAGES.lock() {
                    m.push(format!("{info}"));
                }
            }
            previous(info);
        }));
    });
}

fn assert_no_panics(after: &str) {
    let n = PANICS.load(Ordering::SeqCst);
    let messages = PANIC_MESSAGES.lock().map(|m| m.clone()).unwrap_or_default();
    assert_eq!(n, 0, "the proxy panicked ({after}): {messages:#?}");
}

async fn fuzz_config(mode: PoolMode) -> (String, Config) {
    let pg = PgServer::shared();
    let db = pg.new_database("fuzz", &[SCHEMA]).await;
    let text = format!(
        "{}\n[[users]]\nname = \"{TRUST_BYPASS}\"\nauth_type = \"trust\"\nbypass_policy = true\n\
         \n[[users]]\nname = \"{ADMIN}\"\nauth_type = \"trust\"\nbypass_policy = true\n",
        base_config_toml(pg)
    );
    let mut config = Config::from_toml(&text).unwrap();
    config.proxy.admin_users = vec![ADMIN.into()];
    let d = &mut config.databases[0];
    d.dbname = Some(db.clone());
    d.pool_mode = mode;
    d.pool_size = 4;
    d.query_wait_timeout = 10.0;
    (db, config)
}

fn password(user: &str) -> Option<&'static str> {
    match user {
        ACME_USER => Some(ACME_PASSWORD),
        MD5_CLIENT => Some(MD5_CLIENT_PASSWORD),
        _ => None,
    }
}

/// Startup and an authentication exchange whose first client message is mutated; stops once
/// the mutated message is sent (the proxy may now wait for more, answer or close).
async fn bad_auth(raw: &mut RawConn, user: &str, rng: &mut XorShift) -> anyhow::Result<String> {
    let mut buf = bytes::BytesMut::new();
    frontend::startup_message([("user", user), ("database", pg::APP_DB)], &mut buf)?;
    raw.send(&buf).await?;
    let pw = password(user).unwrap_or("x").as_bytes();
    let mut scram: Option<ScramSha256> = None;
    // Mutate the first or the second message of the exchange.
    let mutate_at = rng.below(2);
    for step in 0..3 {
        let Some(msg) = raw.read_message().await? else {
            return Ok("closed".into());
        };
        if msg.tag != b'R' || msg.body.len() < 4 {
            return Ok(format!("got {:?}", msg.tag as char));
        }
        let code = i32::from_be_bytes([msg.body[0], msg.body[1], msg.body[2], msg.body[3]]);
        let body = &msg.body[4..];
        let mut out = bytes::BytesMut::new();
        match code {
            5 => {
                let salt: [u8; 4] = body.get(..4).unwrap_or(&[0; 4]).try_into()?;
                let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), pw, salt);
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            10 => {
                let s = ScramSha256::new(pw, ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)?;
                scram = Some(s);
            }
            11 => {
                let Some(s) = scram.as_mut() else {
                    return Ok("SASLContinue without SASL".into());
                };
                s.update(body)?;
                frontend::sasl_response(s.message(), &mut out)?;
            }
            _ => return Ok(format!("auth request {code}")),
        }
        let mut out = out.to_vec();
        let what = if step >= mutate_at || code == 5 {
            cases::mutate_auth_message(rng, &mut out)
        } else {
            String::new()
        };
        raw.send(&out).await?;
        if !what.is_empty() {
            return Ok(what);
        }
    }
    Ok("exchange ended".into())
}

/// What the proxy sent on one case's connection.
struct Outcome {
    bytes: Vec<u8>,
    closed: bool,
}

/// Reads until the proxy closes, or `until` appears in what it sent, or the deadline.
async fn read_until(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    got: &mut Vec<u8>,
    until: Option<&[u8]>,
) -> Option<bool> {
    let wait = async {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(needle) = until {
                if got.windows(needle.len()).any(|w| w == needle) {
                    return false;
                }
            }
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(CASE_DEADLINE, wait).await.ok()
}

fn probe() -> Vec<u8> {
    [
        tenantgate_tests::pipeline::sync(),
        tenantgate_tests::pipeline::query("ROLLBACK"),
        tenantgate_tests::pipeline::query("SELECT 'fuzz' || 'probe'"),
    ]
    .concat()
}

/// Runs one case; an error says what went wrong (the proxy hung, or leaked a row).
async fn run_case(proxy: &TestProxy, seed: u64, n: u64, case: &Case) -> Result<Outcome, String> {
    let mut raw = RawConn::connect(proxy.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut login_note = String::new();
    match &case.start {
        Start::Blind => {}
        Start::Login(user) => {
            tokio::time::timeout(CASE_DEADLINE, raw.startup(user, pg::APP_DB, password(user)))
                .await
                .map_err(|_| "login hung".to_string())?
                .map_err(|e| format!("login failed: {e:#}"))?;
        }
        Start::BadAuth(user) => {
            let mut rng = XorShift::new(seed ^ n ^ 0xa5a5);
            login_note = tokio::time::timeout(CASE_DEADLINE, bad_auth(&mut raw, user, &mut rng))
                .await
                .map_err(|_| "mutated authentication: the proxy did not answer".to_string())?
                .unwrap_or_else(|e| format!("auth io: {e}"));
        }
    }
    let stream: TcpStream = raw.stream;
    let (mut rd, mut wr) = stream.into_split();
    let bytes = case.bytes.clone();
    let then = case.then;
    // Written from a task: a proxy that stops reading must not block the test.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        if then == Then::Probe {
            let _ = wr.write_all(&probe()).await;
        }
        let _ = wr.flush().await;
        wr
    });
    if then == Then::Drop {
        let _ = tokio::time::timeout(CASE_DEADLINE, writer).await;
        return Ok(Outcome {
            bytes: Vec::new(),
            closed: true,
        });
    }
    let mut got = Vec::new();
    let mut closed = false;
    if then == Then::Probe {
        match read_until(&mut rd, &mut got, Some(PROBE_ANSWER)).await {
            None => {
                return Err(format!(
                "{login_note}: neither the probe's answer nor a close within {CASE_DEADLINE:?}; \
                     got {} bytes, ending {:?}",
                got.len(),
                String::from_utf8_lossy(&got[got.len().saturating_sub(200)..])
            ))
            }
            Some(c) => closed = c,
        }
    }
    let mut wr = tokio::time::timeout(CASE_DEADLINE, writer)
        .await
        .map_err(|_| "the proxy stopped reading the case's bytes".to_string())?
        .map_err(|e| format!("writer task: {e}"))?;
    if !closed {
        // A client that half-closes: the proxy must notice and close its side.
        let _ = wr.shutdown().await;
        if read_until(&mut rd, &mut got, None).await.is_none() {
            return Err(format!(
                "{login_note}: connection still open {CASE_DEADLINE:?} after the client's FIN; got {} bytes, ending {:?}",
                got.len(),
                String::from_utf8_lossy(&got[got.len().saturating_sub(200)..])
            ));
        }
    }
    if case.tenant_bound && got.windows(SECRET.len()).any(|w| w == SECRET) {
        return Err("a row of tenant globex reached a client of tenant acme".into());
    }
    Ok(Outcome {
        bytes: got,
        closed: true,
    })
}

async fn healthy(proxy: &TestProxy, after: &str) {
    crate::malformed::assert_proxy_still_works(proxy, after).await;
    assert_no_panics(after);
}

/// SHOW POOLS' row of database `app`: (cl_active, cl_waiting, sv_active, sv_idle).
async fn pool_counts(console: &Client) -> (i64, i64, i64, i64) {
    let msgs = console.simple_query("SHOW POOLS").await.unwrap();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            if r.get("database") == Some(pg::APP_DB) {
                let int = |c: &str| r.get(c).and_then(|v| v.parse().ok()).unwrap_or(-1);
                return (
                    int("cl_active"),
                    int("cl_waiting"),
                    int("sv_active"),
                    int("sv_idle"),
                );
            }
        }
    }
    panic!("SHOW POOLS has no row for {}", pg::APP_DB);
}

/// States of the proxy's server backends on the fuzz database, straight from PostgreSQL.
async fn backend_states(superuser: &Client, db: &str) -> Vec<String> {
    superuser
        .query(
            "SELECT coalesce(state, '') FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
            &[&db, &pg::SERVICE_USER],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// After the cases: no client left, no server held, every backend idle and known to the pool.
async fn assert_nothing_leaked(proxy: &TestProxy, db: &str) {
    let console = proxy.connect(ADMIN, "", "tenantgate").await.unwrap();
    let superuser = PgServer::shared().superuser_client(db).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let counts = pool_counts(&console).await;
        let states = backend_states(&superuser, db).await;
        let (cl_active, cl_waiting, sv_active, sv_idle) = counts;
        let settled = cl_active == 0
            && cl_waiting == 0
            && sv_active == 0
            && states.iter().all(|s| s == "idle")
            && states.len() as i64 == sv_idle;
        if settled {
            assert!(
                sv_idle <= proxy.config.databases[0].pool_size as i64,
                "more idle servers than pool_size: {sv_idle}"
            );
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "after the cases: SHOW POOLS (cl_active, cl_waiting, sv_active, sv_idle) = \
                 {counts:?}, backends on PostgreSQL: {states:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn fuzz(mode: PoolMode, seed_offset: u64) {
    count_panics();
    let cases = env_u64("TENANTGATE_FUZZ_FRAMES_CASES", 150);
    let seed = env_u64("TENANTGATE_FUZZ_FRAMES_SEED", 0x7e4a_f00d) ^ seed_offset;
    let (db, config) = fuzz_config(mode).await;
    let proxy = TestProxy::start(config).await;
    // Generous: the long runs go through here too.
    within(60 + cases, "frame fuzzing", async {
        healthy(&proxy, "startup").await;
        let mut closed = 0;
        for n in 0..cases {
            let case = cases::case(seed, n);
            match run_case(&proxy, seed, n, &case).await {
                Ok(o) => closed += usize::from(o.closed && !o.bytes.is_empty()),
                Err(e) => panic!(
                    "case {n} (seed {seed:#x}, {mode:?}, {:?}, {:?}, {}): {e}\nbytes: {:?}",
                    case.start,
                    case.then,
                    case.what,
                    String::from_utf8_lossy(&case.bytes[..case.bytes.len().min(600)])
                ),
            }
            if (n + 1) % BATCH == 0 || n + 1 == cases {
                healthy(&proxy, &format!("cases up to {n} (seed {seed:#x})")).await;
            }
        }
        tracing::info!(cases, closed, "frame fuzzing done");
        assert_nothing_leaked(&proxy, &db).await;
        assert_no_panics("the end");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_frames_in_session_mode() {
    fuzz(PoolMode::Session, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_frames_in_transaction_mode() {
    fuzz(PoolMode::Transaction, 0x5eed).await;
}
