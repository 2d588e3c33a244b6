//! The tenant goes out with the client's first request: at checkout the proxy sends its settings
//! statement and a check ahead of the request instead of waiting a round trip (see
//! `Session::attach`). One server shared by two tenants, RLS on and the policy off, so a wrong
//! tenant on the server shows up as the other tenant's rows.

use super::*;
use sha2::Digest;
use tokio_postgres::types::Type;

/// The tenants of the rows `SELECT tenant_id FROM orders` returns.
async fn tenants_seen(c: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = c.query("SELECT tenant_id FROM orders", &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The first column of the rows a simple query `sql` returns (by default [`tenants_seen`]'s).
async fn simple_tenants(c: &Client, sql: Option<&str>) -> Vec<String> {
    c.simple_query(sql.unwrap_or("SELECT tenant_id FROM orders"))
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}

async fn assert_sees_only(c: &Client, tenant: &str, what: &str) {
    let seen = tenants_seen(c)
        .await
        .unwrap_or_else(|e| panic!("{what}: read as {tenant} failed: {e:?}"));
    assert_eq!(seen, vec![tenant; 3], "{what}: {tenant} saw {seen:?}");
}

/// [`assert_sees_only`] over the simple query protocol.
async fn assert_simple_sees_only(c: &Client, tenant: &str, what: &str) {
    let seen = simple_tenants(c, None).await;
    assert_eq!(seen, vec![tenant; 3], "{what}: {tenant} saw {seen:?}");
}

/// A proxy with one server for tenants acme and globex, and a client of each.
async fn shared_server_proxy() -> (String, TestProxy, Client, Client) {
    two_tenant_proxy(1).await
}

/// A proxy with `pool_size` servers for tenants acme and globex, and a client of each.
async fn two_tenant_proxy(pool_size: usize) -> (String, TestProxy, Client, Client) {
    let db = within(60, "database", tenant_database(true)).await;
    let mut config = tenant_config(&db, PoolMode::Transaction, pool_size);
    config.policy.mode = PolicyMode::Off;
    let proxy = TestProxy::start(config).await;
    let a = proxy.connect_acme().await;
    let g = proxy
        .connect(GLOBEX_USER, GLOBEX_PASSWORD, pg::APP_DB)
        .await
        .unwrap();
    (db, proxy, a, g)
}

/// First requests that fail, open a transaction, roll back or come pipelined: each leaves the
/// server at the tenant its statements ran for, and the next tenant gets its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_requests_of_every_kind_run_for_their_own_tenant() {
    let (_db, _proxy, a, g) = shared_server_proxy().await;
    let stmt_a = a.prepare("SELECT tenant_id FROM orders").await.unwrap();
    let stmt_g = g.prepare("SELECT tenant_id FROM orders").await.unwrap();
    within(120, "alternating tenants", async {
        for round in 0..20 {
            assert_sees_only(&a, "acme", "plain read").await;
            // The first request fails (one Parse/Bind/Describe/Execute/Sync): its implicit
            // transaction, which set the tenant, rolls back; the next read sets it again.
            let err = g
                .query_typed("SELECT 1 / $1::int", &[(&0i32, Type::INT4)])
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
            );
            assert_sees_only(&g, "globex", "after a failed first request").await;
            assert_sees_only(&a, "acme", "after the other tenant's failure").await;
            // A ROLLBACK outside a transaction block undoes the implicit transaction too.
            g.query_typed("ROLLBACK", &[]).await.unwrap();
            assert_sees_only(&g, "globex", "after a ROLLBACK as first request").await;
            assert_sees_only(&a, "acme", "after the other tenant's ROLLBACK").await;
            // Simple queries as first requests: a read, a failure, a ROLLBACK.
            assert_simple_sees_only(&g, "globex", "simple read").await;
            assert_simple_sees_only(&a, "acme", "simple read").await;
            assert!(g.simple_query("SELECT 1 / 0").await.is_err());
            assert_simple_sees_only(&g, "globex", "after a failed query").await;
            g.simple_query("ROLLBACK").await.unwrap();
            assert_simple_sees_only(&g, "globex", "after ROLLBACK").await;
            assert_simple_sees_only(&a, "acme", "after the other's ROLLBACK").await;
            // The first request opens a transaction (extended protocol), which is rolled back.
            a.execute("BEGIN", &[]).await.unwrap();
            assert_sees_only(&a, "acme", "inside a transaction").await;
            a.execute("ROLLBACK", &[]).await.unwrap();
            assert_sees_only(&g, "globex", "after the other tenant's rollback").await;
            assert_sees_only(&a, "acme", "after its own rollback").await;
            // Pipelined requests from both tenants: several Syncs in one batch.
            let (ra, rg) = tokio::join!(
                async {
                    tokio::try_join!(
                        a.query(&stmt_a, &[]),
                        a.query(&stmt_a, &[]),
                        a.query(&stmt_a, &[])
                    )
                },
                async {
                    tokio::try_join!(
                        g.query(&stmt_g, &[]),
                        g.query(&stmt_g, &[]),
                        g.query(&stmt_g, &[])
                    )
                },
            );
            let (ra, rg) = (ra.unwrap(), rg.unwrap());
            for rows in [ra.0, ra.1, ra.2] {
                let t: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                assert_eq!(t, vec!["acme"; 3], "round {round}: pipelined acme read");
            }
            for rows in [rg.0, rg.1, rg.2] {
                let t: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                assert_eq!(t, vec!["globex"; 3], "round {round}: pipelined globex read");
            }
        }
    })
    .await;
}

/// A client's `lock_timeout` and `statement_timeout` stay on the server until the next
/// checkout changes them: the next tenant's settings statement must not run under them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_clients_timeouts_do_not_touch_the_next_checkout() {
    let (_db, _proxy, a, g) = shared_server_proxy().await;
    within(60, "timeouts", async {
        g.batch_execute("SET lock_timeout = 1; SET statement_timeout = '5s'")
            .await
            .unwrap();
        for _ in 0..10 {
            assert_sees_only(&g, "globex", "with timeouts").await;
            assert_sees_only(&a, "acme", "after a client with timeouts").await;
        }
        let row = g.query_one("SHOW lock_timeout", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "1ms");
    })
    .await;
}

/// Settings that no longer apply (the text search configuration a client chose was dropped)
/// make the settings statement fail while the request is already on its way: the check
/// keeps the request from running, the client's session ends with the reason, the server is
/// closed, and the other tenant and new sessions carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_fail_end_the_session_and_run_nothing() {
    let (db, proxy, a, g) = shared_server_proxy().await;
    let pg = PgServer::shared();
    let su = pg.superuser_client(&db).await.unwrap();
    su.batch_execute("CREATE TEXT SEARCH CONFIGURATION public.tg_cfg (COPY = english)")
        .await
        .unwrap();
    within(60, "failing settings", async {
        a.batch_execute("SET default_text_search_config = 'public.tg_cfg'")
            .await
            .unwrap();
        assert_sees_only(&a, "acme", "with a text search configuration").await;
        // Prepared now, so that later the request is one Bind/Execute/Sync on the wire. It
        // would mark the orders of whichever tenant the server is set to.
        let mark = a
            .prepare("UPDATE orders SET status = 'marked' WHERE id > $1")
            .await
            .unwrap();
        assert_sees_only(&g, "globex", "before the drop").await;
        su.batch_execute("DROP TEXT SEARCH CONFIGURATION public.tg_cfg")
            .await
            .unwrap();
        let before = su
            .query_one("SELECT count(*) FROM orders WHERE status = 'marked'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        // Two requests pipelined: the check covers the first, the second waits for the outcome.
        let (first, second) = tokio::join!(a.execute(&mark, &[&0i64]), a.execute(&mark, &[&1i64]));
        assert!(second.is_err(), "the second request succeeded: {second:?}");
        let err = first.unwrap_err();
        let msg = format!("{err:?}");
        assert!(
            msg.contains("could not apply session settings"),
            "unexpected error: {msg}"
        );
        assert!(a.is_closed() || a.simple_query("SELECT 1").await.is_err());
        // The closed server's backend works through what it had received before it exits.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = su
            .query_one("SELECT count(*) FROM orders WHERE status = 'marked'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(
            before, after,
            "the request ran although its settings failed"
        );
        assert_sees_only(&g, "globex", "after the failure").await;
        let a2 = proxy.connect_acme().await;
        assert_sees_only(&a2, "acme", "new session after the failure").await;
    })
    .await;
}

/// A ROLLBACK (or any transaction control) inside the first request ends the implicit
/// transaction that would carry an inline tenant: the statements after it must still run for the
/// client's tenant. Policy enforcing, RLS on; hand-built extended-protocol batches, and the
/// multi-statement simple form with the policy off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_control_in_the_first_request_keeps_the_tenant() {
    let db = within(60, "database", tenant_database(true)).await;
    let proxy = TestProxy::start(tenant_config(&db, PoolMode::Transaction, 1)).await;
    let a = proxy.connect_acme().await;
    let mut raw = raw_login(&proxy, GLOBEX_USER, GLOBEX_PASSWORD).await;
    let read =
        "SELECT tenant_id FROM orders WHERE tenant_id = current_setting('app.current_tenant')";
    within(60, "transaction control", async {
        for control in [
            "ROLLBACK",
            "ABORT",
            "COMMIT",
            "END",
            "--x\rROLLBACK /*\nSELECT */",
        ] {
            // The server was last set to acme.
            let rows = a.query(read, &[]).await.unwrap();
            assert_eq!(rows.len(), 3, "{control}: acme's read");
            let batch = [
                pipeline::parse("", control, &[]),
                pipeline::bind("", "", &[], &[]),
                pipeline::execute("", 0),
                pipeline::parse("", read, &[]),
                pipeline::bind("", "", &[], &[]),
                pipeline::execute("", 0),
                pipeline::sync(),
            ]
            .concat();
            let replies = pipeline::round_trip(&mut raw, &batch, 1).await.unwrap();
            let rows: Vec<String> = pipeline::summarize(&replies)
                .into_iter()
                .filter(|m| m.starts_with("Row"))
                .collect();
            assert_eq!(
                rows,
                vec!["Row[globex]"; 3],
                "{control} then a read, as globex: {:?}",
                pipeline::summarize(&replies)
            );
        }
    })
    .await;

    let (_db, _proxy, a, g) = shared_server_proxy().await;
    within(60, "multi-statement", async {
        // Also texts a simple word scan reads differently from Postgres: a `--` comment ends at
        // a carriage return; a dollar-quote tag may be non-ASCII.
        for sql in [
            "ROLLBACK; SELECT tenant_id FROM orders",
            "ABORT; SELECT tenant_id FROM orders",
            "SELECT 'x'; --x\rROLLBACK; SELECT tenant_id FROM orders",
            "SELECT $é$ ' $é$; ROLLBACK; SELECT tenant_id FROM orders; SELECT ' x'",
        ] {
            assert_sees_only(&a, "acme", sql).await;
            let seen = simple_tenants(&g, Some(sql)).await;
            let tenants: Vec<&String> = seen
                .iter()
                .filter(|t| t.contains("acme") || t.contains("globex"))
                .collect();
            assert_eq!(tenants, vec!["globex"; 3], "{sql}: {seen:?}");
        }
    })
    .await;
}

/// With the policy off, a statement the proxy lets through can change the tenant setting
/// itself (`set_config` inside a multi-statement query). The proxy reads the setting back when
/// the server is released, so the next client of the tenant the proxy believed in is not
/// served by a server set to another tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_changed_behind_the_proxys_back_is_read_back() {
    let (_db, proxy, a, _g) = shared_server_proxy().await;
    let a2 = proxy.connect_acme().await;
    within(60, "tenant changed by a client", async {
        assert_sees_only(&a, "acme", "before").await;
        a.simple_query("SELECT 1; SELECT set_config('app.current_tenant', 'globex', false)")
            .await
            .unwrap();
        assert_sees_only(&a2, "acme", "the next acme client").await;
        assert_sees_only(&a, "acme", "the client that changed it").await;
    })
    .await;
}

/// With a server set to each tenant idle, each client's checkouts take the server already set
/// to its tenant (the pool's affinity), not the one used last: no settings statement runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_servers_already_set_to_the_tenant_are_preferred() {
    let (_db, _proxy, a, g) = two_tenant_proxy(2).await;
    async fn pid(c: &Client) -> i32 {
        c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    }
    within(60, "affinity", async {
        // Both hold a server at once: two servers, one set to each tenant.
        a.batch_execute("BEGIN").await.unwrap();
        g.batch_execute("BEGIN").await.unwrap();
        let (pid_a, pid_g) = (pid(&a).await, pid(&g).await);
        assert_ne!(pid_a, pid_g);
        a.batch_execute("COMMIT").await.unwrap();
        g.batch_execute("COMMIT").await.unwrap();
        for round in 0..20 {
            assert_eq!(pid(&a).await, pid_a, "acme, round {round}");
            assert_sees_only(&a, "acme", "affinity").await;
            assert_eq!(pid(&g).await, pid_g, "globex, round {round}");
            assert_sees_only(&g, "globex", "affinity").await;
        }
    })
    .await;
}

/// The server's statements outlive the client that prepared them: the unnamed one, and the
/// proxy-global names of named ones. A client that binds a statement it has not prepared must
/// get Postgres' "does not exist", not run another client's statement: here a read run with a
/// tenant parameter the policy never saw a Parse for, by a client of the same tenant (no
/// settings statement in between) and of another. RLS off: the policy is the only wall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_of_a_statement_never_prepared_does_not_run_anothers() {
    let db = within(60, "database", tenant_database(false)).await;
    let read = "SELECT tenant_id FROM orders WHERE tenant_id = $1";
    let parse_and_read = [
        pipeline::parse("", read, &[]),
        pipeline::bind("", "", &[], &[Some(b"acme")]),
        pipeline::execute("", 0),
        pipeline::sync(),
    ]
    .concat();
    // The proxy's name for a statement: `tg_` and 128 bits of SHA-256 over text and types.
    let digest = sha2::Sha256::new()
        .chain_update(read)
        .chain_update([0, 0, 0])
        .finalize();
    let global: String = std::iter::once("tg_".to_string())
        .chain(digest[..16].iter().map(|b| format!("{b:02x}")))
        .collect();
    let prepare_named = [
        pipeline::parse("mine", read, &[]),
        pipeline::bind("", "mine", &[], &[Some(b"acme")]),
        pipeline::execute("", 0),
        pipeline::close(b'S', "mine"),
        pipeline::sync(),
    ]
    .concat();
    let read_globex = |statement: &str| {
        [
            pipeline::bind("", statement, &[], &[Some(b"globex")]),
            pipeline::execute("", 0),
            pipeline::sync(),
        ]
        .concat()
    };
    for mode in [PolicyMode::Enforce, PolicyMode::Off] {
        let mut config = tenant_config(&db, PoolMode::Transaction, 1);
        config.policy.mode = mode;
        let proxy = TestProxy::start(config).await;
        let mut acme = raw_login(&proxy, ACME_USER, ACME_PASSWORD).await;
        let mut others = [
            ("acme", raw_login(&proxy, ACME_USER, ACME_PASSWORD).await),
            (
                "globex",
                raw_login(&proxy, GLOBEX_USER, GLOBEX_PASSWORD).await,
            ),
        ];
        within(60, "unnamed statement", async {
            let cases = [(&parse_and_read, ""), (&prepare_named, global.as_str())];
            for i in 0..others.len() * cases.len() {
                let (who, other) = &mut others[i / cases.len()];
                let (prepare, statement) = cases[i % cases.len()];
                let replies = pipeline::round_trip(&mut acme, prepare, 1).await.unwrap();
                let seen = pipeline::summarize(&replies);
                assert_eq!(
                    seen.iter().filter(|m| m.starts_with("Row")).count(),
                    3,
                    "{seen:?}"
                );
                let replies = pipeline::round_trip(other, &read_globex(statement), 1)
                    .await
                    .unwrap();
                let seen = pipeline::summarize(&replies);
                assert!(
                    !seen.iter().any(|m| m.starts_with("Row")),
                    "{mode:?}: another {who} client ran acme's statement {statement:?}: {seen:?}"
                );
                let (code, message, _) = pipeline::first_error(&replies).expect("an error");
                assert_eq!(code, "26000", "{mode:?}, {who}, {statement:?}: {message}");
                // The connection stays usable.
                let replies = pipeline::round_trip(other, &pipeline::query("SELECT 1"), 1)
                    .await
                    .unwrap();
                assert!(pipeline::first_error(&replies).is_none(), "{mode:?}, {who}");
            }
        })
        .await;
    }
}

/// A Parse of the unnamed statement behind a message that fails is skipped by the server, which
/// keeps its older unnamed statement. A Bind in the next segment must be checked against the
/// statement the server will run: the older one (here a tenant-filtered read, with another
/// tenant's value), never against the skipped text. RLS off: the policy is the only wall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_unnamed_parse_does_not_leave_the_older_statement_to_run() {
    let db = within(60, "database", tenant_database(false)).await;
    let read = "SELECT tenant_id FROM orders WHERE tenant_id = $1";
    let batch = [
        // The client's own tenant-checked read.
        pipeline::parse("", read, &[]),
        pipeline::bind("", "", &[], &[Some(b"acme")]),
        pipeline::execute("", 0),
        pipeline::sync(),
        // An error, then a Parse of "" the server skips.
        pipeline::parse("boom", "SELECT 1/0", &[]),
        pipeline::bind("", "boom", &[], &[]),
        pipeline::execute("", 0),
        pipeline::parse("", "SELECT $1::text", &[]),
        pipeline::sync(),
        // A Bind of "" with another tenant's value.
        pipeline::bind("", "", &[], &[Some(b"globex")]),
        pipeline::execute("", 0),
        pipeline::sync(),
    ]
    .concat();
    for cache in [false, true] {
        let mut config = tenant_config(&db, PoolMode::Transaction, 1);
        config.proxy.cache_unnamed_statements = cache;
        let proxy = TestProxy::start(config).await;
        let mut c = raw_login(&proxy, ACME_USER, ACME_PASSWORD).await;
        let replies = within(60, "pipeline", pipeline::round_trip(&mut c, &batch, 3))
            .await
            .unwrap();
        let seen = pipeline::summarize(&replies);
        let rows: Vec<&String> = seen.iter().filter(|m| m.starts_with("Row")).collect();
        // As on Postgres the Bind is of the older statement (the proxy waits for the replies
        // to learn that the server skipped the Parse), and the policy refuses it with another
        // tenant's value (42501); or, with cached unnamed statements, the server reports the
        // skipped statement missing (26000). Never the older read with globex's value.
        let own = ["Row[acme]", "Row[acme]", "Row[acme]"];
        let refused = seen.contains(&"Error 42501".into());
        let missing = cache && seen.contains(&"Error 26000".into());
        assert!(
            rows == own && (refused || missing),
            "cache_unnamed_statements = {cache}: the last Bind ran the older statement: {seen:?}"
        );
    }
}

/// A Parse the server skips (behind a failing message) or refuses (the name exists: 42P05)
/// leaves the server's older statement in place. In either pool mode the proxy must not check
/// a later Bind against the text the server did not take, then run the older statement (a
/// tenant-filtered read) with another tenant's value. Sent one segment at a time, then all in
/// one write (the Binds are then screened before any reply). RLS off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_the_server_did_not_take_does_not_let_the_older_statement_run() {
    let db = within(60, "database", tenant_database(false)).await;
    let read = "SELECT tenant_id FROM orders WHERE tenant_id = $1";
    let own = "SELECT $1::text";
    let prepare = |name: &str| {
        [
            pipeline::parse(name, read, &[]),
            pipeline::bind("", name, &[], &[Some(b"acme")]),
            pipeline::execute("", 0),
            pipeline::sync(),
        ]
        .concat()
    };
    let fail_then = |tail: Vec<u8>| {
        [
            pipeline::parse("boom", "SELECT 1/0", &[]),
            pipeline::bind("", "boom", &[], &[]),
            pipeline::execute("", 0),
            tail,
            pipeline::sync(),
        ]
        .concat()
    };
    let read_globex = |name: &str| {
        [
            pipeline::bind("", name, &[], &[Some(b"globex")]),
            pipeline::execute("", 0),
            pipeline::sync(),
        ]
        .concat()
    };
    let scenarios: [(&str, Vec<Vec<u8>>); 3] = [
        (
            "unnamed Parse skipped",
            vec![
                prepare(""),
                fail_then(pipeline::parse("", own, &[])),
                read_globex(""),
            ],
        ),
        (
            "Close and Parse of a name skipped",
            vec![
                prepare("s"),
                fail_then([pipeline::close(b'S', "s"), pipeline::parse("s", own, &[])].concat()),
                read_globex("s"),
            ],
        ),
        (
            "Parse of an existing name",
            vec![
                prepare("s"),
                [pipeline::parse("s", own, &[]), pipeline::sync()].concat(),
                read_globex("s"),
            ],
        ),
    ];
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let proxy = TestProxy::start(tenant_config(&db, mode, 1)).await;
        for (what, segments) in &scenarios {
            let mut c = raw_login(&proxy, ACME_USER, ACME_PASSWORD).await;
            let mut seen = Vec::new();
            for segment in segments {
                let replies = within(60, what, pipeline::round_trip(&mut c, segment, 1))
                    .await
                    .unwrap();
                seen.extend(pipeline::summarize(&replies));
            }
            let globex = seen.iter().filter(|m| *m == "Row[globex]").count();
            assert!(
                globex <= 1,
                "{mode:?}, {what}: the older read ran with globex: {seen:?}"
            );
            // The same segments in one write: the Bind is screened before any reply.
            drop(c);
            let mut c = raw_login(&proxy, ACME_USER, ACME_PASSWORD).await;
            let all = segments.concat();
            let replies = within(60, what, pipeline::round_trip(&mut c, &all, segments.len()))
                .await
                .unwrap();
            let seen = pipeline::summarize(&replies);
            let globex = seen.iter().filter(|m| *m == "Row[globex]").count();
            assert!(
                globex <= 1,
                "{mode:?}, {what}, pipelined: the older read ran with globex: {seen:?}"
            );
        }
    }
}

/// `P(n, bad) S P(n, read) S` pipelined, then `B(n) E S`: on Postgres the second Parse took
/// the name (the failed one made nothing) and the Bind runs it. The proxy learns of the first
/// Parse's error after it sent the second; that error must not drop the second (a false 26000).
/// For the unnamed statement and a named one, in both pool modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_parse_does_not_drop_the_one_pipelined_after_it() {
    let db = within(60, "database", tenant_database(false)).await;
    let bad = "SELECT no_such_column FROM orders WHERE tenant_id = $1";
    let read = "SELECT tenant_id FROM orders WHERE tenant_id = $1";
    for (mode, name) in [
        (PoolMode::Session, ""),
        (PoolMode::Transaction, ""),
        (PoolMode::Session, "s"),
        (PoolMode::Transaction, "s"),
    ] {
        let proxy = TestProxy::start(tenant_config(&db, mode, 1)).await;
        let mut c = raw_login(&proxy, ACME_USER, ACME_PASSWORD).await;
        let parses = [
            pipeline::parse(name, bad, &[]),
            pipeline::sync(),
            pipeline::parse(name, read, &[]),
            pipeline::sync(),
        ]
        .concat();
        let replies = within(60, "two parses", pipeline::round_trip(&mut c, &parses, 2))
            .await
            .unwrap();
        let seen = pipeline::summarize(&replies);
        assert!(
            seen.iter().any(|m| m.contains("42703")) && seen.iter().any(|m| m == "ParseComplete"),
            "{mode:?} {name:?}: {seen:?}"
        );
        let run = [
            pipeline::bind("", name, &[], &[Some(b"acme")]),
            pipeline::execute("", 0),
            pipeline::sync(),
        ]
        .concat();
        let replies = within(60, "bind", pipeline::round_trip(&mut c, &run, 1))
            .await
            .unwrap();
        let seen = pipeline::summarize(&replies);
        assert!(
            seen.iter().any(|m| m == "Row[acme]"),
            "{mode:?} {name:?}: the second Parse was dropped: {seen:?}"
        );
    }
}

/// `P(s, A) S P(s, B) S B(s) E S` in one write, where A passes the policy but fails on the
/// server: Postgres then holds B under `s` and runs it. The Bind is screened when it is sent,
/// before the server's replies are read, so it must not be checked against A alone: here A
/// binds `$1` to no tenant column and B compares it with `tenant_id`. RLS off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_pipelined_behind_a_failing_parse_is_checked_against_what_may_run() {
    let db = within(60, "database", tenant_database(false)).await;
    let fails = "SELECT tenant_id FROM orders \
                 WHERE tenant_id = current_setting('app.current_tenant') AND no_such_column = $1";
    let read = "SELECT tenant_id FROM orders WHERE tenant_id = $1";
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let proxy = TestProxy::start(tenant_config(&db, mode, 1)).await;
        let mut c = raw_login(&proxy, ACME_USER, ACME_PASSWORD).await;
        let batch = [
            pipeline::parse("s", fails, &[]),
            pipeline::sync(),
            pipeline::parse("s", read, &[]),
            pipeline::sync(),
            pipeline::bind("", "s", &[], &[Some(b"globex")]),
            pipeline::execute("", 0),
            pipeline::sync(),
        ]
        .concat();
        let replies = within(60, "pipelined", pipeline::round_trip(&mut c, &batch, 3))
            .await
            .unwrap();
        let seen = pipeline::summarize(&replies);
        assert!(
            !seen.iter().any(|m| m == "Row[globex]"),
            "{mode:?}: another tenant's rows: {seen:?}"
        );
        // The first Parse works and the second gets 42P05: the Bind runs the first, so it is
        // checked against the first (a tenant read: globex is refused), not the echo.
        let batch = [
            pipeline::parse("u", read, &[]),
            pipeline::sync(),
            pipeline::parse("u", "SELECT $1::text", &[]),
            pipeline::sync(),
            pipeline::bind("", "u", &[], &[Some(b"globex")]),
            pipeline::execute("", 0),
            pipeline::sync(),
        ]
        .concat();
        let replies = within(
            60,
            "first parse works",
            pipeline::round_trip(&mut c, &batch, 3),
        )
        .await
        .unwrap();
        let seen = pipeline::summarize(&replies);
        assert!(
            seen.iter().any(|m| m.contains("42P05")) && !seen.iter().any(|m| m == "Row[globex]"),
            "{mode:?}: {seen:?}"
        );
        // The same pipeline with a Parse that works: the Bind waits for its answer, then runs.
        let batch = [
            pipeline::parse("t", read, &[]),
            pipeline::sync(),
            pipeline::bind("", "t", &[], &[Some(b"acme")]),
            pipeline::execute("", 0),
            pipeline::sync(),
            pipeline::bind("", "t", &[], &[Some(b"globex")]),
            pipeline::execute("", 0),
            pipeline::sync(),
        ]
        .concat();
        let replies = within(
            60,
            "pipelined, working",
            pipeline::round_trip(&mut c, &batch, 3),
        )
        .await
        .unwrap();
        let seen = pipeline::summarize(&replies);
        assert!(seen.iter().any(|m| m == "Row[acme]"), "{mode:?}: {seen:?}");
        assert!(
            !seen.iter().any(|m| m == "Row[globex]") && pipeline::first_error(&replies).is_some(),
            "{mode:?}: the globex Bind must be refused: {seen:?}"
        );
    }
}
