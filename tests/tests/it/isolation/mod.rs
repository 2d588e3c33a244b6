//! Tenant isolation end to end (issue 6): a two-tenant schema on a real PostgreSQL, attacked as
//! tenant `acme` through the proxy with tokio-postgres (simple and extended protocol), psql and
//! hand-built protocol messages. Every attempt must be refused with the documented rule, leave
//! the connection usable and change nothing; the suite runs once with Row-Level Security off
//! (the proxy alone stands between tenants) and once with it on.
//!
//! Each test gets a database of its own (created before the proxy starts, since the proxy reads
//! the catalog at startup), so tests run in parallel and the tables can have ORM-style names.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tenantgate_config::{Config, PolicyMode, PoolMode};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::pipeline;
use tenantgate_tests::proxy::*;
use tenantgate_tests::wire::{self, RawConn};
use tenantgate_tests::{tools, within};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage};

#[macro_use]
mod attacks;
use attacks::*;
mod checkout;
mod sessions;

const GLOBEX_USER: &str = "globex_app";
const GLOBEX_PASSWORD: &str = "globex_pw";
const GLOBEX_TENANT: &str = "globex";
/// `tenant_from = "switch"`, may act for acme and globex.
const SWITCH_USER: &str = "switch_svc";
const SWITCH_PASSWORD: &str = "switch_pw";

/// acme owns orders 1–3 and customers 1–2; globex orders 4–6 and customers 3–4.
const ACME_ORDERS: [i64; 3] = [1, 2, 3];
const GLOBEX_ORDERS: [i64; 3] = [4, 5, 6];

const SCHEMA: &str = "
SET ROLE tg_server;
CREATE TABLE customers (
    tenant_id text NOT NULL, id bigint NOT NULL, name text, email text,
    PRIMARY KEY (tenant_id, id), UNIQUE (id));
CREATE TABLE orders (
    tenant_id text NOT NULL, id bigint NOT NULL, customer_id bigint, total numeric, status text,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id));
-- A tenant table whose link to orders is not provable (no composite foreign key).
CREATE TABLE invoices (
    tenant_id text NOT NULL, id bigint NOT NULL, order_id bigint, amount numeric,
    PRIMARY KEY (tenant_id, id));
-- Shared (listed in shared_tables) and unknown (no tenant column, not listed).
CREATE TABLE plans (id bigint PRIMARY KEY, name text, price numeric);
CREATE TABLE secrets (id int, value text);
INSERT INTO customers VALUES
    ('acme', 1, 'Alice', 'alice@acme.test'), ('acme', 2, 'Bob', 'bob@acme.test'),
    ('globex', 3, 'Carol', 'carol@globex.test'), ('globex', 4, 'Dave', 'dave@globex.test');
INSERT INTO orders VALUES
    ('acme', 1, 1, 10.00, 'paid'), ('acme', 2, 1, 20.00, 'open'), ('acme', 3, 2, 30.00, 'paid'),
    ('globex', 4, 3, 40.00, 'paid'), ('globex', 5, 3, 50.00, 'open'), ('globex', 6, 4, 60.00, 'paid');
INSERT INTO invoices VALUES ('acme', 1, 1, 10.00), ('globex', 2, 4, 40.00);
INSERT INTO plans VALUES (1, 'free', 0), (2, 'pro', 10), (3, 'enterprise', 100);
INSERT INTO secrets VALUES (1, 's3cr3t');
-- The proxy's server role may do anything Postgres allows: only tenantgate (and, in the RLS
-- variant, the policies) stand in the way.
GRANT ALL ON ALL TABLES IN SCHEMA public TO app_rw;
GRANT CREATE ON SCHEMA public TO app_rw;
RESET ROLE;
";

fn rls_sql() -> String {
    let mut sql = String::from("SET ROLE tg_server;\n");
    for t in ["customers", "orders", "invoices"] {
        sql.push_str(&format!(
            "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;
             ALTER TABLE {t} FORCE ROW LEVEL SECURITY;
             CREATE POLICY tenant_isolation ON {t}
                 USING (tenant_id = current_setting('app.current_tenant', true))
                 WITH CHECK (tenant_id = current_setting('app.current_tenant', true));\n"
        ));
    }
    sql.push_str("RESET ROLE;\n");
    sql
}

/// A fresh database with the two-tenant schema (and RLS policies when `rls`); returns its name.
async fn tenant_database(rls: bool) -> String {
    let pg = PgServer::shared();
    if rls {
        pg.new_database("iso_rls", &[SCHEMA, &rls_sql()]).await
    } else {
        pg.new_database("iso_plain", &[SCHEMA]).await
    }
}

/// The harness config with database `app` pointed at `db` (logging in as the NOBYPASSRLS,
/// non-owner role `app_rw`), a globex user, a switch user and `plans` as shared table.
/// A raw protocol connection through `proxy`, logged in to the app database as `user`.
async fn raw_login(proxy: &TestProxy, user: &str, password: &str) -> RawConn {
    let mut c = RawConn::connect(proxy.addr).await.unwrap();
    c.startup(user, pg::APP_DB, Some(password)).await.unwrap();
    c
}

fn tenant_config(db: &str, mode: PoolMode, pool_size: usize) -> Config {
    let pg = PgServer::shared();
    let text = format!(
        r#"{base}
[[users]]
name = "{GLOBEX_USER}"
password = "{GLOBEX_PASSWORD}"
tenant = "{GLOBEX_TENANT}"

[[users]]
name = "{SWITCH_USER}"
password = "{SWITCH_PASSWORD}"
tenant_from = "switch"
allowed_tenants = ["acme", "globex"]

[tenancy]
shared_tables = ["plans"]
"#,
        base = base_config_toml(pg)
    );
    let mut config =
        Config::from_toml(&text).unwrap_or_else(|e| panic!("tenant config: {e}\n{text}"));
    let d = &mut config.databases[0];
    d.dbname = Some(db.to_string());
    d.user = pg::APP_RW_USER.to_string();
    d.password = Some(pg::APP_RW_PASSWORD.to_string());
    d.pool_mode = mode;
    d.pool_size = pool_size;
    d.query_wait_timeout = 20.0;
    config
}

/// Everything in the database a bypass could change, read as the superuser: every row of
/// every table, the relations with their RLS flags and ACLs, functions, policies, large objects.
async fn snapshot(su: &Client) -> String {
    let sql = "SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
        SELECT 'customers ' || coalesce(string_agg(t::text, '|' ORDER BY t::text), '') FROM customers t
        UNION ALL SELECT 'orders ' || coalesce(string_agg(t::text, '|' ORDER BY t::text), '') FROM orders t
        UNION ALL SELECT 'invoices ' || coalesce(string_agg(t::text, '|' ORDER BY t::text), '') FROM invoices t
        UNION ALL SELECT 'plans ' || coalesce(string_agg(t::text, '|' ORDER BY t::text), '') FROM plans t
        UNION ALL SELECT 'secrets ' || coalesce(string_agg(t::text, '|' ORDER BY t::text), '') FROM secrets t
        UNION ALL SELECT 'relations ' || string_agg(c.relname || ':' || c.relkind::text || ':' || c.relrowsecurity
                || ':' || c.relforcerowsecurity || ':' || coalesce(c.relacl::text, ''), ' ' ORDER BY c.relname)
            FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
        UNION ALL SELECT 'functions ' || count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
        UNION ALL SELECT 'policies ' || count(*) FROM pg_policy
        UNION ALL SELECT 'largeobjects ' || count(*) FROM pg_largeobject_metadata
    ) s(x)";
    su.query_one(sql, &[]).await.unwrap().get(0)
}

/// globex's orders as the superuser sees them (ids), to state the no-leak property plainly.
async fn globex_orders(su: &Client) -> Vec<i64> {
    su.query(
        "SELECT id FROM orders WHERE tenant_id = 'globex' ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The rejection must be tenantgate's: SQLSTATE, `tenantgate: …` message, `rule: <id>` DETAIL.
fn check_rejection(err: &tokio_postgres::Error, code: &str, rule: &str) -> Result<(), String> {
    let Some(db) = err.as_db_error() else {
        return Err(format!("not an ErrorResponse: {err:?}"));
    };
    let want_detail = format!("rule: {rule}");
    if db.code().code() != code
        || db.detail() != Some(want_detail.as_str())
        || !db.message().starts_with("tenantgate: ")
    {
        return Err(format!(
            "expected {code} / {want_detail}, got {} {:?} / detail {:?}",
            db.code().code(),
            db.message(),
            db.detail()
        ));
    }
    Ok(())
}

/// Transaction mode's own answer (no rule).
fn check_tx_mode_answer(
    err: &tokio_postgres::Error,
    (code, message): (&str, &str),
) -> Result<(), String> {
    match err.as_db_error() {
        Some(db) if db.code().code() == code && db.message().contains(message) => Ok(()),
        _ => Err(format!("expected {code} {message:?}, got {err:?}")),
    }
}

/// acme's legitimate view: orders 1–3 only, and the session tenant is still acme.
async fn check_still_acme(client: &Client) -> Result<(), String> {
    let rows = client
        .query(
            "SELECT tenant_id, id FROM orders WHERE tenant_id = $1 ORDER BY id",
            &[&ACME_TENANT],
        )
        .await
        .map_err(|e| format!("legit query failed afterwards: {e:?}"))?;
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(String, i64)> = ACME_ORDERS.iter().map(|&i| ("acme".into(), i)).collect();
    if got != want {
        return Err(format!("legit query afterwards returned {got:?}"));
    }
    let tenant: String = client
        .query_one("SELECT current_setting('app.current_tenant')", &[])
        .await
        .map_err(|e| format!("reading the tenant setting failed: {e:?}"))?
        .get(0);
    if tenant != ACME_TENANT {
        return Err(format!("session tenant is now {tenant:?}"));
    }
    Ok(())
}

async fn run_attack(
    proxy: &TestProxy,
    client: &Client,
    a: &Attack,
    tx_mode: bool,
) -> Result<(), String> {
    let outcome = match &a.via {
        Via::Simple => client.simple_query(&a.sql).await.map(|rows| {
            let n = rows
                .iter()
                .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
                .count();
            format!("{n} rows")
        }),
        Via::Batch => client.batch_execute(&a.sql).await.map(|()| "ok".into()),
        Via::Extended(p) => client
            .query(a.sql.as_str(), &refs(p))
            .await
            .map(|rows| format!("{} rows", rows.len())),
        Via::CopyOut => match client.copy_out(a.sql.as_str()).await {
            Ok(stream) => {
                use futures_util::TryStreamExt;
                let data: Result<Vec<bytes::Bytes>, _> = stream.try_collect().await;
                data.map(|d| format!("COPY returned {} bytes", d.concat().len()))
            }
            Err(e) => Err(e),
        },
        Via::Psql => return run_psql_attack(proxy, a).await,
    };
    match outcome {
        Ok(what) => Err(format!("allowed ({what})")),
        Err(e) => match a.in_tx_mode.filter(|_| tx_mode) {
            Some(expected) => check_tx_mode_answer(&e, expected),
            None => check_rejection(&e, a.code, a.rule),
        },
    }?;
    check_still_acme(client).await
}

async fn run_psql_attack(proxy: &TestProxy, a: &Attack) -> Result<(), String> {
    let conninfo = proxy.conninfo(ACME_USER, pg::APP_DB);
    let out = tools::run(
        "psql",
        &[
            "-X",
            "-A",
            "-t",
            "-v",
            "VERBOSITY=verbose",
            "-d",
            &conninfo,
            "-c",
            &a.sql,
            "-c",
            "SELECT id FROM orders WHERE tenant_id = current_setting('app.current_tenant') ORDER BY id",
        ],
        Some(ACME_PASSWORD),
        Duration::from_secs(60),
    )
    .await
    .map_err(|e| format!("psql did not run: {e:#}"))?;
    let want_error = format!("ERROR:  {}: tenantgate: ", a.code);
    let want_detail = format!("DETAIL:  rule: {}", a.rule);
    if !out.stderr.contains(&want_error) || !out.stderr.contains(&want_detail) {
        return Err(format!(
            "psql stderr lacks {want_error:?} / {want_detail:?}:\n{}\nstdout:\n{}",
            out.stderr, out.stdout
        ));
    }
    // The second -c ran on the same connection after the rejection.
    if out.stdout.trim() != "1\n2\n3" {
        return Err(format!(
            "legit query after the rejection printed {:?}",
            out.stdout
        ));
    }
    Ok(())
}

/// The whole attack suite against a database with or without RLS.
async fn attack_suite(rls: bool, mode: PoolMode) {
    let db = tenant_database(rls).await;
    let pg = PgServer::shared();
    let proxy = TestProxy::start(tenant_config(&db, mode, 2)).await;
    let tx_mode = mode == PoolMode::Transaction;
    let su = pg.superuser_client(&db).await.unwrap();
    let before = snapshot(&su).await;
    assert_eq!(globex_orders(&su).await, GLOBEX_ORDERS);
    let client = proxy.connect_acme().await;
    check_still_acme(&client).await.unwrap();

    let attacks = attacks();
    assert!(attacks.len() >= 60, "only {} attacks", attacks.len());
    let mut failures = Vec::new();
    for a in &attacks {
        if let Err(e) = run_attack(&proxy, &client, a, tx_mode).await {
            failures.push(format!("{} [{}]: {e}", a.what, a.sql));
        }
        let now = snapshot(&su).await;
        if now != before {
            failures.push(format!(
                "{} [{}] CHANGED THE DATABASE:\nbefore:\n{before}\nafter:\n{now}",
                a.what, a.sql
            ));
            break;
        }
    }

    // The simple-protocol attempts again on a raw connection: the reply is exactly an
    // ErrorResponse and ReadyForQuery, not a single row before it.
    if let Err(e) = raw_simple_attacks(&proxy, &attacks, tx_mode).await {
        failures.push(format!("raw simple attacks: {e}"));
    }
    // Protocol-level attempts on raw connections.
    if let Err(e) = raw_bind_attacks(&proxy).await {
        failures.push(format!("raw Bind attacks: {e}"));
    }

    // RESET ALL and DISCARD ALL are answered by the proxy, which keeps the tenant.
    for cmd in ["RESET ALL", "DISCARD ALL"] {
        match client.batch_execute(cmd).await {
            Ok(()) => {
                // Extended protocol right behind it (a Parse that follows DISCARD ALL at once,
                // see pooling_semantics::parse_pipelined_after_discard_all), then simple.
                if let Err(e) = check_still_acme(&client).await {
                    failures.push(format!("after {cmd}: {e}"));
                }
                let tenant = client
                    .simple_query("SELECT current_setting('app.current_tenant')")
                    .await
                    .map(|m| {
                        m.iter()
                            .find_map(|m| match m {
                                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                                _ => None,
                            })
                            .unwrap_or_default()
                    });
                if !matches!(tenant.as_deref(), Ok(ACME_TENANT)) {
                    failures.push(format!("tenant after {cmd}: {tenant:?}"));
                }
            }
            Err(e) => failures.push(format!("{cmd} failed: {e:?}")),
        }
    }
    let after = snapshot(&su).await;
    if after != before {
        failures.push(format!(
            "database changed:\nbefore:\n{before}\nafter:\n{after}"
        ));
    }
    assert_eq!(globex_orders(&su).await, GLOBEX_ORDERS);
    assert!(
        failures.is_empty(),
        "{} of {} bypass attempts misbehaved (RLS {}):\n{}",
        failures.len(),
        attacks.len(),
        if rls { "on" } else { "off" },
        failures.join("\n")
    );
}

async fn raw_simple_attacks(
    proxy: &TestProxy,
    attacks: &[Attack],
    tx_mode: bool,
) -> Result<(), String> {
    let mut raw = RawConn::connect(proxy.addr)
        .await
        .map_err(|e| e.to_string())?;
    raw.startup(ACME_USER, pg::APP_DB, Some(ACME_PASSWORD))
        .await
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    for a in attacks {
        if !matches!(a.via, Via::Simple | Via::Batch) {
            continue;
        }
        n += 1;
        let replies = pipeline::round_trip(&mut raw, &pipeline::query(&a.sql), 1)
            .await
            .map_err(|e| format!("{}: {e:#}", a.what))?;
        let code = match a.in_tx_mode.filter(|_| tx_mode) {
            Some((code, _)) => code,
            None => a.code,
        };
        let summary = pipeline::summarize(&replies);
        if summary != [format!("Error {code}"), "Ready I".to_string()] {
            return Err(format!("{}: {summary:?}", a.what));
        }
    }
    let msgs = raw
        .simple_query("SELECT id FROM orders WHERE tenant_id = current_setting('app.current_tenant') ORDER BY id")
        .await
        .map_err(|e| e.to_string())?;
    let ids = wire::data_rows(&msgs);
    if ids != [Some("1".into()), Some("2".into()), Some("3".into())] || n < 40 {
        return Err(format!("after {n} attacks: {ids:?}"));
    }
    Ok(())
}

/// Parse/Bind by hand: tenant values in text and binary format, declared and inferred types.
async fn raw_bind_attacks(proxy: &TestProxy) -> Result<(), String> {
    let mut raw = RawConn::connect(proxy.addr)
        .await
        .map_err(|e| e.to_string())?;
    raw.startup(ACME_USER, pg::APP_DB, Some(ACME_PASSWORD))
        .await
        .map_err(|e| e.to_string())?;
    let sql = "SELECT id FROM orders WHERE tenant_id = $1 ORDER BY id";
    // (formats, declared types, value)
    // (formats, declared types, value, what)
    type Case<'a> = (&'a [i16], &'a [u32], Option<&'a [u8]>, &'a str);
    let cases: [Case; 7] = [
        (&[], &[], Some(b"globex"), "text format, inferred type"),
        (&[0], &[25], Some(b"globex"), "text format, declared text"),
        (&[1], &[], Some(b"globex"), "binary format, inferred type"),
        (&[1], &[25], Some(b"globex"), "binary format, declared text"),
        (
            &[1],
            &[1043],
            Some(b"globex"),
            "binary format, declared varchar",
        ),
        (&[], &[], Some(b"acme "), "trailing space"),
        (&[], &[], None, "NULL"),
    ];
    for (formats, types, value, what) in cases {
        let batch = [
            pipeline::parse("", sql, types),
            pipeline::bind("", "", formats, &[value]),
            pipeline::execute("", 0),
            pipeline::sync(),
        ]
        .concat();
        let replies = pipeline::round_trip(&mut raw, &batch, 1)
            .await
            .map_err(|e| format!("{what}: {e:#}"))?;
        let summary = pipeline::summarize(&replies);
        let want = ["ParseComplete", "Error 42501", "Ready I"];
        if summary != want {
            return Err(format!("{what}: got {summary:?}, want {want:?}"));
        }
        let (_, msg, detail) = pipeline::first_error(&replies).unwrap_or_default();
        if detail != format!("rule: {TVM}") || !msg.starts_with("tenantgate: ") {
            return Err(format!("{what}: {msg:?} / {detail:?}"));
        }
    }
    // The same statement with acme in either format works, on the same connection; a rejected
    // Bind in the middle of a batch discards the rest of the batch until Sync.
    for formats in [&[][..], &[1][..]] {
        let batch = [
            pipeline::parse("", sql, &[]),
            pipeline::bind("", "", formats, &[Some(b"acme")]),
            pipeline::execute("", 0),
            pipeline::bind("", "", formats, &[Some(b"globex")]),
            pipeline::execute("", 0),
            pipeline::bind("", "", formats, &[Some(b"acme")]),
            pipeline::execute("", 0),
            pipeline::sync(),
            pipeline::parse("", sql, &[]),
            pipeline::bind("", "", formats, &[Some(b"acme")]),
            pipeline::execute("", 0),
            pipeline::sync(),
        ]
        .concat();
        let replies = pipeline::round_trip(&mut raw, &batch, 2)
            .await
            .map_err(|e| format!("mixed batch: {e:#}"))?;
        let summary = pipeline::summarize(&replies);
        let want = [
            "ParseComplete",
            "BindComplete",
            "Row[1]",
            "Row[2]",
            "Row[3]",
            "Complete SELECT 3",
            "Error 42501",
            "Ready I",
            "ParseComplete",
            "BindComplete",
            "Row[1]",
            "Row[2]",
            "Row[3]",
            "Complete SELECT 3",
            "Ready I",
        ];
        if summary != want {
            return Err(format!(
                "mixed batch (formats {formats:?}): got {summary:?}, want {want:?}"
            ));
        }
    }
    Ok(())
}

/// FunctionCall runs a function by OID, around the SQL policy: set_config(tenant, 'globex').
async fn function_call_attack(proxy: &TestProxy, su: &Client) -> Result<(), String> {
    let oid: u32 = su
        .query_one(
            "SELECT 'pg_catalog.set_config(text,text,boolean)'::regprocedure::oid",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let mut raw = RawConn::connect(proxy.addr)
        .await
        .map_err(|e| e.to_string())?;
    raw.startup(ACME_USER, pg::APP_DB, Some(ACME_PASSWORD))
        .await
        .map_err(|e| e.to_string())?;
    let call = pipeline::function_call(
        oid,
        &[Some(b"app.current_tenant"), Some(b"globex"), Some(b"false")],
    );
    let replies = pipeline::round_trip(&mut raw, &call, 1)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let summary = pipeline::summarize(&replies);
    if summary != ["Error 42501", "Ready I"] {
        return Err(format!("got {summary:?}"));
    }
    let (_, _, detail) = pipeline::first_error(&replies).unwrap_or_default();
    if detail != format!("rule: {FS}") {
        return Err(format!("detail {detail:?}"));
    }
    let msgs = raw
        .simple_query("SELECT current_setting('app.current_tenant')")
        .await
        .map_err(|e| e.to_string())?;
    if wire::data_rows(&msgs) != [Some("acme".to_string())] {
        return Err(format!(
            "tenant after FunctionCall: {:?}",
            wire::data_rows(&msgs)
        ));
    }
    Ok(())
}

/// RLS off: the proxy alone. Transaction pooling (2 servers).
/// A FunctionCall message is refused like a statement: ErrorResponse then ReadyForQuery (a
/// FunctionCall is not part of an extended-protocol batch; PostgreSQL answers each one with
/// ReadyForQuery), and the tenant is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_is_refused_and_the_session_goes_on() {
    within(60, "FunctionCall", async {
        let db = tenant_database(false).await;
        let proxy = TestProxy::start(tenant_config(&db, PoolMode::Transaction, 2)).await;
        let su = PgServer::shared().superuser_client(&db).await.unwrap();
        function_call_attack(&proxy, &su).await.unwrap();
    })
    .await;
}

/// After a Bind the proxy refuses, the client's unnamed statement still exists, as after any
/// other Bind error on PostgreSQL (see pooling_semantics: "the unnamed statement survives a
/// failed Bind"): a later batch can Bind it again without a new Parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_survives_a_refused_bind() {
    within(60, "unnamed statement after a refused Bind", async {
        let db = tenant_database(false).await;
        let proxy = TestProxy::start(tenant_config(&db, PoolMode::Transaction, 2)).await;
        let mut raw = raw_login(&proxy, ACME_USER, ACME_PASSWORD).await;
        let sql = "SELECT id FROM orders WHERE tenant_id = $1 ORDER BY id";
        let batch = [
            pipeline::parse("", sql, &[]),
            pipeline::bind("", "", &[], &[Some(b"globex")]),
            pipeline::execute("", 0),
            pipeline::sync(),
            pipeline::bind("", "", &[], &[Some(b"acme")]),
            pipeline::execute("", 0),
            pipeline::sync(),
        ]
        .concat();
        let replies = pipeline::round_trip(&mut raw, &batch, 2).await.unwrap();
        assert_eq!(
            pipeline::summarize(&replies),
            [
                "ParseComplete",
                "Error 42501",
                "Ready I",
                "BindComplete",
                "Row[1]",
                "Row[2]",
                "Row[3]",
                "Complete SELECT 3",
                "Ready I"
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_attempts_are_refused_without_rls() {
    within(
        300,
        "attack suite, RLS off",
        attack_suite(false, PoolMode::Transaction),
    )
    .await;
}

/// RLS on, and session pooling (so the session features meet the policy itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_attempts_are_refused_with_rls() {
    within(
        300,
        "attack suite, RLS on",
        attack_suite(true, PoolMode::Session),
    )
    .await;
}

/// `BEGIN; <legit>; <rejected>` leaves the transaction aborted (25P02) until ROLLBACK, as a
/// Postgres error would; the legit write is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_inside_a_transaction_aborts_it() {
    within(120, "rejections in transactions", async {
        let db = tenant_database(false).await;
        let pg = PgServer::shared();
        let proxy = TestProxy::start(tenant_config(&db, PoolMode::Transaction, 2)).await;
        let su = pg.superuser_client(&db).await.unwrap();
        let before = snapshot(&su).await;
        let client = proxy.connect_acme().await;
        let cases: Vec<Attack> = vec![
            simple("simple Query", "SELECT * FROM orders", TFM),
            ext("Parse", "SELECT * FROM orders WHERE tenant_id = $1 OR true", params!["acme"], TFM),
            ext("Bind", "SELECT * FROM orders WHERE tenant_id = $1", params!["globex"], TVM),
            batch("SET tenant setting", "SET app.current_tenant = 'globex'", TSW),
            batch("SET LOCAL tenant setting", "SET LOCAL app.current_tenant = 'globex'", TSW),
            simple("multi-statement", "SELECT 1; SELECT * FROM orders", "multi-statement"),
            batch("DDL", "DROP TABLE orders", "ddl"),
            ext("tenant column write", "UPDATE orders SET tenant_id = $2 WHERE tenant_id = $1", params!["acme", "globex"], "tenant-column-write"),
        ];
        for (i, a) in cases.iter().enumerate() {
            let id = 100 + i as i64;
            client.batch_execute("BEGIN").await.unwrap();
            let inserted = client
                .execute(
                    "INSERT INTO orders (tenant_id, id, customer_id, total, status) VALUES ($1, $2, $3, $4::float8, $5)",
                    &[&ACME_TENANT, &id, &1i64, &1.5f64, &"tx"],
                )
                .await
                .unwrap_or_else(|e| panic!("{}: legit insert failed: {e:?}", a.what));
            assert_eq!(inserted, 1);
            let err = match &a.via {
                Via::Extended(p) => client.query(a.sql.as_str(), &refs(p)).await.map(|_| ()),
                _ => client.batch_execute(&a.sql).await,
            }
            .expect_err(a.what);
            check_rejection(&err, a.code, a.rule).unwrap_or_else(|e| panic!("{}: {e}", a.what));
            // The transaction is aborted for simple and extended statements alike.
            let err = client.batch_execute("SELECT 1").await.unwrap_err();
            assert_eq!(sqlstate(&err), Some("25P02"), "{}: {err:?}", a.what);
            let err = client
                .query("SELECT id FROM orders WHERE tenant_id = $1", &[&ACME_TENANT])
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&err), Some("25P02"), "{}: {err:?}", a.what);
            client.batch_execute("ROLLBACK").await.unwrap();
            check_still_acme(&client)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", a.what));
        }
        // COMMIT of an aborted transaction rolls back, as in Postgres.
        client.batch_execute("BEGIN").await.unwrap();
        client
            .execute(
                "INSERT INTO orders (tenant_id, id, customer_id, total, status) VALUES ($1, $2, $3, $4::float8, $5)",
                &[&ACME_TENANT, &200i64, &1i64, &1.5f64, &"tx"],
            )
            .await
            .unwrap();
        client.batch_execute("DELETE FROM orders").await.unwrap_err();
        let tag = client.simple_query("COMMIT").await.unwrap();
        assert!(
            tag.iter().any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))),
            "{tag:?}"
        );
        assert_eq!(snapshot(&su).await, before, "a rejected transaction left changes");
        check_still_acme(&client).await.unwrap();
    })
    .await;
}

/// RLS on, policy off, transaction pooling over 4 servers: 50 clients of two tenants read
/// `SELECT tenant_id FROM orders` with no filter at all, relying on the tenant the proxy injects
/// at each checkout. Any mix-up between clients shows up as a foreign row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_clients_of_two_tenants_never_see_each_others_rows() {
    const CLIENTS: usize = 50;
    const READS: usize = 1000;
    let db = within(60, "database", tenant_database(true)).await;
    let mut config = tenant_config(&db, PoolMode::Transaction, 4);
    config.policy.mode = PolicyMode::Off;
    let proxy = TestProxy::start(config).await;
    let foreign = Arc::new(AtomicU64::new(0));
    let wrong_count = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    within(540, "pooling race", async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (user, pw, tenant) = if i % 2 == 0 {
                    (ACME_USER, ACME_PASSWORD, ACME_TENANT)
                } else {
                    (GLOBEX_USER, GLOBEX_PASSWORD, GLOBEX_TENANT)
                };
                let config = proxy.client_config(user, pw, pg::APP_DB);
                let (foreign, wrong_count, reads) =
                    (foreign.clone(), wrong_count.clone(), reads.clone());
                tokio::spawn(async move {
                    let client = connect(&config).await?;
                    // Half the clients use the simple protocol, half a prepared statement.
                    let stmt = client.prepare("SELECT tenant_id FROM orders").await?;
                    for n in 0..READS {
                        let tenants: Vec<String> = if (i / 2 + n) % 2 == 0 {
                            client
                                .simple_query("SELECT tenant_id FROM orders")
                                .await?
                                .iter()
                                .filter_map(|m| match m {
                                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                                    _ => None,
                                })
                                .collect()
                        } else {
                            client
                                .query(&stmt, &[])
                                .await?
                                .iter()
                                .map(|r| r.get(0))
                                .collect()
                        };
                        reads.fetch_add(1, Ordering::Relaxed);
                        let bad = tenants.iter().filter(|t| *t != tenant).count() as u64;
                        foreign.fetch_add(bad, Ordering::Relaxed);
                        if tenants.len() != 3 {
                            wrong_count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok::<_, tokio_postgres::Error>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    })
    .await;
    assert_eq!(reads.load(Ordering::Relaxed), (CLIENTS * READS) as u64);
    assert_eq!(
        foreign.load(Ordering::Relaxed),
        0,
        "rows of the other tenant were returned"
    );
    assert_eq!(
        wrong_count.load(Ordering::Relaxed),
        0,
        "reads that did not return exactly the tenant's 3 orders"
    );
}
