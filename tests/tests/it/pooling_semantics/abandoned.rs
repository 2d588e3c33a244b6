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
        // Wait for CopyInResponse, so that the proxy has seen the COPY start.
        let mut started = false;
        for _ in 0..10 {
            let m = a.read_message().await.unwrap().expect("a message");
            if m.tag == b'G' {
                started = true;
                break;
            }
        }
        assert!(started, "no CopyInResponse");
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
