//! Transaction pooling must be invisible to clients (issue 4): prepared statements, Describe and
//! Close, pipelines with several Syncs, session settings, abandoned transactions and COPY, and the
//! idle-in-transaction timeout behave as on a direct PostgreSQL connection, and nothing one
//! client does leaks to another client that gets the same server next.

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tenantgate_config::{Config, PoolMode};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::pipeline::{self, bind, close, describe, execute, parse, sync};
use tenantgate_tests::proxy::*;
use tenantgate_tests::wire::{self, RawConn};
use tenantgate_tests::{tools, unique_name, within};
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

/// Transaction pooling on database `app` with `pool_size` servers.
fn transaction_mode(pool_size: usize) -> Config {
    let mut config = base_config(PgServer::shared());
    for db in &mut config.databases {
        db.pool_mode = PoolMode::Transaction;
        db.pool_size = pool_size;
        db.query_wait_timeout = 20.0;
    }
    config
}

fn pg_addr() -> SocketAddr {
    let pg = PgServer::shared();
    format!("{}:{}", pg.host(), pg.port()).parse().unwrap()
}

/// A raw connection straight to PostgreSQL as the proxy's server role.
async fn raw_direct() -> RawConn {
    let mut c = RawConn::connect(pg_addr()).await.unwrap();
    c.startup(pg::SERVICE_USER, pg::APP_DB, Some(pg::SERVICE_PASSWORD))
        .await
        .unwrap();
    c
}

/// A raw connection through the proxy as the policy-bypass service user.
async fn raw_proxy(proxy: &TestProxy) -> RawConn {
    let mut c = RawConn::connect(proxy.addr).await.unwrap();
    c.startup(SERVICE_CLIENT, pg::APP_DB, Some(SERVICE_CLIENT_PASSWORD))
        .await
        .unwrap();
    c
}

async fn direct_client(db: &str) -> Client {
    let pg = PgServer::shared();
    connect(&pg.tcp_config(pg::SERVICE_USER, pg::SERVICE_PASSWORD, db))
        .await
        .unwrap()
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

async fn one_value(c: &Client, sql: &str) -> Option<String> {
    let r = rows(
        &c.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}")),
    );
    assert_eq!(r.len(), 1, "{sql}: {r:?}");
    r[0][0].clone()
}

async fn backend_pid(c: &Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// `pgbench -S -M prepared -c 20` through 2 server connections: named prepared statements of
/// 20 clients share 2 servers without a single failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_twenty_clients_two_servers() {
    let pg = PgServer::shared();
    let db = unique_name("pgb_prep");
    let name = db.clone();
    within(120, "pgbench database", async {
        tokio::task::spawn_blocking(move || {
            pg.run_sql(
                "postgres",
                &format!("CREATE DATABASE {name} OWNER {}", pg::SERVICE_USER),
            )
        })
        .await
        .unwrap()
        .unwrap();
        // Initialized directly: the fixture is not what is under test.
        let port = pg.port().to_string();
        let init = tools::pgbench(
            &[
                "-i",
                "-s",
                "1",
                "-q",
                "-h",
                pg.host(),
                "-p",
                &port,
                "-U",
                pg::SERVICE_USER,
                &db,
            ],
            Some(pg::SERVICE_PASSWORD),
            Duration::from_secs(110),
        )
        .await
        .unwrap();
        assert!(
            init.success,
            "pgbench -i:\n{}\n{}",
            init.stdout, init.stderr
        );
    })
    .await;
    let mut config = transaction_mode(2);
    config.databases[0].dbname = Some(db.clone());
    let proxy = TestProxy::start(config).await;
    let host = proxy.host();
    let port = proxy.port().to_string();
    within(180, "pgbench -M prepared", async {
        let run = tools::pgbench(
            &[
                "-n",
                "-S",
                "-M",
                "prepared",
                "-c",
                "20",
                "-j",
                "2",
                "-T",
                "5",
                "-h",
                &host,
                "-p",
                &port,
                "-U",
                SERVICE_CLIENT,
                pg::APP_DB,
            ],
            Some(SERVICE_CLIENT_PASSWORD),
            Duration::from_secs(120),
        )
        .await
        .unwrap();
        assert!(
            run.success,
            "pgbench failed:\n{}\n{}",
            run.stdout, run.stderr
        );
        assert_eq!(
            tools::pgbench_failed_transactions(&run.stdout).unwrap_or(0),
            0,
            "{}",
            run.stdout
        );
        let processed = tools::pgbench_processed_transactions(&run.stdout)
            .unwrap_or_else(|| panic!("no transaction count:\n{}", run.stdout));
        assert!(
            processed > 100,
            "only {processed} transactions:\n{}",
            run.stdout
        );
        assert!(!run.stderr.contains("ERROR"), "{}", run.stderr);
    })
    .await;
}

/// 50 clients, 3 servers: each prepares 3 statements (one text shared by all clients, one by
/// half of them, one of its own) and runs them 50 times with different parameters, checking
/// every value. Half the clients are tenant sessions (policy and Bind checks apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_with_prepared_statements_over_three_servers() {
    let proxy = TestProxy::start(transaction_mode(3)).await;
    within(240, "50 clients with prepared statements", async {
        let tasks: Vec<_> = (0..50i64)
            .map(|i| {
                let config = if i % 2 == 0 {
                    proxy.client_config(ACME_USER, ACME_PASSWORD, pg::APP_DB)
                } else {
                    proxy.client_config(SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, pg::APP_DB)
                };
                tokio::spawn(async move {
                    let c = connect(&config).await?;
                    let shared = c.prepare("SELECT $1::int8 * 2").await?;
                    let half = if i % 3 == 0 {
                        c.prepare("SELECT $1::text || '/' || $2::int8").await?
                    } else {
                        c.prepare("SELECT $2::int8 || '/' || $1::text").await?
                    };
                    let own = c
                        .prepare(&format!(
                            "SELECT $1::int8 + {}, 'client-{i}'::text",
                            i + 1000
                        ))
                        .await?;
                    for n in 0..50i64 {
                        let v = i * 1000 + n;
                        let r = c.query_one(&shared, &[&v]).await?;
                        assert_eq!(r.get::<_, i64>(0), v * 2, "client {i} shared");
                        let s = format!("c{i}");
                        let r = c.query_one(&half, &[&s, &n]).await?;
                        let want = if i % 3 == 0 {
                            format!("c{i}/{n}")
                        } else {
                            format!("{n}/c{i}")
                        };
                        assert_eq!(r.get::<_, String>(0), want, "client {i} half");
                        let r = c.query_one(&own, &[&n]).await?;
                        assert_eq!(r.get::<_, i64>(0), n + i + 1000, "client {i} own");
                        assert_eq!(r.get::<_, String>(1), format!("client-{i}"));
                    }
                    Ok::<_, tokio_postgres::Error>(())
                })
            })
            .collect();
        let mut failures = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            if let Err(e) = t.await.unwrap() {
                failures.push(format!("client {i}: {e:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}

/// One step of the statement-lifecycle script: a batch and its number of Syncs.
struct Step {
    what: &'static str,
    batch: Vec<u8>,
    syncs: usize,
    /// Lines the reply must contain (so the script tests what it says), besides being equal to
    /// PostgreSQL's own reply.
    must_contain: &'static [&'static str],
}

fn lifecycle_steps() -> Vec<Step> {
    vec![
        Step {
            what: "Parse named, Describe statement and portal",
            batch: [
                parse("s1", "SELECT $1::int4 AS a, 'x'::text AS b", &[]),
                describe(b'S', "s1"),
                bind("p1", "s1", &[], &[Some(b"42")]),
                describe(b'P', "p1"),
                execute("p1", 0),
                sync(),
            ]
            .concat(),
            syncs: 1,
            must_contain: &["Params[23]", "Fields[a:23,b:25]", "Row[42,x]"],
        },
        Step {
            what: "named statement is still there in a later transaction",
            batch: [bind("", "s1", &[], &[Some(b"7")]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Row[7,x]"],
        },
        Step {
            what: "duplicate Parse of a name without Close",
            batch: [parse("s1", "SELECT 2", &[]), sync()].concat(),
            syncs: 1,
            must_contain: &["Error 42P05"],
        },
        Step {
            what: "the original statement survives the failed duplicate",
            batch: [bind("", "s1", &[], &[Some(b"8")]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Row[8,x]"],
        },
        Step {
            what: "Close statement",
            batch: [close(b'S', "s1"), sync()].concat(),
            syncs: 1,
            must_contain: &["CloseComplete"],
        },
        Step {
            what: "Bind to the closed statement",
            batch: [bind("", "s1", &[], &[Some(b"9")]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Error 26000"],
        },
        Step {
            what: "re-Parse the closed name with other text",
            batch: [
                parse("s1", "SELECT 'reused'::text AS r", &[]),
                describe(b'S', "s1"),
                bind("", "s1", &[], &[]),
                execute("", 0),
                sync(),
            ]
            .concat(),
            syncs: 1,
            must_contain: &["Fields[r:25]", "Row[reused]"],
        },
        Step {
            what: "Bind to a never-prepared name",
            batch: [bind("", "never_prepared", &[], &[]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Error 26000"],
        },
        Step {
            what: "Describe a never-prepared statement",
            batch: [describe(b'S', "never_prepared"), sync()].concat(),
            syncs: 1,
            must_contain: &["Error 26000"],
        },
        Step {
            what: "Close a never-prepared statement (not an error)",
            batch: [close(b'S', "never_prepared"), sync()].concat(),
            syncs: 1,
            must_contain: &["CloseComplete"],
        },
        Step {
            what: "unnamed statements replace each other within a batch",
            batch: [
                parse("", "SELECT $1::text AS t", &[]),
                bind("", "", &[], &[Some(b"u1")]),
                execute("", 0),
                parse("", "SELECT 5::int4 AS five", &[]),
                bind("", "", &[], &[]),
                describe(b'P', ""),
                execute("", 0),
                sync(),
            ]
            .concat(),
            syncs: 1,
            must_contain: &["Row[u1]", "Fields[five:23]", "Row[5]"],
        },
        Step {
            what: "the unnamed statement lasts until the next Parse or Query",
            batch: [bind("", "", &[], &[]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Row[5]"],
        },
        Step {
            what: "the unnamed statement survives a failed Bind",
            batch: [
                parse("", "SELECT $1::int4 AS n", &[]),
                bind("", "", &[], &[Some(b"abc")]),
                execute("", 0),
                sync(),
                bind("", "", &[], &[Some(b"6")]),
                execute("", 0),
                sync(),
            ]
            .concat(),
            syncs: 2,
            must_contain: &["Error 22P02", "Row[6]"],
        },
        Step {
            what: "Close portal, then Describe it",
            batch: [
                parse("s2", "SELECT 1", &[]),
                bind("p2", "s2", &[], &[]),
                close(b'P', "p2"),
                describe(b'P', "p2"),
                sync(),
            ]
            .concat(),
            syncs: 1,
            must_contain: &["Error 34000"],
        },
        Step {
            what: "partial Execute (max rows) inside a transaction",
            batch: [
                pipeline::query("BEGIN"),
                parse("s3", "SELECT g FROM generate_series(1, 5) g", &[]),
                bind("p3", "s3", &[], &[]),
                execute("p3", 2),
                execute("p3", 2),
                execute("p3", 2),
                sync(),
                pipeline::query("COMMIT"),
            ]
            .concat(),
            syncs: 3,
            must_contain: &["PortalSuspended", "Ready T", "Complete SELECT 1"],
        },
        Step {
            what: "statements named like another client's",
            batch: [
                parse("s2", "SELECT 'dup'", &[]),
                sync(),
                bind("", "s2", &[], &[]),
                execute("", 0),
                sync(),
            ]
            .concat(),
            syncs: 2,
            must_contain: &["Error 42P05", "Row[1]"],
        },
    ]
}

/// Runs the lifecycle script on `main`; before each step `other` (another client that, through
/// the proxy, shares the single server) uses the same statement names for other text.
async fn run_lifecycle(main: &mut RawConn, other: &mut RawConn) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (n, step) in lifecycle_steps().into_iter().enumerate() {
        let noise = [
            parse("s1", &format!("SELECT 'other-{n}'::text, $1::int8"), &[]),
            parse("s2", "SELECT 'other-s2'", &[]),
            bind("", "s1", &[], &[Some(b"1")]),
            execute("", 0),
            close(b'S', "s1"),
            close(b'S', "s2"),
            parse("", "SELECT 'other unnamed'", &[]),
            sync(),
        ]
        .concat();
        let o = pipeline::round_trip(other, &noise, 1).await.unwrap();
        assert!(
            !o.iter().any(|m| m.tag == b'E'),
            "other client failed: {:?}",
            pipeline::summarize(&o)
        );
        let replies = pipeline::round_trip(main, &step.batch, step.syncs)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", step.what));
        out.push((step.what.to_string(), pipeline::summarize(&replies)));
    }
    out
}

#[tokio::test]
async fn statement_lifecycle_matches_postgres() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "statement lifecycle", async {
        let direct = {
            let mut main = raw_direct().await;
            let mut other = raw_direct().await;
            run_lifecycle(&mut main, &mut other).await
        };
        let proxied = {
            let mut main = raw_proxy(&proxy).await;
            let mut other = raw_proxy(&proxy).await;
            run_lifecycle(&mut main, &mut other).await
        };
        let steps = lifecycle_steps();
        let mut failures = Vec::new();
        for ((step, (what, d)), (_, p)) in steps.iter().zip(&direct).zip(&proxied) {
            for want in step.must_contain {
                assert!(
                    d.iter().any(|l| l == want),
                    "script error: direct Postgres reply to {what:?} lacks {want:?}: {d:?}"
                );
            }
            if d != p {
                failures.push(format!("{what}:\n  postgres: {d:?}\n  proxy:    {p:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}

/// Three Parse/Bind/Execute/Sync groups in one write, the middle one failing: each Sync
/// closes its own group, exactly as PostgreSQL answers.
#[tokio::test]
async fn pipeline_with_three_syncs_and_an_error_in_the_middle() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "pipeline", async {
        let group = |sql: &str| {
            [
                parse("", sql, &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ]
            .concat()
        };
        let batch = [
            group("SELECT 1::int4"),
            group("SELECT 1/0"),
            group("SELECT 3::int4"),
        ]
        .concat();
        let in_tx = [
            pipeline::query("BEGIN"),
            batch.clone(),
            pipeline::query("ROLLBACK"),
        ]
        .concat();
        let mut results = Vec::new();
        for mut conn in [raw_direct().await, raw_proxy(&proxy).await] {
            let plain = pipeline::round_trip(&mut conn, &batch, 3).await.unwrap();
            let tx = pipeline::round_trip(&mut conn, &in_tx, 5).await.unwrap();
            // And the connection is fine afterwards.
            let after = pipeline::round_trip(&mut conn, &group("SELECT 4::int4"), 1)
                .await
                .unwrap();
            results.push((
                pipeline::summarize(&plain),
                pipeline::summarize(&tx),
                pipeline::summarize(&after),
            ));
        }
        let want_plain = [
            "ParseComplete",
            "BindComplete",
            "Row[1]",
            "Complete SELECT 1",
            "Ready I",
            // 1/0 is folded (and fails) while planning, at Bind.
            "ParseComplete",
            "Error 22012",
            "Ready I",
            "ParseComplete",
            "BindComplete",
            "Row[3]",
            "Complete SELECT 1",
            "Ready I",
        ];
        assert_eq!(results[0].0, want_plain, "direct Postgres");
        assert_eq!(results[1].0, want_plain, "through the proxy");
        // Inside a transaction the third group fails with 25P02.
        assert!(results[0].1.contains(&"Error 25P02".to_string()));
        assert_eq!(results[1].1, results[0].1, "in a transaction");
        assert_eq!(results[1].2, results[0].2, "afterwards");
    })
    .await;
}

/// SET by one client stays with that client: the next client on the same server sees the
/// defaults, the first sees its values again in later transactions, and its RESET ALL
/// restores the defaults for it (but not the tenant, which the proxy owns).
#[tokio::test]
async fn session_settings_do_not_leak_between_clients() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "settings", async {
        let direct = direct_client(pg::APP_DB).await;
        let default_timeout = one_value(&direct, "SHOW statement_timeout").await;
        let default_path = one_value(&direct, "SHOW search_path").await;
        assert_eq!(default_timeout.as_deref(), Some("0"));

        let a = proxy.connect_acme().await;
        let b = proxy.connect_service().await;
        assert_eq!(backend_pid(&a).await, backend_pid(&b).await, "not one server");
        for sql in [
            "SET statement_timeout = 1234",
            "SET search_path = x",
            "SET application_name = 'a'",
            "SET app.user_id = '7'",
        ] {
            a.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        let a_values = "SELECT current_setting('statement_timeout'), current_setting('search_path'), \
             current_setting('application_name'), current_setting('app.user_id', true), \
             current_setting('app.current_tenant', true)";
        let defaults_of_b = |b_rows: Vec<Vec<Option<String>>>| {
            assert_eq!(
                b_rows,
                vec![vec![
                    default_timeout.clone(),
                    default_path.clone(),
                    Some(String::new()),
                    None,
                    None
                ]],
                "client B sees client A's settings"
            );
        };
        // B: coalesce placeholders that a RESET leaves as '' to NULL.
        let b_values = "SELECT current_setting('statement_timeout'), current_setting('search_path'), \
             current_setting('application_name'), nullif(current_setting('app.user_id', true), ''), \
             nullif(current_setting('app.current_tenant', true), '')";
        for _ in 0..3 {
            defaults_of_b(rows(&b.simple_query(b_values).await.unwrap()));
            let got = rows(&a.simple_query(a_values).await.unwrap());
            assert_eq!(
                got,
                vec![vec![
                    Some("1234ms".to_string()),
                    Some("x".to_string()),
                    Some("a".to_string()),
                    Some("7".to_string()),
                    Some(ACME_TENANT.to_string())
                ]],
                "client A lost its settings"
            );
            // A long statement of B is not cut by A's statement_timeout.
            b.simple_query("SELECT pg_sleep(1.5)").await.unwrap();
        }
        // Inside an explicit transaction too.
        let mut b = b;
        let tx = b.transaction().await.unwrap();
        let r = tx
            .query_one("SELECT current_setting('statement_timeout')", &[])
            .await
            .unwrap();
        assert_eq!(r.get::<_, String>(0), default_timeout.clone().unwrap());
        tx.commit().await.unwrap();

        a.batch_execute("RESET ALL").await.unwrap();
        let got = rows(
            &a.simple_query(
                "SELECT current_setting('statement_timeout'), current_setting('search_path'), \
                 current_setting('application_name'), nullif(current_setting('app.user_id', true), ''), \
                 current_setting('app.current_tenant', true)",
            )
            .await
            .unwrap(),
        );
        assert_eq!(
            got,
            vec![vec![
                default_timeout.clone(),
                default_path.clone(),
                Some(String::new()),
                None,
                Some(ACME_TENANT.to_string())
            ]],
            "RESET ALL by A"
        );
        defaults_of_b(rows(&b.simple_query(b_values).await.unwrap()));
    })
    .await;
}

/// A client that leaves inside a transaction (or in the middle of COPY FROM STDIN) leaves
/// nothing behind: the next client gets the server, clean, without the uncommitted rows.
#[tokio::test]
async fn abandoned_transactions_and_copies_are_rolled_back() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "abandoned work", async {
        let table = unique_name("abandon");
        let direct = direct_client(pg::APP_DB).await;
        direct
            .batch_execute(&format!("CREATE TABLE {table} (id int)"))
            .await
            .unwrap();
        let count = format!("SELECT count(*)::int8 FROM {table}");

        // 1. BEGIN; INSERT; the client drops the connection (tokio-postgres sends Terminate).
        let a = proxy.connect_service().await;
        a.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
            .await
            .unwrap();
        let pid_a = backend_pid(&a).await;
        drop(a);
        let b = proxy.connect_service().await;
        assert_eq!(b.query_one(&count, &[]).await.unwrap().get::<_, i64>(0), 0);
        assert_eq!(backend_pid(&b).await, pid_a, "server was not reused");
        assert_eq!(one_value(&b, "SELECT 'ok'").await.as_deref(), Some("ok"));

        // 2. The TCP connection vanishes (no Terminate) inside a transaction.
        let mut raw = raw_proxy(&proxy).await;
        let replies = pipeline::round_trip(
            &mut raw,
            &pipeline::query(&format!("BEGIN; INSERT INTO {table} VALUES (2)")),
            1,
        )
        .await
        .unwrap();
        assert_eq!(pipeline::summarize(&replies).last().unwrap(), "Ready T");
        drop(raw);
        assert_eq!(b.query_one(&count, &[]).await.unwrap().get::<_, i64>(0), 0);

        // 3. Vanishing in the middle of COPY FROM STDIN, inside and outside a transaction.
        for begin in [false, true] {
            let mut raw = raw_proxy(&proxy).await;
            if begin {
                let r = pipeline::round_trip(&mut raw, &pipeline::query("BEGIN"), 1)
                    .await
                    .unwrap();
                assert_eq!(pipeline::summarize(&r).last().unwrap(), "Ready T");
            }
            raw.send(&pipeline::query(&format!("COPY {table} FROM STDIN")))
                .await
                .unwrap();
            let msg = raw.read_message().await.unwrap().unwrap();
            assert_eq!(msg.tag, b'G', "no CopyInResponse");
            let mut data = vec![b'd'];
            let rows = b"3\n4\n5\n";
            data.extend_from_slice(&(rows.len() as i32 + 4).to_be_bytes());
            data.extend_from_slice(rows);
            raw.send(&data).await.unwrap();
            drop(raw);
            let n = within(10, "server after a vanished COPY", b.query_one(&count, &[]))
                .await
                .unwrap()
                .get::<_, i64>(0);
            assert_eq!(
                n, 0,
                "rows of an abandoned COPY became visible (BEGIN: {begin})"
            );
        }
        // The one server is still the same and healthy.
        assert_eq!(backend_pid(&b).await, pid_a);
        let tx_status = one_value(&b, "SELECT now() = statement_timestamp()").await;
        assert_eq!(
            tx_status.as_deref(),
            Some("t"),
            "B's statement ran inside an old transaction"
        );
        direct
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    })
    .await;
}

/// `idle_transaction_timeout = 1`: a client idle inside BEGIN is disconnected with 25P03,
/// its transaction is rolled back and the server serves the next client.
#[tokio::test]
async fn idle_in_transaction_timeout_disconnects_with_25p03() {
    let mut config = transaction_mode(1);
    config.databases[0].idle_transaction_timeout = 1.0;
    let proxy = TestProxy::start(config).await;
    within(60, "idle in transaction", async {
        let table = unique_name("idle_tx");
        let direct = direct_client(pg::APP_DB).await;
        direct
            .batch_execute(&format!("CREATE TABLE {table} (id int)"))
            .await
            .unwrap();
        let mut raw = raw_proxy(&proxy).await;
        let r = pipeline::round_trip(
            &mut raw,
            &pipeline::query(&format!("BEGIN; INSERT INTO {table} VALUES (1)")),
            1,
        )
        .await
        .unwrap();
        assert_eq!(pipeline::summarize(&r).last().unwrap(), "Ready T");
        let pid = wire::data_rows(&raw.simple_query("SELECT pg_backend_pid()").await.unwrap());
        let started = std::time::Instant::now();
        match raw.expect_refusal(10).await.unwrap() {
            wire::Refusal::Error(f) => {
                assert_eq!(f.get(&b'C').map(String::as_str), Some("25P03"), "{f:?}");
                assert_eq!(f.get(&b'S').map(String::as_str), Some("FATAL"), "{f:?}");
            }
            wire::Refusal::Closed => panic!("closed without an ErrorResponse"),
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
            "disconnected after {waited:?}"
        );
        raw.expect_close(5).await.unwrap();

        // A client that is busy (not idle) is not affected by the timeout.
        let b = proxy.connect_service().await;
        b.batch_execute("BEGIN").await.unwrap();
        b.simple_query("SELECT pg_sleep(1.5)").await.unwrap();
        let n: i64 = b
            .query_one(&format!("SELECT count(*)::int8 FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "the timed-out transaction was committed");
        let pid_b = b
            .query_one("SELECT pg_backend_pid()::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0);
        assert_eq!(pid, vec![Some(pid_b)], "server was not reused");
        b.batch_execute("COMMIT").await.unwrap();
        direct
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    })
    .await;
}

/// A client whose notifications are captured (tokio-postgres delivers them as AsyncMessage).
async fn listening_client(
    proxy: &TestProxy,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let config = proxy.client_config(SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, pg::APP_DB);
    let (client, mut conn) = config.connect(NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

/// LISTEN is a session feature. A tenant session is refused by the policy; for a policy-bypass
/// user in transaction mode, notifications must at least never reach another client.
#[tokio::test]
async fn listen_in_transaction_mode() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "LISTEN", async {
        let channel = unique_name("chan");
        let acme = proxy.connect_acme().await;
        let err = acme
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .unwrap_err();
        // Transaction mode refuses the session feature before the policy would (42501).
        assert_eq!(sqlstate(&err), Some("0A000"), "{err:?}");
        assert!(
            err.as_db_error()
                .unwrap()
                .message()
                .contains("not supported in transaction pooling mode"),
            "{err:?}"
        );

        let (a, mut a_rx) = listening_client(&proxy).await;
        let (b, mut b_rx) = listening_client(&proxy).await;
        let listen = a.batch_execute(&format!("LISTEN {channel}")).await;
        // A clear refusal rather than notifications that silently go nowhere.
        match &listen {
            Err(e) => {
                assert_eq!(sqlstate(e), Some("0A000"), "{e:?}");
                assert!(e.as_db_error().unwrap().hint().is_some(), "{e:?}");
            }
            Ok(()) => eprintln!("LISTEN accepted for a bypass user in transaction mode"),
        }
        let direct = direct_client(pg::APP_DB).await;
        direct
            .batch_execute(&format!("NOTIFY {channel}, 'payload-1'"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // B gets the server next; a notification queued on it must not be relayed to B.
        b.simple_query("SELECT 1").await.unwrap();
        a.simple_query("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let to_b = b_rx.try_recv().ok();
        let to_a = a_rx.try_recv().ok();
        assert_eq!(
            to_b, None,
            "client B received a notification for A's LISTEN"
        );
        if listen.is_ok() {
            assert_eq!(
                to_a.as_deref(),
                Some("payload-1"),
                "LISTEN was accepted but its notification was lost"
            );
        }
        // UNLISTEN is always fine (drivers send UNLISTEN * on reset).
        acme.batch_execute("UNLISTEN *").await.unwrap();
    })
    .await;
}

/// COPY FROM STDIN (tokio-postgres: extended protocol) through a pooled server, then normal
/// queries from another client.
#[tokio::test]
async fn copy_in_completes_then_server_is_shared() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "copy in", async {
        let table = unique_name("copy_pool");
        let direct = direct_client(pg::APP_DB).await;
        direct
            .batch_execute(&format!("CREATE TABLE {table} (id int)"))
            .await
            .unwrap();
        let a = proxy.connect_service().await;
        let b = proxy.connect_service().await;
        let sink = a
            .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN"))
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        // While A's COPY is open, B must wait for the only server.
        let b_query = tokio::spawn(async move {
            let r = b.simple_query("SELECT 'b'").await.map(|m| rows(&m));
            (r, b)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!b_query.is_finished(), "B ran during A's COPY");
        sink.send(bytes::Bytes::from_static(b"1\n2\n"))
            .await
            .unwrap();
        assert_eq!(sink.finish().await.unwrap(), 2);
        let (r, _b) = within(10, "B after COPY", b_query).await.unwrap();
        assert_eq!(r.unwrap(), vec![vec![Some("b".to_string())]]);
        let n: i64 = a
            .query_one(&format!("SELECT count(*)::int8 FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
        direct
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    })
    .await;
}

/// Reads messages until one with `tag` (included).
async fn read_until_tag(conn: &mut RawConn, tag: u8) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let m = within(10, "reading a reply", conn.read_message())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("closed after {:?}", pipeline::summarize(&out)));
        let done = m.tag == tag;
        out.push(m);
        if done {
            return pipeline::summarize(&out);
        }
    }
}

/// COPY FROM STDIN the way tokio-postgres sends it: Bind/Execute/Sync, CopyData, CopyDone,
/// Sync. The server ignores the first Sync (it arrives in copy-in mode) and sends one
/// ReadyForQuery; the session goes on normally, as on a direct connection.
async fn extended_copy_in(mode: PoolMode) {
    let mut config = transaction_mode(1);
    config.databases[0].pool_mode = mode;
    let proxy = TestProxy::start(config).await;
    within(60, "extended COPY", async {
        let table = unique_name("copy_ext");
        let direct = direct_client(pg::APP_DB).await;
        direct
            .batch_execute(&format!("CREATE TABLE {table} (id int)"))
            .await
            .unwrap();
        let mut results = Vec::new();
        for (through_proxy, mut conn) in
            [(false, raw_direct().await), (true, raw_proxy(&proxy).await)]
        {
            direct
                .batch_execute(&format!("TRUNCATE {table}"))
                .await
                .unwrap();
            let mut seen = Vec::new();
            let prepare = [
                parse("cp", &format!("COPY {table} FROM STDIN"), &[]),
                describe(b'S', "cp"),
                sync(),
            ]
            .concat();
            seen.extend(pipeline::summarize(
                &pipeline::round_trip(&mut conn, &prepare, 1).await.unwrap(),
            ));
            conn.send(&[bind("", "cp", &[], &[]), execute("", 0), sync()].concat())
                .await
                .unwrap();
            seen.extend(read_until_tag(&mut conn, b'G').await);
            let mut data = vec![b'd'];
            data.extend_from_slice(&(4 + 4i32).to_be_bytes());
            data.extend_from_slice(b"1\n2\n");
            conn.send(&[data, vec![b'c', 0, 0, 0, 4], sync()].concat())
                .await
                .unwrap();
            seen.extend(read_until_tag(&mut conn, b'Z').await);
            // tokio-postgres then closes the statement.
            match pipeline::round_trip(&mut conn, &[close(b'S', "cp"), sync()].concat(), 1).await {
                Ok(m) => seen.extend(pipeline::summarize(&m)),
                Err(e) => seen.push(format!("FAILED: {e:#}")),
            }
            // Then the next statements on the same connection.
            let next = pipeline::round_trip(
                &mut conn,
                &pipeline::simple_extended(&format!("SELECT count(*) FROM {table}"), &[]),
                1,
            )
            .await;
            match next {
                Ok(m) => seen.extend(pipeline::summarize(&m)),
                Err(e) => seen.push(format!("FAILED: {e:#}")),
            }
            let q = pipeline::round_trip(&mut conn, &pipeline::query("SELECT 'q'"), 1).await;
            match q {
                Ok(m) => seen.extend(pipeline::summarize(&m)),
                Err(e) => seen.push(format!("FAILED: {e:#}")),
            }
            results.push(seen);
            if through_proxy && mode == PoolMode::Transaction {
                // The only server is free again while this client stays connected and idle.
                let free = tokio::time::timeout(Duration::from_secs(3), async {
                    let other = proxy
                        .connect(SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, pg::APP_DB)
                        .await?;
                    other.simple_query("SELECT 1").await
                })
                .await;
                if !matches!(free, Ok(Ok(_))) {
                    results[1].push(format!("SERVER STILL HELD: {free:?}"));
                }
            }
            drop(conn);
        }
        direct
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
        assert!(
            results[0].contains(&"Row[2]".to_string()),
            "{:?}",
            results[0]
        );
        assert_eq!(results[1], results[0], "proxy vs postgres");
    })
    .await;
}

#[tokio::test]
async fn extended_protocol_copy_in_with_sync_during_copy_transaction_mode() {
    extended_copy_in(PoolMode::Transaction).await;
}

#[tokio::test]
async fn extended_protocol_copy_in_with_sync_during_copy_session_mode() {
    extended_copy_in(PoolMode::Session).await;
}

/// In session mode LISTEN is a plain session feature for a policy-bypass user.
#[tokio::test]
async fn listen_in_session_mode_delivers_notifications() {
    let mut config = transaction_mode(2);
    config.databases[0].pool_mode = PoolMode::Session;
    let proxy = TestProxy::start(config).await;
    within(60, "LISTEN (session mode)", async {
        let channel = unique_name("chan");
        let (a, mut a_rx) = listening_client(&proxy).await;
        let (b, mut b_rx) = listening_client(&proxy).await;
        a.batch_execute(&format!("LISTEN {channel}")).await.unwrap();
        let direct = direct_client(pg::APP_DB).await;
        direct
            .batch_execute(&format!("NOTIFY {channel}, 'payload-2'"))
            .await
            .unwrap();
        let got = within(10, "notification", a_rx.recv()).await;
        assert_eq!(got.as_deref(), Some("payload-2"));
        b.simple_query("SELECT 1").await.unwrap();
        assert!(b_rx.try_recv().is_err(), "B got A's notification");
    })
    .await;
}

/// A tiny statement_timeout chosen by a client stays that client's (the proxy's own
/// bookkeeping queries on its server must not lose it).
#[tokio::test]
async fn tiny_statement_timeout_is_kept_and_not_leaked() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "statement_timeout = 1", async {
        let a = proxy.connect_service().await;
        let b = proxy.connect_service().await;
        a.batch_execute("SET statement_timeout = 1").await.unwrap();
        for _ in 0..20 {
            assert_eq!(
                one_value(&a, "SHOW statement_timeout").await.as_deref(),
                Some("1ms")
            );
            assert_eq!(
                one_value(&b, "SHOW statement_timeout").await.as_deref(),
                Some("0")
            );
            b.simple_query("SELECT pg_sleep(0.01)").await.unwrap();
        }
        let err = a.simple_query("SELECT pg_sleep(0.2)").await.unwrap_err();
        assert_eq!(sqlstate(&err), Some("57014"), "{err:?}");
    })
    .await;
}

/// DISCARD ALL (which drivers and pool libraries send on reset) drops the server's prepared
/// statements; the proxy must prepare them again for the next use, for this client and others.
#[tokio::test]
async fn statements_work_after_discard_all() {
    for pool_size in [1, 2] {
        let proxy = TestProxy::start(transaction_mode(pool_size)).await;
        within(60, "DISCARD ALL", async {
            for (user, password) in [
                (ACME_USER, ACME_PASSWORD),
                (SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD),
            ] {
                let a = proxy.connect(user, password, pg::APP_DB).await.unwrap();
                let b = proxy.connect(user, password, pg::APP_DB).await.unwrap();
                let sql = "SELECT $1::int4 + 1";
                for round in 0..3 {
                    for c in [&a, &b] {
                        let r: i32 = c.query_one(sql, &[&round]).await.unwrap().get(0);
                        assert_eq!(r, round + 1);
                    }
                    let kept = a.prepare(sql).await.unwrap();
                    a.batch_execute("RESET ALL").await.unwrap();
                    a.batch_execute("DISCARD ALL")
                        .await
                        .unwrap_or_else(|e| panic!("{user}: DISCARD ALL: {e:?}"));
                    for c in [&a, &b] {
                        let r = c.query_one(sql, &[&round]).await;
                        assert_eq!(
                            r.map(|r| r.get::<_, i32>(0)).map_err(|e| e.to_string()),
                            Ok(round + 1),
                            "{user}, pool_size {pool_size}, round {round}: after DISCARD ALL"
                        );
                    }
                    // A statement prepared before DISCARD ALL is gone, as on PostgreSQL (for
                    // a user without tenant see discard_all_without_tenant_drops_statements).
                    if user == ACME_USER {
                        let err = a.query_one(&kept, &[&round]).await.unwrap_err();
                        assert_eq!(sqlstate(&err), Some("26000"), "{user}: {err:?}");
                    }
                }
            }
        })
        .await;
    }
}

/// DISCARD ALL from a user without a tenant (forwarded to the server) drops the client's named
/// statements: a Bind to one fails with 26000 and the name can be prepared again, as on
/// PostgreSQL (Npgsql, for one, sends DISCARD ALL when a pooled connection is returned and then
/// prepares its statement names again).
#[tokio::test]
async fn discard_all_without_tenant_drops_statements() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "DISCARD ALL and statement names", async {
        let batch = [
            parse("s9", "SELECT 9", &[]),
            sync(),
            pipeline::query("DISCARD ALL"),
            bind("", "s9", &[], &[]),
            execute("", 0),
            sync(),
            parse("s9", "SELECT 10", &[]),
            bind("", "s9", &[], &[]),
            execute("", 0),
            sync(),
        ]
        .concat();
        let mut results = Vec::new();
        for mut conn in [raw_direct().await, raw_proxy(&proxy).await] {
            let r = pipeline::round_trip(&mut conn, &batch, 4).await.unwrap();
            results.push(pipeline::summarize(&r));
        }
        assert_eq!(
            results[0],
            [
                "ParseComplete",
                "Ready I",
                "Complete DISCARD ALL",
                "Ready I",
                "Error 26000",
                "Ready I",
                "ParseComplete",
                "BindComplete",
                "Row[10]",
                "Complete SELECT 1",
                "Ready I"
            ]
        );
        assert_eq!(results[1], results[0], "proxy vs postgres");
    })
    .await;
}

/// DISCARD ALL pipelined with the statements after it: a statement prepared again right after
/// DISCARD ALL (same text as one prepared before it) must really be prepared on the server.
/// Runs for a tenant session (DISCARD ALL answered by the proxy) and a service user (forwarded).
#[tokio::test]
async fn parse_pipelined_after_discard_all() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "Parse after DISCARD ALL", async {
        let batch = [
            parse("a1", "SELECT $1::int4 AS v", &[]),
            sync(),
            pipeline::query("DISCARD ALL"),
            parse("a2", "SELECT $1::int4 AS v", &[]),
            bind("", "a2", &[], &[Some(b"5")]),
            execute("", 0),
            sync(),
        ]
        .concat();
        let want = [
            "ParseComplete",
            "Ready I",
            "Complete DISCARD ALL",
            "Ready I",
            "ParseComplete",
            "BindComplete",
            "Row[5]",
            "Complete SELECT 1",
            "Ready I",
        ];
        let mut direct = raw_direct().await;
        let d = pipeline::round_trip(&mut direct, &batch, 3).await.unwrap();
        assert_eq!(pipeline::summarize(&d), want, "direct Postgres");
        let mut failures = Vec::new();
        for (user, password) in [
            (ACME_USER, ACME_PASSWORD),
            (SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD),
        ] {
            let mut raw = RawConn::connect(proxy.addr).await.unwrap();
            raw.startup(user, pg::APP_DB, Some(password)).await.unwrap();
            let p = pipeline::round_trip(&mut raw, &batch, 3).await.unwrap();
            let got = pipeline::summarize(&p);
            if got != want {
                failures.push(format!("{user}: {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}
