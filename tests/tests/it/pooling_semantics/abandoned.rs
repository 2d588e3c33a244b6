//! Clients that leave with messages still in flight: the server must come back clean and
//! without delay.

use super::*;
use tenantgate_tests::wire::BackendMessage;

/// The backend pid in the reply to `SELECT pg_backend_pid()`.
fn backend(replies: &[BackendMessage]) -> String {
    pipeline::summarize(replies)
        .into_iter()
        .find(|m| m.starts_with("Row["))
        .expect("a row with the backend pid")
}

/// Reads until CopyInResponse (within ten messages), so that the proxy has seen the COPY start.
async fn wait_copy_in(a: &mut RawConn) {
    for _ in 0..10 {
        let m = a.read_message().await.unwrap().expect("a message");
        if m.tag == b'G' {
            return;
        }
    }
    panic!("no CopyInResponse");
}

/// A client that sends `[failing Execute, Query, Sync]` and leaves at once: the server skips the
/// Query, so no ReadyForQuery comes for it. The cleanup must count that and give the server
/// back, not wait for that reply, time out and close the server.
#[tokio::test]
async fn a_client_leaving_behind_a_skipped_query_does_not_cost_the_server() {
    let proxy = TestProxy::start(one_server_waiting(30.0)).await;
    within(60, "client leaving behind a skipped query", async {
        let pid = pipeline::query("SELECT pg_backend_pid()");
        let mut a = raw_proxy(&proxy).await;
        let before = backend(&pipeline::round_trip(&mut a, &pid, 1).await.unwrap());
        let batch = [
            parse("", "SELECT 1/0", &[]),
            bind("", "", &[], &[]),
            execute("", 0),
            pipeline::query("SELECT 5"),
            sync(),
        ]
        .concat();
        a.send(&batch).await.unwrap();
        drop(a);
        let mut b = raw_proxy(&proxy).await;
        let after = backend(&pipeline::round_trip(&mut b, &pid, 1).await.unwrap());
        assert_eq!(after, before, "the server was closed instead of given back");
    })
    .await;
}

/// A client that starts an extended-protocol COPY FROM STDIN (`P B E S`, the Sync ignored by
/// the server in copy-in mode) and leaves: the cleanup aborts the COPY, syncs, and gives the
/// server back instead of waiting for the ignored Sync's ReadyForQuery and closing the server.
#[tokio::test]
async fn a_client_leaving_inside_an_extended_copy_does_not_cost_the_server() {
    let proxy = TestProxy::start(one_server_waiting(30.0)).await;
    let (direct, table) = super::copy_listen_discard::copy_table("copy_gone").await;
    within(60, "client leaving inside an extended COPY", async {
        let pid = pipeline::query("SELECT pg_backend_pid()");
        let mut a = raw_proxy(&proxy).await;
        let before = backend(&pipeline::round_trip(&mut a, &pid, 1).await.unwrap());
        let batch = [
            parse("", &format!("COPY {table} FROM STDIN"), &[]),
            bind("", "", &[], &[]),
            execute("", 0),
            sync(),
        ]
        .concat();
        a.send(&batch).await.unwrap();
        wait_copy_in(&mut a).await;
        drop(a);
        let mut b = raw_proxy(&proxy).await;
        let after = backend(&pipeline::round_trip(&mut b, &pid, 1).await.unwrap());
        assert_eq!(after, before, "the server was closed instead of given back");
    })
    .await;
    direct
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// Shutdown: B's INSERT waits in the pool queue behind H (idle in a transaction). At
/// `shutdown_timeout` H is terminated and its server, rolled back, may go to B, which is told
/// `57P01 terminating connection` at once. The INSERT must not be sent after that: a client
/// told its session ended before its statement completed relies on it not having run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_not_sent_before_shutdown_does_not_run_after_57p01() {
    let mut config = transaction_mode(1);
    config.proxy.shutdown_timeout = 1.0;
    let proxy = TestProxy::start(config).await;
    let table = unique_name("shutdown_insert");
    let direct = direct_client(pg::APP_DB).await;
    direct
        .batch_execute(&format!("CREATE TABLE {table} (id int)"))
        .await
        .unwrap();
    within(60, "shutdown with a queued insert", async {
        let h = proxy.connect_service().await;
        h.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let mut b = raw_proxy(&proxy).await;
        b.send(&pipeline::query(&format!("INSERT INTO {table} VALUES (1)")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let shut = tokio::spawn(proxy.shutdown());
        let mut seen = Vec::new();
        while let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_secs(20), b.read_message()).await
        {
            seen.push(m);
        }
        let told = pipeline::summarize(&seen);
        let _ = shut.await;
        drop(h);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n: i64 = direct
            .query_one(&format!("SELECT count(*)::int8 FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        if !told.iter().any(|m| m.starts_with("Complete")) {
            assert_eq!(n, 0, "B was told {told:?} but its INSERT was committed");
        }
    })
    .await;
    direct
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// One server, `idle_transaction_timeout = 1`.
async fn one_server_idle_timeout() -> TestProxy {
    let mut config = one_server_waiting(30.0);
    config.databases[0].idle_transaction_timeout = 1.0;
    TestProxy::start(config).await
}

/// A client that sends extended-protocol messages without a Sync (or Flush) and then idles
/// holds its server in an implicit transaction: with `idle_transaction_timeout` it is
/// disconnected with 25P03 like a client idle inside BEGIN, its work rolled back, and the
/// server serves the next client; otherwise `pool_size` such clients would starve the pool.
/// A client whose Flush is answered and which then idles is disconnected as well; one still
/// waiting for the replies to its Flush is not.
#[tokio::test]
async fn a_client_idle_in_an_unsynced_batch_is_timed_out() {
    let proxy = one_server_idle_timeout().await;
    within(60, "idle in an unsynced batch", async {
        let pid = pipeline::query("SELECT pg_backend_pid()");
        for (label, batch) in [
            (
                "no Sync",
                vec![
                    parse("", "SELECT 1", &[]),
                    bind("", "", &[], &[]),
                    execute("", 0),
                ],
            ),
            (
                "answered Flush",
                vec![
                    parse("", "SELECT 1", &[]),
                    bind("", "", &[], &[]),
                    execute("", 0),
                    pipeline::flush(),
                ],
            ),
            (
                "Flush of a query still running",
                vec![
                    parse("", "SELECT pg_sleep(1.5)", &[]),
                    bind("", "", &[], &[]),
                    execute("", 0),
                    pipeline::flush(),
                ],
            ),
        ] {
            let mut a = raw_proxy(&proxy).await;
            let before = backend(&pipeline::round_trip(&mut a, &pid, 1).await.unwrap());
            a.send(&batch.concat()).await.unwrap();
            let started = std::time::Instant::now();
            match a.expect_refusal(10).await.unwrap() {
                wire::Refusal::Error(f) => {
                    assert_eq!(
                        f.get(&b'C').map(String::as_str),
                        Some("25P03"),
                        "{label}: {f:?}"
                    )
                }
                wire::Refusal::Closed => panic!("{label}: closed without an ErrorResponse"),
            }
            let waited = started.elapsed();
            let least = if label.contains("running") { 2300 } else { 800 };
            assert!(
                waited >= Duration::from_millis(least) && waited < Duration::from_secs(6),
                "{label}: disconnected after {waited:?}"
            );
            let mut b = raw_proxy(&proxy).await;
            let after = backend(&pipeline::round_trip(&mut b, &pid, 1).await.unwrap());
            assert_eq!(
                after, before,
                "{label}: the server was closed instead of given back"
            );
        }
    })
    .await;
}

/// A simple Query behind extended-protocol messages without a Sync ends their implicit
/// transaction: once it is answered the server is at rest, and goes back to the pool instead
/// of staying with the client until it sends a Sync.
#[tokio::test]
async fn a_query_that_ends_an_unsynced_batch_releases_the_server() {
    let proxy = TestProxy::start(one_server_waiting(30.0)).await;
    within(60, "query ending an unsynced batch", async {
        let mut a = raw_proxy(&proxy).await;
        let batch = [
            parse("", "SELECT 1", &[]),
            bind("", "", &[], &[]),
            execute("", 0),
            pipeline::query("SELECT 2"),
        ]
        .concat();
        let replies = pipeline::round_trip(&mut a, &batch, 1).await.unwrap();
        assert_eq!(
            pipeline::summarize(&replies).last().map(String::as_str),
            Some("Ready I")
        );
        let mut b = raw_proxy(&proxy).await;
        let pid = pipeline::query("SELECT pg_backend_pid()");
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            pipeline::round_trip(&mut b, &pid, 1),
        )
        .await;
        assert!(served.is_ok(), "the next client waited for a server");
        // The first client goes on as usual.
        let replies = pipeline::round_trip(&mut a, &pid, 1).await.unwrap();
        assert_eq!(
            pipeline::summarize(&replies).last().map(String::as_str),
            Some("Ready I")
        );
    })
    .await;
}

/// A pipelining client (libpq's `PQsendFlushRequest`) flushes an Execute and queues more
/// messages behind it before it reads the Execute's rows: it waits for replies it is owed, so
/// `idle_transaction_timeout` must not fire while that Execute is still running.
#[tokio::test]
async fn a_client_waiting_for_a_flushed_execute_behind_more_messages_is_not_timed_out() {
    let proxy = one_server_idle_timeout().await;
    within(60, "flushed Execute behind more messages", async {
        let mut a = raw_proxy(&proxy).await;
        let batch = [
            parse("", "SELECT pg_sleep(2)", &[]),
            bind("", "", &[], &[]),
            execute("", 0),
            pipeline::flush(),
            parse("", "SELECT 2", &[]),
            bind("", "", &[], &[]),
            execute("", 0),
        ]
        .concat();
        a.send(&batch).await.unwrap();
        let mut seen = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), a.read_message())
                .await
                .expect("the flushed Execute's replies")
                .unwrap()
                .expect("a message");
            let complete = m.tag == b'C';
            seen.push(m);
            if complete || seen.last().is_some_and(|m| m.tag == b'E') {
                break;
            }
        }
        let told = pipeline::summarize(&seen);
        assert!(
            pipeline::first_error(&seen).is_none(),
            "disconnected while waiting for its flushed Execute: {told:?}"
        );
    })
    .await;
}

/// Session mode: after a session command the proxy answers itself (`DISCARD ALL` of a tenant
/// user), a Query followed by extended-protocol messages without a Sync. The Query's
/// ReadyForQuery does not end the implicit transaction of the messages sent after it: a drain
/// waits for their Sync instead of ending the session in the middle of that transaction.
#[tokio::test]
async fn session_mode_unsynced_messages_after_a_query_are_not_at_rest() {
    let mut config = base_config(PgServer::shared());
    config.proxy.shutdown_timeout = 10.0;
    let proxy = TestProxy::start(config).await;
    within(60, "unsynced messages after a query, session mode", async {
        let mut a = RawConn::connect(proxy.addr).await.unwrap();
        a.startup(ACME_USER, pg::APP_DB, Some(ACME_PASSWORD))
            .await
            .unwrap();
        let replies = pipeline::round_trip(&mut a, &pipeline::query("DISCARD ALL"), 1)
            .await
            .unwrap();
        assert!(pipeline::first_error(&replies).is_none(), "{replies:?}");
        let batch = [
            pipeline::query("SELECT 1"),
            parse("", "SELECT 2", &[]),
            bind("", "", &[], &[]),
            execute("", 0),
        ]
        .concat();
        let replies = pipeline::round_trip(&mut a, &batch, 1).await.unwrap();
        assert!(pipeline::first_error(&replies).is_none(), "{replies:?}");
        let shut = tokio::spawn(proxy.shutdown());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let replies = pipeline::round_trip(&mut a, &sync(), 1).await;
        let told = replies.map(|r| pipeline::summarize(&r));
        assert!(
            told.as_ref()
                .is_ok_and(|t| t.iter().any(|m| m == "Complete SELECT 1")),
            "the drain ended the session inside the client's batch: {told:?}"
        );
        drop(a);
        let _ = shut.await;
    })
    .await;
}

/// Transaction mode: a COPY FROM STDIN as a simple Query after extended-protocol messages
/// without a Sync. The Query ends their implicit transaction, CopyData included: at its
/// ReadyForQuery the server goes back to the pool, and the client is not timed out as idle.
#[tokio::test]
async fn a_copy_query_that_ends_an_unsynced_batch_releases_the_server() {
    let proxy = one_server_idle_timeout().await;
    let (direct, table) = super::copy_listen_discard::copy_table("copy_unsynced").await;
    within(60, "COPY query ending an unsynced batch", async {
        let mut a = raw_proxy(&proxy).await;
        let batch = [
            parse("", "SELECT 1", &[]),
            bind("", "", &[], &[]),
            execute("", 0),
            pipeline::query(&format!("COPY {table} FROM STDIN")),
        ]
        .concat();
        a.send(&batch).await.unwrap();
        wait_copy_in(&mut a).await;
        let mut data = Vec::new();
        for (tag, body) in [(b'd', &b"1\n"[..]), (b'c', &b""[..])] {
            data.push(tag);
            data.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            data.extend_from_slice(body);
        }
        let replies = pipeline::round_trip(&mut a, &data, 1).await.unwrap();
        assert_eq!(
            pipeline::summarize(&replies).last().map(String::as_str),
            Some("Ready I")
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pid = pipeline::query("SELECT pg_backend_pid()");
        let mut b = raw_proxy(&proxy).await;
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            pipeline::round_trip(&mut b, &pid, 1),
        )
        .await;
        assert!(served.is_ok(), "the next client waited for a server");
        let replies = pipeline::round_trip(&mut a, &pid, 1).await;
        assert!(replies.is_ok(), "the client was disconnected: {replies:?}");
    })
    .await;
    direct
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}
