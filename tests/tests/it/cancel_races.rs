//! Cancel requests and departed clients racing with the pool in transaction mode: a cancel
//! only ever cancels its sender's query, and a client that is gone (or idle) holds no server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tenantgate_config::{Config, PoolMode};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::pipeline;
use tenantgate_tests::proxy::*;
use tenantgate_tests::wire::{self, RawConn};
use tenantgate_tests::{unique_name, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{Client, NoTls};

/// Transaction pooling on database `app` with `pool_size` servers.
fn tx_config(pool_size: usize) -> Config {
    let mut config = base_config(PgServer::shared());
    for db in &mut config.databases {
        db.pool_mode = PoolMode::Transaction;
        db.pool_size = pool_size;
        db.query_wait_timeout = 20.0;
    }
    config
}

async fn raw_proxy(proxy: &TestProxy) -> (RawConn, (i32, i32)) {
    let mut c = RawConn::connect(proxy.addr).await.unwrap();
    let info = c
        .startup(SERVICE_CLIENT, pg::APP_DB, Some(SERVICE_CLIENT_PASSWORD))
        .await
        .unwrap();
    (c, info.backend_key.expect("BackendKeyData"))
}

async fn direct_client() -> Client {
    let pg = PgServer::shared();
    connect(&pg.tcp_config(pg::SERVICE_USER, pg::SERVICE_PASSWORD, pg::APP_DB))
        .await
        .unwrap()
}

/// A TCP forwarder to the shared Postgres that holds each CancelRequest for `delay` before
/// passing it on: the time a cancel spends between the proxy and Postgres (TCP handshake, the
/// postmaster's fork for the cancel connection, network latency) made long enough to be
/// deterministic. Every other connection is relayed at once.
async fn delaying_forwarder(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pg = PgServer::shared();
    let target = format!("{}:{}", pg.host(), pg.port());
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let target = target.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if inbound.read_exact(&mut head).await.is_err() {
                    return;
                }
                let code = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                if code == wire::CANCEL_REQUEST_CODE {
                    tokio::time::sleep(delay).await;
                }
                let Ok(mut outbound) = TcpStream::connect(&target).await else {
                    return;
                };
                if outbound.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    addr
}

/// A cancels its query; the query finishes while the cancel is still on its way to Postgres.
/// The server must not go to B before that cancel is done, or it kills B's query: a cancel only
/// ever cancels the sender's own query (PgBouncer ≥ 1.19 keeps a server with a cancel in flight
/// out of the pool until the cancel connection has finished).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_cancel_never_reaches_the_next_client() {
    let fwd = delaying_forwarder(Duration::from_millis(1500)).await;
    let mut config = tx_config(1);
    for db in &mut config.databases {
        db.host = fwd.ip().to_string();
        db.port = fwd.port();
    }
    let proxy = TestProxy::start(config).await;
    within(40, "in-flight cancel", async {
        let a = proxy.connect_service().await;
        let b = proxy.connect_service().await;
        a.simple_query("SELECT 1").await.unwrap();
        let token = a.cancel_token();
        let a_query = tokio::spawn(async move {
            let r = a.simple_query("SELECT pg_sleep(1)").await;
            (r, a)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A gives up (a client-side timeout: Go contexts, JDBC setQueryTimeout, Ctrl-C ...).
        let cancel = tokio::spawn(async move { token.cancel_query(NoTls).await });
        let (ra, _a) = a_query.await.unwrap();
        // Either outcome is fine for A; what matters is B.
        let _ = ra;
        let started = Instant::now();
        let rb = b.simple_query("SELECT pg_sleep(2)").await;
        let _ = cancel.await;
        assert!(
            rb.is_ok(),
            "B's query was cancelled by A's cancel request after {:?}: {:?}",
            started.elapsed(),
            rb.err().map(|e| format!("{:?} {e}", sqlstate(&e)))
        );
    })
    .await;
}

/// A client leaves while its query runs. The proxy must cancel the query on the server's own
/// backend, not merely close the server after its settle timeout: Postgres only notices a
/// closed socket when it writes, so the query would keep running, pool_size would no longer
/// bound the backends, and clients could pile up long-running orphans (max_connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_query_is_cancelled_on_postgres() {
    let proxy = TestProxy::start(tx_config(1)).await;
    within(60, "abandoned long query", async {
        let marker = unique_name("orphan");
        let sql = format!("SELECT pg_sleep(60) /* {marker} */");
        let (mut a, _) = raw_proxy(&proxy).await;
        a.send(&pipeline::query(&sql)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(a);
        // The next client gets the server once the cancelled query has answered.
        let b = proxy.connect_service().await;
        let started = Instant::now();
        b.simple_query("SELECT 1").await.unwrap();
        let waited = started.elapsed();
        let direct = direct_client().await;
        let orphans: i64 = direct
            .query_one(
                "SELECT count(*)::int8 FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[&sql],
            )
            .await
            .unwrap()
            .get(0);
        let backends: i64 = direct
            .query_one(
                "SELECT count(*)::int8 FROM pg_stat_activity WHERE usename = $1 \
                 AND datname = 'app' AND pid <> pg_backend_pid()",
                &[&pg::SERVICE_USER],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            orphans, 0,
            "the abandoned pg_sleep(60) still runs on Postgres after the proxy dropped its \
             server (B waited {waited:?}; {backends} backends of the proxy's role with pool_size 1)"
        );
    })
    .await;
}
