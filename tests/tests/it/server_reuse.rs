//! Transaction mode: what one client does on a server must not reach the next client that
//! gets it (one server per pool here, so the next client surely does), whatever form the
//! change takes: prepared and run later, quoted, left behind by a client that vanished.

use std::time::Duration;
use tenantgate_config::{Config, PolicyMode, PoolMode};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::pipeline;
use tenantgate_tests::proxy::*;
use tenantgate_tests::wire::RawConn;
use tenantgate_tests::{unique_name, within};
use tokio_postgres::{Client, SimpleQueryMessage};

const GLOBEX_USER: &str = "globex_app";
const GLOBEX_PASSWORD: &str = "globex_pw";

const SCHEMA: &str = "
SET ROLE tg_server;
CREATE TABLE orders (tenant_id text NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id));
INSERT INTO orders VALUES ('acme', 1), ('acme', 2), ('acme', 3),
    ('globex', 4), ('globex', 5), ('globex', 6);
CREATE SEQUENCE reuse_seq;
CREATE TABLE reuse_log (id int);
CREATE TABLE serials (id serial, note text);
GRANT ALL ON ALL TABLES IN SCHEMA public TO app_rw;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app_rw;
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE orders FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON orders
    USING (tenant_id = current_setting('app.current_tenant', true))
    WITH CHECK (tenant_id = current_setting('app.current_tenant', true));
RESET ROLE;
";

/// A fresh database (RLS on `orders`) and a transaction-mode proxy with ONE server on it,
/// logging in as the NOBYPASSRLS role app_rw. Users: acme_app, globex_app, svc_client (bypass).
async fn one_server(mode: PolicyMode) -> (String, TestProxy) {
    one_server_in(mode, PoolMode::Transaction).await
}

async fn one_server_in(mode: PolicyMode, pool_mode: PoolMode) -> (String, TestProxy) {
    let pg = PgServer::shared();
    let db = pg.new_database("reuse", &[SCHEMA]).await;
    let text = format!(
        "{}\n[[users]]\nname = \"{GLOBEX_USER}\"\npassword = \"{GLOBEX_PASSWORD}\"\ntenant = \"globex\"\n",
        base_config_toml(pg)
    );
    let mut config = Config::from_toml(&text).unwrap();
    let d = &mut config.databases[0];
    d.dbname = Some(db.clone());
    d.user = pg::APP_RW_USER.to_string();
    d.password = Some(pg::APP_RW_PASSWORD.to_string());
    d.pool_mode = pool_mode;
    d.pool_size = 1;
    d.query_wait_timeout = 20.0;
    config.policy.mode = mode;
    (db, TestProxy::start(config).await)
}

async fn globex(proxy: &TestProxy) -> Client {
    proxy
        .connect(GLOBEX_USER, GLOBEX_PASSWORD, pg::APP_DB)
        .await
        .unwrap()
}

fn first_values(msgs: Vec<SimpleQueryMessage>) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}

async fn simple(c: &Client, sql: &str) -> Vec<String> {
    first_values(c.simple_query(sql).await.unwrap())
}

/// `currval` must have failed as on a session that never drew the value (55000), not answered.
fn assert_undefined(read: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>, what: &str) {
    match read {
        Err(e) => assert_eq!(sqlstate(&e), Some("55000"), "{what}: {e:?}"),
        Ok(rows) => panic!("{what}: read {:?}", first_values(rows)),
    }
}

/// The same for raw replies: their first error is 55000.
fn assert_first_error_undefined(replies: &[tenantgate_tests::wire::BackendMessage]) {
    let error = pipeline::first_error(replies);
    assert_eq!(
        error.as_ref().map(|e| e.0.as_str()),
        Some("55000"),
        "{:?}",
        pipeline::summarize(replies)
    );
}

/// With RLS on and the policy off: the tenants of the rows `orders` shows the client.
async fn tenants_seen(c: &Client) -> Vec<String> {
    simple(c, "SELECT tenant_id FROM orders ORDER BY id").await
}

/// An acme client sends `sql` and Terminate in one write: it leaves before its server is
/// released. Returns once the proxy has closed the connection.
async fn vanish_after(proxy: &TestProxy, sql: &str) {
    let mut raw = raw_acme(proxy).await;
    let batch = [pipeline::query(sql), b"X\0\0\0\x04".to_vec()].concat();
    raw.send(&batch).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = raw.read_message().await {}
    })
    .await;
}

/// A raw acme_app connection through the proxy.
async fn raw_acme(proxy: &TestProxy) -> RawConn {
    let mut c = RawConn::connect(proxy.addr).await.unwrap();
    c.startup(ACME_USER, pg::APP_DB, Some(ACME_PASSWORD))
        .await
        .unwrap();
    c
}

/// A SET prepared in one transaction and run in a later one changes the server then: it is
/// read back at that release (the text is scanned at Parse, its effects noted at each Bind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_set_run_in_a_later_transaction_does_not_reach_the_next_client() {
    let (_db, proxy) = one_server(PolicyMode::Enforce).await;
    let a = proxy.connect_acme().await;
    let g = globex(&proxy).await;
    within(60, "prepared SET", async {
        // Transaction 1: Parse/Describe/Sync. Transaction 2: Bind/Execute/Sync.
        let st = a.prepare("SET statement_timeout = '4242ms'").await.unwrap();
        a.execute(&st, &[]).await.unwrap();
        let seen = simple(&g, "SHOW statement_timeout").await;
        assert_eq!(seen, vec!["0"], "globex inherited acme's statement_timeout");
    })
    .await;
}

/// The tenant setting changed by a statement the proxy lets through (policy off / audit; RLS
/// on), prepared and run in a later transaction, or called as a quoted identifier: the next
/// acme client must not be served by a server set to globex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_config_of_the_tenant_is_read_back_however_written() {
    const PREPARED: &str = "SELECT set_config('app.current_tenant', 'globex', false)";
    const QUOTED: &str = "SELECT \"set_config\"('app.current_tenant', 'globex', false)";
    for mode in [PolicyMode::Audit, PolicyMode::Off] {
        for sql in [PREPARED, QUOTED] {
            let (_db, proxy) = one_server(mode).await;
            let a = proxy.connect_acme().await;
            let a2 = proxy.connect_acme().await;
            within(60, "set_config of the tenant", async {
                assert_eq!(tenants_seen(&a2).await, vec!["acme"; 3]);
                if sql == PREPARED {
                    let st = a.prepare(sql).await.unwrap();
                    a.query(&st, &[]).await.unwrap();
                } else {
                    a.simple_query(sql).await.unwrap();
                }
                assert_eq!(
                    tenants_seen(&a2).await,
                    vec!["acme"; 3],
                    "{mode:?}, {sql}: the next acme client ran as globex"
                );
            })
            .await;
        }
    }
}

/// A client that sends a SET and Terminate in one write leaves before the release: its server
/// is settled, then read back as at a release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_a_client_that_vanished_does_not_reach_the_next_client() {
    let (_db, proxy) = one_server(PolicyMode::Enforce).await;
    let g = globex(&proxy).await;
    within(60, "vanishing client", async {
        vanish_after(&proxy, "SET statement_timeout = '4343ms'").await;
        let seen = simple(&g, "SHOW statement_timeout").await;
        assert_eq!(seen, vec!["0"], "globex inherited a departed client's SET");
    })
    .await;
}

/// The same with the tenant setting (policy off, RLS on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_set_by_a_client_that_vanished_is_read_back() {
    let (_db, proxy) = one_server(PolicyMode::Off).await;
    let a2 = proxy.connect_acme().await;
    within(60, "vanishing client", async {
        assert_eq!(tenants_seen(&a2).await, vec!["acme"; 3]);
        vanish_after(
            &proxy,
            "SELECT set_config('app.current_tenant', 'globex', false)",
        )
        .await;
        assert_eq!(
            tenants_seen(&a2).await,
            vec!["acme"; 3],
            "the next acme client ran as globex"
        );
    })
    .await;
}

/// A bypass_policy user's `SET ROLE` is read back although pg_settings hides `role`: the next
/// tenant client runs as the server's login role, under RLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_role_does_not_reach_the_next_client() {
    let (db, proxy) = one_server(PolicyMode::Enforce).await;
    let role = unique_name("reuse_role");
    let pg = PgServer::shared();
    let r = role.clone();
    tokio::task::spawn_blocking(move || {
        pg.run_sql(
            &db,
            &format!(
                "CREATE ROLE {r} BYPASSRLS; GRANT {r} TO {};",
                pg::APP_RW_USER
            ),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let svc = proxy.connect_service().await;
    let a = proxy.connect_acme().await;
    within(60, "SET ROLE", async {
        svc.simple_query(&format!("SET ROLE {role}")).await.unwrap();
        let seen = simple(&a, "SELECT current_user").await;
        assert_eq!(
            seen,
            vec![pg::APP_RW_USER],
            "acme runs as the bypass user's role"
        );
    })
    .await;
}

/// `lastval()` is refused in transaction mode (it answers for the server session: another
/// tenant's last nextval), also written `lastval/**/()` or `"lastval"()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lastval_is_refused_however_it_is_written() {
    let (_db, proxy) = one_server(PolicyMode::Enforce).await;
    let a = proxy.connect_acme().await;
    let g = globex(&proxy).await;
    within(60, "lastval", async {
        for _ in 0..41 {
            g.simple_query("SELECT nextval('reuse_seq')").await.unwrap();
        }
        for sql in ["SELECT lastval/**/()", "SELECT \"lastval\"()"] {
            match a.simple_query(sql).await {
                Err(e) => assert_eq!(sqlstate(&e), Some("0A000"), "{sql}: {e:?}"),
                Ok(rows) => panic!("{sql}: acme read globex's lastval {:?}", first_values(rows)),
            }
        }
    })
    .await;
}

/// `currval('seq')` answers for the server session too: after another client's `nextval` on
/// the same server it would return that client's (tenant's) value. After a statement that may
/// draw one (an INSERT's serial default, `nextval`/`setval` themselves, prepared and run later
/// too), the next client's first segment that names `currval` (in its text, or as a prepared
/// statement it binds) has the server discard its sequence values first. So a `currval`
/// outside the transaction that drew the value gets Postgres' own 55000, while inside it
/// works as on Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_value_drawn_by_one_client_is_not_read_by_the_next() {
    let (_db, proxy) = one_server(PolicyMode::Off).await;
    let a = proxy.connect_acme().await;
    let g = globex(&proxy).await;
    within(60, "currval", async {
        let prepared = g.prepare("SELECT nextval('reuse_seq')").await.unwrap();
        for draw in [
            "SELECT nextval('reuse_seq')",
            "SELECT setval('reuse_seq', 41)",
            "INSERT INTO serials (note) VALUES ('x')",
            "prepared",
        ] {
            if draw == "prepared" {
                drop(g.query(&prepared, &[]).await.unwrap());
            } else {
                g.simple_query(draw).await.unwrap();
            }
            for sql in [
                "SELECT currval('reuse_seq')",
                "SELECT currval('serials_id_seq')",
            ] {
                assert_undefined(
                    a.simple_query(sql).await,
                    &format!("after globex's {draw:?}, acme's {sql}"),
                );
            }
        }
        // In a later segment of a transaction, and as a statement prepared earlier.
        let read_later = a.prepare("SELECT currval('reuse_seq')").await.unwrap();
        g.simple_query("SELECT nextval('reuse_seq')").await.unwrap();
        a.simple_query("BEGIN").await.unwrap();
        let e = a
            .simple_query("SELECT currval('reuse_seq')")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), Some("55000"), "in a transaction: {e:?}");
        a.simple_query("ROLLBACK").await.unwrap();
        g.simple_query("SELECT nextval('reuse_seq')").await.unwrap();
        let e = a.query(&read_later, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("55000"), "prepared: {e:?}");
        // In the transaction that drew it, currval works as on Postgres.
        let same = simple(
            &a,
            "INSERT INTO serials (note) VALUES ('y'); SELECT currval('serials_id_seq')::text",
        )
        .await;
        assert_eq!(same.len(), 1, "{same:?}");
    })
    .await;
}

/// A temporary table a bypass_policy client creates would shadow the tenant table of the same
/// name for the next client (pg_temp comes first, and has no RLS): it is dropped at release,
/// also when a prepared statement created it in a later transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_tables_do_not_reach_the_next_client() {
    let (_db, proxy) = one_server(PolicyMode::Enforce).await;
    let svc = proxy.connect_service().await;
    let a = proxy.connect_acme().await;
    within(60, "temp table", async {
        // One transaction (a later one may be on another server anyway).
        svc.batch_execute(
            "BEGIN; CREATE TEMP TABLE orders (tenant_id text, id bigint); \
             INSERT INTO orders VALUES ('acme', 666); COMMIT",
        )
        .await
        .unwrap();
        // A prepared statement that creates one, run in a later transaction.
        let create = svc
            .prepare("CREATE TEMP TABLE IF NOT EXISTS orders (tenant_id text, id bigint)")
            .await
            .unwrap();
        // (acme would read that empty table below, were it left.)
        svc.execute(&create, &[]).await.unwrap();
        let rows = a
            .query(
                "SELECT id FROM orders WHERE tenant_id = $1 ORDER BY id",
                &[&ACME_TENANT],
            )
            .await
            .unwrap();
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(ids, vec![1, 2, 3], "acme read another client's temp table");
    })
    .await;
}

/// A client that sends Parse/Bind/Execute of an INSERT and Flush (no Sync), then vanishes: as
/// on a direct connection, the implicit transaction is rolled back (a plain Sync from the
/// proxy would commit it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsynced_batch_of_a_vanished_client_is_rolled_back() {
    let (db, proxy) = one_server(PolicyMode::Enforce).await;
    within(60, "unsynced insert", async {
        let mut raw = RawConn::connect(proxy.addr).await.unwrap();
        raw.startup(SERVICE_CLIENT, pg::APP_DB, Some(SERVICE_CLIENT_PASSWORD))
            .await
            .unwrap();
        let batch = [
            pipeline::parse("", "INSERT INTO reuse_log VALUES (99)", &[]),
            pipeline::bind("", "", &[], &[]),
            pipeline::execute("", 0),
            pipeline::flush(),
        ]
        .concat();
        raw.send(&batch).await.unwrap();
        // ParseComplete, BindComplete, CommandComplete: the INSERT ran, uncommitted.
        let mut tags = Vec::new();
        for _ in 0..3 {
            tags.push(raw.read_message().await.unwrap().unwrap().tag);
        }
        assert_eq!(tags, b"12C", "the INSERT ran");
        drop(raw);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let su = PgServer::shared().superuser_client(&db).await.unwrap();
        let n: i64 = su
            .query_one("SELECT count(*) FROM reuse_log", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "the abandoned, never-synced INSERT was committed");
    })
    .await;
}

/// `setseed` (or `SET seed`) makes a backend's `random()` sequence known in advance, and
/// nothing short of a new backend makes it unknown again (`DISCARD ALL` does not reseed). A
/// client that reseeds must not hand the next client — another tenant, whose app may draw
/// tokens or samples from `random()` — a predictable sequence: its server is closed instead.
/// (The policy refuses `setseed` unless allowlisted; with it off, pooling must still hold.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseeded_random_does_not_reach_the_next_client() {
    let pg = PgServer::shared();
    let direct = connect(&pg.tcp_config(pg::SERVICE_USER, pg::SERVICE_PASSWORD, pg::APP_DB))
        .await
        .unwrap();
    let after_seed = simple(&direct, "SELECT setseed(0.25); SELECT random()::text").await;
    let known = after_seed.last().cloned().unwrap();
    within(60, "reseeded random", async {
        for pool_mode in [PoolMode::Transaction, PoolMode::Session] {
            let (_db, proxy) = one_server_in(PolicyMode::Off, pool_mode).await;
            for reseed in [
                "SELECT setseed(0.25)",
                "SELECT \"setseed\"(0.25)",
                "SET seed = 0.25",
                "SELECT set_config('seed', '0.25', false)",
                "prepared",
            ] {
                let acme = proxy.connect_acme().await;
                if reseed == "prepared" {
                    // Prepared in one transaction, run (again) in later ones.
                    let again = acme.prepare("SELECT setseed(0.25)").await.unwrap();
                    drop(acme.query(&again, &[]).await.unwrap());
                } else {
                    acme.simple_query(reseed).await.unwrap();
                }
                drop(acme);
                let other = globex(&proxy).await;
                let drawn = simple(&other, "SELECT random()::text").await;
                assert_ne!(
                    drawn.first(),
                    Some(&known),
                    "{pool_mode:?}: after {reseed:?} the next client drew the predicted value"
                );
            }
        }
    })
    .await;
}

/// The reset before `currval` runs where the client's transaction may be aborted (an earlier
/// statement failed): Postgres refuses it (25P02) as it refuses the client's `currval`. The
/// client must get that 25P02, not lose its session, and its ROLLBACK must work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn currval_in_an_aborted_transaction_gets_25p02_not_a_fatal_error() {
    let (_db, proxy) = one_server(PolicyMode::Off).await;
    let a = proxy.connect_acme().await;
    let g = globex(&proxy).await;
    within(60, "aborted currval", async {
        g.simple_query("SELECT nextval('reuse_seq')").await.unwrap();
        a.simple_query("BEGIN").await.unwrap();
        let e = a.simple_query("SELECT 1 / 0").await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("22012"), "{e:?}");
        let e = a
            .simple_query("SELECT currval('reuse_seq')")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), Some("25P02"), "{e:?}");
        a.simple_query("ROLLBACK").await.unwrap();
        let e = a
            .simple_query("SELECT currval('reuse_seq')")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), Some("55000"), "after the rollback: {e:?}");
        // Pipelined: the reset refused in the aborted transaction must not stand for the
        // `currval` behind the ROLLBACK TO; nor may one in the same query as that rollback.
        g.simple_query("SELECT nextval('reuse_seq')").await.unwrap();
        let mut raw = raw_acme(&proxy).await;
        for sql in ["BEGIN", "SAVEPOINT s", "SELECT 1 / 0"] {
            raw.simple_query(sql).await.unwrap();
        }
        let batch = [
            pipeline::query("SELECT currval('reuse_seq')"),
            pipeline::query("ROLLBACK TO SAVEPOINT s"),
            pipeline::query("SELECT currval('reuse_seq')"),
        ]
        .concat();
        let replies = pipeline::round_trip(&mut raw, &batch, 3).await.unwrap();
        let seen = pipeline::summarize(&replies);
        assert!(
            seen.iter().any(|m| m.starts_with("Error 25P02"))
                && seen.iter().any(|m| m.starts_with("Error 55000"))
                && !seen.iter().any(|m| m.starts_with("Row")),
            "{seen:?}"
        );
        raw.simple_query("ROLLBACK").await.unwrap();
        g.simple_query("SELECT nextval('reuse_seq')").await.unwrap();
        for sql in ["BEGIN", "SAVEPOINT s", "SELECT 1 / 0"] {
            raw.simple_query(sql).await.unwrap();
        }
        let replies = raw
            .simple_query("ROLLBACK TO SAVEPOINT s; SELECT currval('reuse_seq')")
            .await;
        if let Ok(replies) = replies {
            let seen = pipeline::summarize(&replies);
            assert!(!seen.iter().any(|m| m.starts_with("Row")), "{seen:?}");
        }
    })
    .await;
}

/// `INSERT` and `currval` in separate requests of one transaction (or of one extended-protocol
/// batch) on a server another client drew on: `currval` reads the client's own value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn currval_after_the_transactions_own_insert_in_a_later_request_works() {
    let (_db, proxy) = one_server(PolicyMode::Off).await;
    let a = proxy.connect_acme().await;
    let g = globex(&proxy).await;
    within(60, "own currval", async {
        g.simple_query("SELECT nextval('serials_id_seq')")
            .await
            .unwrap();
        a.simple_query("BEGIN").await.unwrap();
        let id = simple(
            &a,
            "INSERT INTO serials (note) VALUES ('z') RETURNING id::text",
        )
        .await;
        let read = simple(&a, "SELECT currval('serials_id_seq')::text").await;
        a.simple_query("COMMIT").await.unwrap();
        assert_eq!(read, id);
        let mut raw = raw_acme(&proxy).await;
        // One batch (one Sync), and an explicit transaction over several, pipelined.
        let batch = [
            pipeline::parse("", "INSERT INTO serials (note) VALUES ('w')", &[]),
            pipeline::bind("", "", &[], &[]),
            pipeline::execute("", 0),
            pipeline::parse("", "SELECT currval('serials_id_seq')::text", &[]),
            pipeline::bind("", "", &[], &[]),
            pipeline::execute("", 0),
            pipeline::sync(),
            pipeline::query("BEGIN"),
            pipeline::simple_extended("INSERT INTO serials (note) VALUES ('v')", &[]),
            pipeline::simple_extended("SELECT currval('serials_id_seq')::text", &[]),
            pipeline::query("COMMIT"),
        ]
        .concat();
        g.simple_query("SELECT nextval('serials_id_seq')")
            .await
            .unwrap();
        let replies = pipeline::round_trip(&mut raw, &batch, 5).await.unwrap();
        let seen = pipeline::summarize(&replies);
        assert!(!seen.iter().any(|m| m.starts_with("Error")), "{seen:?}");
        assert_eq!(
            seen.iter().filter(|m| m.starts_with("Row")).count(),
            2,
            "{seen:?}"
        );
    })
    .await;
}

/// A client that leaves with its `currval` (and the reset before it) unanswered, in an
/// aborted transaction: the reset fails there, so the server still holds the value another
/// client drew, and the next client's `currval` must not read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_that_failed_while_settling_leaves_the_server_marked() {
    let (_db, proxy) = one_server(PolicyMode::Off).await;
    let g = globex(&proxy).await;
    within(60, "settled reset", async {
        g.simple_query("SELECT nextval('reuse_seq')").await.unwrap();
        let mut raw = raw_acme(&proxy).await;
        raw.simple_query("BEGIN").await.unwrap();
        raw.simple_query("SELECT 1 / 0").await.unwrap();
        let batch = [
            pipeline::query("SELECT currval('reuse_seq')"),
            b"X\0\0\0\x04".to_vec(),
        ]
        .concat();
        raw.send(&batch).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(_)) = raw.read_message().await {}
        })
        .await;
        let a = proxy.connect_acme().await;
        assert_undefined(
            a.simple_query("SELECT currval('reuse_seq')").await,
            "acme read globex's value",
        );
    })
    .await;
}

/// A simple Query behind extended-protocol messages with no Sync ends their implicit
/// transaction: a request after it starts a new segment, and `currval` there must not read
/// the value another client drew on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn currval_after_a_query_without_sync_does_not_read_another_clients_value() {
    let (_db, proxy) = one_server(PolicyMode::Off).await;
    let g = globex(&proxy).await;
    within(60, "query without sync", async {
        g.simple_query("SELECT nextval('reuse_seq')").await.unwrap();
        let mut raw = raw_acme(&proxy).await;
        let batch = [
            pipeline::parse("", "SELECT 1", &[]),
            pipeline::bind("", "", &[], &[]),
            pipeline::execute("", 0),
            pipeline::query("SELECT 2"),
        ]
        .concat();
        pipeline::round_trip(&mut raw, &batch, 1).await.unwrap();
        let replies = raw
            .simple_query("SELECT currval('reuse_seq')")
            .await
            .unwrap();
        assert_first_error_undefined(&replies);
    })
    .await;
}

/// `currval` and `nextval` called with the FunctionCall message (which the policy refuses,
/// but not when it is off): no text names them, yet they read and draw sequence values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn currval_by_function_call_does_not_read_another_clients_value() {
    const NEXTVAL: u32 = 1574;
    const CURRVAL: u32 = 1575;
    let (_db, proxy) = one_server(PolicyMode::Off).await;
    let g = globex(&proxy).await;
    within(60, "function call", async {
        let seq = simple(&g, "SELECT 'reuse_seq'::regclass::oid::text").await;
        let seq = seq[0].as_bytes();
        // Drawn by SQL, read by FunctionCall.
        g.simple_query("SELECT nextval('reuse_seq')").await.unwrap();
        let mut raw = raw_acme(&proxy).await;
        // With a complete request behind it in the same write.
        let call = [
            pipeline::function_call(CURRVAL, &[Some(seq)]),
            pipeline::query("SELECT 1"),
        ]
        .concat();
        let replies = pipeline::round_trip(&mut raw, &call, 2).await.unwrap();
        assert_first_error_undefined(&replies);
        // Drawn by FunctionCall, read by SQL.
        let mut other = raw_acme(&proxy).await;
        let call = pipeline::function_call(NEXTVAL, &[Some(seq)]);
        pipeline::round_trip(&mut other, &call, 1).await.unwrap();
        let a = proxy.connect_acme().await;
        assert_undefined(
            a.simple_query("SELECT currval('reuse_seq')").await,
            "read a value drawn by FunctionCall",
        );
    })
    .await;
}

/// A word that only looks like a draw (`inserted_at`, in an earlier segment of the
/// transaction) must not make the proxy take the transaction's `currval` as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draw_word_in_an_identifier_does_not_skip_the_reset() {
    let (_db, proxy) = one_server(PolicyMode::Off).await;
    let a = proxy.connect_acme().await;
    let g = globex(&proxy).await;
    within(60, "draw word", async {
        g.simple_query("SELECT nextval('reuse_seq')").await.unwrap();
        a.simple_query("BEGIN").await.unwrap();
        a.simple_query("SELECT now() AS inserted_at, 1 AS default_rank")
            .await
            .unwrap();
        let read = a.simple_query("SELECT currval('reuse_seq')").await;
        a.simple_query("ROLLBACK").await.unwrap();
        assert_undefined(read, "acme read globex's value");
    })
    .await;
}

/// A COPY FROM STDIN on a server where another client drew a sequence value: its data
/// messages are part of the COPY's request, so no reset may be sent between them (it would
/// fail the COPY), whatever arrives in which read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_on_a_marked_server_is_not_interrupted_by_a_reset() {
    let (_db, proxy) = one_server(PolicyMode::Off).await;
    let g = globex(&proxy).await;
    within(60, "copy on a marked server", async {
        g.simple_query("SELECT nextval('reuse_seq')").await.unwrap();
        let mut raw = raw_acme(&proxy).await;
        raw.send(&pipeline::query("COPY serials (note) FROM STDIN"))
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Some(m) = raw.read_message().await.unwrap() {
            let tag = m.tag;
            seen.push(m);
            if tag == b'G' {
                break;
            }
        }
        for row in [&b"a\n"[..], b"b\n"] {
            let mut data = vec![b'd'];
            data.extend_from_slice(&(4 + row.len() as i32).to_be_bytes());
            data.extend_from_slice(row);
            raw.send(&data).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let replies = pipeline::round_trip(&mut raw, &[b'c', 0, 0, 0, 4], 1)
            .await
            .unwrap();
        let summary = pipeline::summarize(&replies);
        assert!(
            summary.iter().any(|m| m.contains("COPY 2"))
                && pipeline::first_error(&replies).is_none(),
            "{summary:?}"
        );
    })
    .await;
}
