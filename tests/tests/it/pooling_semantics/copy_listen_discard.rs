//! LISTEN, COPY FROM STDIN (simple and extended), tiny statement_timeout and DISCARD ALL in transaction mode.

use super::*;

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

/// One server in pool mode `mode`.
fn one_server_in(mode: PoolMode) -> Config {
    let mut config = transaction_mode(1);
    config.databases[0].pool_mode = mode;
    config
}

/// Whether another client fails to get the single server of `proxy` within `seconds`: the
/// failure, as a line for the compared replies.
async fn server_held(proxy: &TestProxy, seconds: u64) -> Option<String> {
    let free = tokio::time::timeout(Duration::from_secs(seconds), async {
        let other = proxy
            .connect(SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, pg::APP_DB)
            .await?;
        other.simple_query("SELECT 1").await
    })
    .await;
    (!matches!(free, Ok(Ok(_)))).then(|| format!("SERVER STILL HELD: {free:?}"))
}

/// A direct client and a new table `(id int)` named after `prefix`.
pub(super) async fn copy_table(prefix: &str) -> (Client, String) {
    let table = unique_name(prefix);
    let direct = direct_client(pg::APP_DB).await;
    direct
        .batch_execute(&format!("CREATE TABLE {table} (id int)"))
        .await
        .unwrap();
    (direct, table)
}

/// COPY FROM STDIN the way tokio-postgres sends it: Bind/Execute/Sync, CopyData, CopyDone,
/// Sync. The server ignores the first Sync (it arrives in copy-in mode) and sends one
/// ReadyForQuery; the session goes on normally, as on a direct connection.
async fn extended_copy_in(mode: PoolMode) {
    let proxy = TestProxy::start(one_server_in(mode)).await;
    within(60, "extended COPY", async {
        let (direct, table) = copy_table("copy_ext").await;
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
                if let Some(held) = server_held(&proxy, 3).await {
                    results[1].push(held);
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

/// An error during a COPY FROM STDIN started over the extended protocol; the client ends its
/// copy (CopyDone) and syncs after it saw the error, which the server skips up to the Sync.
/// What follows (a failing segment, normal ones, a ROLLBACK inside a block) is answered as by
/// Postgres, and in transaction mode the server is given back.
async fn copy_error_then(mode: PoolMode, in_tx: bool) {
    let mut config = one_server_in(mode);
    config.databases[0].query_wait_timeout = 5.0;
    let proxy = TestProxy::start(config).await;
    within(90, "extended COPY error", async {
        let (direct, table) = copy_table("copy_err").await;
        let mut results = Vec::new();
        for (through_proxy, mut conn) in
            [(false, raw_direct().await), (true, raw_proxy(&proxy).await)]
        {
            let mut seen = Vec::new();
            let step =
                |seen: &mut Vec<String>, r: anyhow::Result<Vec<wire::BackendMessage>>| match r {
                    Ok(m) => seen.extend(pipeline::summarize(&m)),
                    Err(e) => seen.push(format!("FAILED: {e:#}")),
                };
            if in_tx {
                let r = pipeline::round_trip(&mut conn, &pipeline::query("BEGIN"), 1).await;
                step(&mut seen, r);
            }
            conn.send(
                &[
                    parse("", &format!("COPY {table} FROM STDIN"), &[]),
                    bind("", "", &[], &[]),
                    execute("", 0),
                    sync(),
                ]
                .concat(),
            )
            .await
            .unwrap();
            seen.extend(read_until_tag(&mut conn, b'G').await);
            let mut data = vec![b'd'];
            data.extend_from_slice(&(4 + 2i32).to_be_bytes());
            data.extend_from_slice(b"x\n");
            conn.send(&data).await.unwrap();
            seen.extend(read_until_tag(&mut conn, b'E').await);
            // The client ends its copy (CopyDone) and syncs, after it saw the error.
            let r = pipeline::round_trip(&mut conn, &[vec![b'c', 0, 0, 0, 4], sync()].concat(), 1)
                .await;
            step(&mut seen, r);
            if in_tx {
                // ROLLBACK through the extended protocol.
                let r =
                    pipeline::round_trip(&mut conn, &pipeline::simple_extended("ROLLBACK", &[]), 1)
                        .await;
                step(&mut seen, r);
            }
            // A segment that fails, Sync sent along.
            let r =
                pipeline::round_trip(&mut conn, &pipeline::simple_extended("SELECT 1/0", &[]), 1)
                    .await;
            step(&mut seen, r);
            // Then a normal one.
            let r = pipeline::round_trip(&mut conn, &pipeline::simple_extended("SELECT 7", &[]), 1)
                .await;
            step(&mut seen, r);
            let r = pipeline::round_trip(&mut conn, &pipeline::simple_extended("SELECT 8", &[]), 1)
                .await;
            step(&mut seen, r);
            if through_proxy && mode == PoolMode::Transaction {
                seen.extend(server_held(&proxy, 8).await);
            }
            results.push(seen);
            drop(conn);
        }
        direct
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
        assert_eq!(results[1], results[0], "proxy vs postgres");
    })
    .await;
}

#[tokio::test]
async fn extended_copy_error_then_more_session_mode() {
    copy_error_then(PoolMode::Session, false).await;
}

#[tokio::test]
async fn extended_copy_error_then_more_transaction_mode() {
    copy_error_then(PoolMode::Transaction, false).await;
}

#[tokio::test]
async fn extended_copy_error_then_more_inside_a_transaction_block() {
    copy_error_then(PoolMode::Transaction, true).await;
}

/// A simple query sent where the server expects CopyData (pipelined behind `COPY … FROM STDIN`):
/// Postgres fails the COPY with 08P01, reports that protocol synchronization was lost and
/// closes the connection. Through the proxy the client sees the same, and the server's
/// replacement serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_in_place_of_copy_data_ends_the_session_as_on_postgres() {
    let (_su, table) = copy_table("copy_q").await;
    let batch = [
        pipeline::query(&format!("COPY {table} FROM STDIN")),
        pipeline::query("SELECT 1"),
    ]
    .concat();
    let want = until_closed(&mut raw_direct().await, &batch).await;
    assert!(want.contains("connection closed"), "{want}");
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let mut config = transaction_mode(1);
        config.databases[0].pool_mode = mode;
        let proxy = TestProxy::start(config).await;
        let got = until_closed(&mut raw_proxy(&proxy).await, &batch).await;
        assert!(
            got.contains("CopyIn") && got.contains("08P01"),
            "{mode:?}: {got}"
        );
        assert_server_given_back(&proxy).await;
    }
}

/// What a connection answers to `batch`, up to one ReadyForQuery or its end.
async fn until_closed(c: &mut RawConn, batch: &[u8]) -> String {
    let replies = pipeline::round_trip(c, batch, 1).await;
    format!("{:?}", replies.map(|m| pipeline::summarize(&m)))
}
