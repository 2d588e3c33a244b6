//! Postgres restarting under the proxy: connected clients get an error, not a hang, and new
//! clients work once the server is back. Uses a private server so other tests are undisturbed.

use std::sync::Arc;
use std::time::Duration;
use tenantgate_tests::pg::PgServer;
use tenantgate_tests::proxy::*;
use tenantgate_tests::within;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_session() {
    let pg = Arc::new(
        tokio::task::spawn_blocking(PgServer::start_private)
            .await
            .unwrap()
            .expect("private postgres"),
    );
    let proxy = TestProxy::start(base_config(&pg)).await;
    within(120, "restart", async {
        let client = proxy.connect_service().await;
        client.simple_query("SELECT 1").await.unwrap();
        let acme = proxy.connect_acme().await;
        acme.simple_query("SELECT 1").await.unwrap();

        let restarting = pg.clone();
        tokio::task::spawn_blocking(move || restarting.restart())
            .await
            .unwrap()
            .expect("restarting postgres");

        // The sessions' server connections were terminated: an error, within seconds.
        for c in [&client, &acme] {
            let result = tokio::time::timeout(Duration::from_secs(10), c.simple_query("SELECT 1"))
                .await
                .expect("query on a session whose server restarted hung");
            assert!(
                result.is_err(),
                "query succeeded on a server connection that was terminated"
            );
        }

        // New clients work after the restart.
        let fresh = proxy.connect_service().await;
        let msgs = fresh.simple_query("SELECT 1").await.unwrap();
        assert!(msgs
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
        let fresh_acme = proxy.connect_acme().await;
        fresh_acme.simple_query("SELECT 1").await.unwrap();
    })
    .await;
    drop(proxy);
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_gives_an_error_not_a_hang() {
    let pg = Arc::new(
        tokio::task::spawn_blocking(PgServer::start_private)
            .await
            .unwrap()
            .expect("private postgres"),
    );
    let proxy = TestProxy::start(base_config(&pg)).await;
    within(90, "server down", async {
        let stopping = pg.clone();
        tokio::task::spawn_blocking(move || stopping.stop_keep_data())
            .await
            .unwrap()
            .unwrap();
        let result = async {
            let c = proxy
                .connect(SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, "app")
                .await?;
            c.simple_query("SELECT 1").await
        };
        let result = tokio::time::timeout(Duration::from_secs(20), result)
            .await
            .expect("client hung while postgres was down");
        assert!(result.is_err(), "query succeeded with postgres down");

        let starting = pg.clone();
        tokio::task::spawn_blocking(move || starting.start_again())
            .await
            .unwrap()
            .unwrap();
        let c = proxy.connect_service().await;
        c.simple_query("SELECT 1").await.unwrap();
    })
    .await;
    drop(proxy);
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}
