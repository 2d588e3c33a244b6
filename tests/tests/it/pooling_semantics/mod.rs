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

#[macro_use]
mod lifecycle;
use lifecycle::*;
mod abandoned;
mod copy_listen_discard;
mod differential;
mod divergences;
mod parameter_status;

/// [`transaction_mode`] with one server, waited for up to `seconds`.
fn one_server_waiting(seconds: f64) -> Config {
    let mut config = transaction_mode(1);
    config.databases[0].query_wait_timeout = seconds;
    config
}

/// Another client gets the single server of `proxy` (so its last client gave it back).
async fn assert_server_given_back(proxy: &TestProxy) {
    let mut other = raw_proxy(proxy).await;
    let replies = pipeline::round_trip(&mut other, &pipeline::query("SELECT 1"), 1)
        .await
        .unwrap();
    assert!(
        pipeline::first_error(&replies).is_none(),
        "the server was not given back: {:?}",
        pipeline::summarize(&replies)
    );
}

/// Transaction pooling on database `app` with `pool_size` servers.
pub(crate) fn transaction_mode(pool_size: usize) -> Config {
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
    let db = pg.new_database("pgb_prep", &[]).await;
    within(120, "pgbench database", async {
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

#[tokio::test]
async fn statement_lifecycle_matches_postgres() {
    statement_lifecycle_matches_postgres_with(false).await;
}

/// The same with `cache_unnamed_statements`: unnamed statements prepared under global names.
#[tokio::test]
async fn statement_lifecycle_matches_postgres_with_unnamed_statements_cached() {
    statement_lifecycle_matches_postgres_with(true).await;
}

async fn statement_lifecycle_matches_postgres_with(cache_unnamed: bool) {
    let mut config = transaction_mode(1);
    config.proxy.cache_unnamed_statements = cache_unnamed;
    let proxy = TestProxy::start(config).await;
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
            "SET search_path = public",
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
                    Some("public".to_string()),
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

/// A schema change that alters a prepared statement's result columns makes Postgres refuse it
/// ("cached plan must not change result type", 0A000) until it is prepared again. Clients share
/// statements on the servers, so a client that prepares the same text afresh may still meet that
/// error once per server; after it the proxy deallocates the server's statements at release, and
/// the next run works — named statements, and unnamed ones with `cache_unnamed_statements`.
#[tokio::test]
async fn a_statement_whose_result_columns_changed_is_prepared_again() {
    let direct = direct_client(pg::APP_DB).await;
    for (cache_unnamed, name) in [(false, "q"), (true, ""), (true, "q")] {
        let mut config = transaction_mode(1);
        config.proxy.cache_unnamed_statements = cache_unnamed;
        let proxy = TestProxy::start(config).await;
        let table = unique_name("stale");
        direct
            .batch_execute(&format!(
                "CREATE TABLE {table} (a int); INSERT INTO {table} VALUES (1)"
            ))
            .await
            .unwrap();
        let sql = format!("SELECT * FROM {table}");
        let run = [
            parse(name, &sql, &[]),
            bind("", name, &[], &[]),
            execute("", 0),
            close(b'S', name),
            sync(),
        ]
        .concat();
        let mut c = raw_proxy(&proxy).await;
        let what = format!("cache_unnamed_statements = {cache_unnamed}, statement {name:?}");
        within(60, "stale statement", async {
            let replies = pipeline::round_trip(&mut c, &run, 1).await.unwrap();
            assert!(pipeline::first_error(&replies).is_none(), "{what}: before");
            direct
                .batch_execute(&format!("ALTER TABLE {table} ADD COLUMN b int DEFAULT 2"))
                .await
                .unwrap();
            // May fail once: the server's statement predates the change.
            pipeline::round_trip(&mut c, &run, 1).await.unwrap();
            let replies = pipeline::round_trip(&mut c, &run, 1).await.unwrap();
            let seen = pipeline::summarize(&replies);
            assert!(
                pipeline::first_error(&replies).is_none() && seen.contains(&"Row[1,2]".into()),
                "{what}: after the change: {seen:?}"
            );
        })
        .await;
    }
}

/// After an error the client already received (it sent Flush, not Sync), Postgres skips every
/// message up to the client's Sync without a reply: a Bind of a known statement, of one that
/// does not exist, a Parse. The proxy must answer exactly that, keep no expectation for the
/// skipped messages, and give the server back at the Sync (pool size 1: another client gets
/// it). Also a rejected Bind behind a failing Parse: the client sees the Parse's error.
#[tokio::test]
async fn messages_after_a_flushed_error_are_skipped_up_to_the_sync() {
    let proxy = TestProxy::start(one_server_waiting(10.0)).await;
    async fn script(c: &mut RawConn) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let replies = pipeline::round_trip(c, &[parse("ok", "SELECT 1", &[]), sync()].concat(), 1)
            .await
            .unwrap();
        out.push(pipeline::summarize(&replies));
        for after in [
            [bind("", "ok", &[], &[]), execute("", 0)].concat(),
            [bind("", "never_prepared", &[], &[]), execute("", 0)].concat(),
            [parse("later", "SELECT 2", &[]), describe(b'S', "later")].concat(),
        ] {
            c.send(&[parse("bad", "SELEC 1", &[]), pipeline::flush()].concat())
                .await
                .unwrap();
            let error = c.read_message().await.unwrap().unwrap();
            out.push(pipeline::summarize(&[error]));
            let replies = pipeline::round_trip(c, &[after, sync()].concat(), 1)
                .await
                .unwrap();
            out.push(pipeline::summarize(&replies));
        }
        let batch = [
            parse("bad", "SELEC 1", &[]),
            bind("", "never_prepared", &[], &[]),
            sync(),
        ];
        let replies = pipeline::round_trip(c, &batch.concat(), 1).await.unwrap();
        out.push(pipeline::summarize(&replies));
        let replies = pipeline::round_trip(c, &pipeline::query("SELECT 1/0"), 1)
            .await
            .unwrap();
        out.push(pipeline::summarize(&replies));
        out
    }
    within(60, "flushed error", async {
        let direct = script(&mut raw_direct().await).await;
        let mut main = raw_proxy(&proxy).await;
        let proxied = script(&mut main).await;
        assert_eq!(proxied, direct);
        assert_server_given_back(&proxy).await;
    })
    .await;
}

/// A Query or FunctionCall inside an extended-protocol batch, behind a message that fails:
/// Postgres skips it up to the Sync (no ReadyForQuery of its own). The proxy must not wait for
/// one: replies stay in step, and the server is given back (pool size 1).
#[tokio::test]
async fn a_query_behind_a_failing_unsynced_message_is_skipped() {
    let proxy = TestProxy::start(one_server_waiting(10.0)).await;
    async fn script(c: &mut RawConn) -> Vec<Vec<String>> {
        let batches = [
            [
                parse("", "SELECT 1/0", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                pipeline::query("SELECT 5"),
                pipeline::function_call(1299, &[]), // now()
                sync(),
            ]
            .concat(),
            pipeline::query("SELECT 6"),
            [close(b'S', "nope"), sync()].concat(),
            pipeline::query("SELECT 9"),
        ];
        let mut out = Vec::new();
        for batch in batches {
            let replies = pipeline::round_trip(c, &batch, 1).await.unwrap();
            out.push(pipeline::summarize(&replies));
        }
        out
    }
    within(60, "query behind a failing message", async {
        let direct = script(&mut raw_direct().await).await;
        let proxied = script(&mut raw_proxy(&proxy).await).await;
        assert_eq!(proxied, direct);
        assert_server_given_back(&proxy).await;
    })
    .await;
}
