//! Graceful shutdown: `run` returns once the token is cancelled and sessions are drained.

use std::time::{Duration, Instant};
use tenantgate_tests::pg::PgServer;
use tenantgate_tests::proxy::*;
use tenantgate_tests::within;

#[tokio::test]
async fn shutdown_with_idle_clients_returns_promptly_and_stops_accepting() {
    let mut config = base_config(PgServer::shared());
    config.proxy.shutdown_timeout = 2.0;
    let proxy = TestProxy::start(config).await;
    let addr = proxy.addr;
    within(30, "shutdown", async {
        let client = proxy.connect_acme().await;
        client.simple_query("SELECT 1").await.unwrap();
        let started = Instant::now();
        proxy.shutdown().await.expect("run returned an error");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "shutdown took {:?} with shutdown_timeout = 2",
            started.elapsed()
        );
        assert!(client.simple_query("SELECT 1").await.is_err());
        // Nothing accepts on the port any more (refused, or closed without a greeting).
        if let Ok(mut raw) = tenantgate_tests::wire::RawConn::connect(addr).await {
            let r = raw.startup(ACME_USER, "app", Some(ACME_PASSWORD)).await;
            assert!(r.is_err(), "a client was served after shutdown");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_running_query_finish() {
    let mut config = base_config(PgServer::shared());
    config.proxy.shutdown_timeout = 10.0;
    let proxy = TestProxy::start(config).await;
    within(30, "drain", async {
        let client = proxy.connect_service().await;
        let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(1)").await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        proxy.shutdown().await.expect("run returned an error");
        let stopped = started.elapsed();
        query
            .await
            .unwrap()
            .expect("an in-flight query was cut off by a graceful shutdown");
        assert!(stopped < Duration::from_secs(9), "drain took {stopped:?}");
    })
    .await;
}
