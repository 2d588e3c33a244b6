//! Clients that leave with messages still in flight: the server must come back clean and
//! without delay.

use super::*;
use tenantgate_tests::wire::BackendMessage;

/// A client that sends `[failing Execute, Query, Sync]` and leaves at once: the server skips the
/// Query, so no ReadyForQuery comes for it. The cleanup must count that and give the server
/// back, not wait for that reply, time out and close the server.
#[tokio::test]
async fn a_client_leaving_behind_a_skipped_query_does_not_cost_the_server() {
    let proxy = TestProxy::start(one_server_waiting(30.0)).await;
    let backend = |replies: &[BackendMessage]| {
        pipeline::summarize(replies)
            .into_iter()
            .find(|m| m.starts_with("Row["))
            .expect("a row with the backend pid")
    };
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
