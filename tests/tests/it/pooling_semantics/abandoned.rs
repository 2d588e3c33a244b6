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
