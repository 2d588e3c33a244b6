//! Cancel requests and departed clients racing with the pool in transaction mode: a cancel
//! only ever cancels its sender's query, and a client that is gone (or idle) holds no server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::pipeline;
use tenantgate_tests::proxy::*;
use tenantgate_tests::wire::{self, BackendMessage, RawConn};
use tenantgate_tests::{unique_name, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{Client, NoTls};

use crate::pooling_semantics::transaction_mode;

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

async fn read_until_tag(conn: &mut RawConn, tag: u8) -> Vec<BackendMessage> {
    let mut out = Vec::new();
    loop {
        let m = conn.read_message().await.unwrap().unwrap_or_else(|| {
            panic!(
                "EOF before {:?}: {:?}",
                tag as char,
                pipeline::summarize(&out)
            )
        });
        let done = m.tag == tag;
        out.push(m);
        if done {
            return out;
        }
    }
}

fn copy_data(bytes: &[u8]) -> Vec<u8> {
    let mut d = vec![b'd'];
    d.extend_from_slice(&(bytes.len() as i32 + 4).to_be_bytes());
    d.extend_from_slice(bytes);
    d
}

const COPY_DONE: [u8; 5] = [b'c', 0, 0, 0, 4];

async fn send_cancel(addr: SocketAddr, (pid, secret): (i32, i32)) {
    let mut c = RawConn::connect(addr).await.unwrap();
    let mut payload = Vec::new();
    payload.extend_from_slice(&pid.to_be_bytes());
    payload.extend_from_slice(&secret.to_be_bytes());
    c.send(&wire::startup_packet(wire::CANCEL_REQUEST_CODE, &payload))
        .await
        .unwrap();
    c.expect_close(20).await.unwrap();
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

/// A transaction-mode proxy with `pool_size` servers, reaching Postgres through a
/// [`delaying_forwarder`] that holds cancels for `delay`.
async fn proxy_delaying_cancels(pool_size: usize, delay: Duration) -> TestProxy {
    let fwd = delaying_forwarder(delay).await;
    let mut config = transaction_mode(pool_size);
    for db in &mut config.databases {
        db.host = fwd.ip().to_string();
        db.port = fwd.port();
    }
    TestProxy::start(config).await
}

/// A cancels its query; the query finishes while the cancel is still on its way to Postgres.
/// The server must not go to B before that cancel is done, or it kills B's query: a cancel only
/// ever cancels the sender's own query (PgBouncer ≥ 1.19 keeps a server with a cancel in flight
/// out of the pool until the cancel connection has finished).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_cancel_never_reaches_the_next_client() {
    let proxy = proxy_delaying_cancels(1, Duration::from_millis(1500)).await;
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

/// The server with A's cancel in flight waits out of the pool until the cancel is done (above);
/// A itself must not wait with it: its next transaction takes another server at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_cancel_is_in_flight_goes_on_with_another_server() {
    let held = Duration::from_secs(3);
    let proxy = proxy_delaying_cancels(2, held).await;
    within(40, "cancel in flight", async {
        let a = proxy.connect_service().await;
        a.simple_query("SELECT 1").await.unwrap();
        let token = a.cancel_token();
        let query = a.simple_query("SELECT pg_sleep(0.5)");
        let cancel = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            token.cancel_query(NoTls).await
        });
        // Cancelled or not (the cancel is held past the sleep's end): what matters is next.
        let _ = query.await;
        let started = Instant::now();
        a.simple_query("SELECT 1").await.unwrap();
        let waited = started.elapsed();
        let _ = cancel.await;
        assert!(
            waited < held / 2,
            "A's next query waited {waited:?} for its own cancel to reach the old server"
        );
    })
    .await;
}

/// An error ends a COPY FROM STDIN (a cancel, or a bad row) while the client is still
/// streaming; the server answers ErrorResponse + ReadyForQuery 'I' and the proxy gives it back.
/// The client then ends its copy (more CopyData, then CopyDone, as libpq and tokio-postgres
/// do), which Postgres ignores outside COPY. The proxy must drop those messages without
/// checking out a server for them: one would never be answered, so nothing would release the
/// server, and an idle client would pin it while every other client waits (53300).
async fn stray_copy_done_after_a_failed_copy(by_cancel: bool) {
    let mut config = transaction_mode(1);
    config.databases[0].query_wait_timeout = 3.0;
    let proxy = TestProxy::start(config).await;
    let table = unique_name("rev_copy");
    let direct = direct_client().await;
    direct
        .batch_execute(&format!("CREATE TABLE {table} (id int)"))
        .await
        .unwrap();
    within(60, "stray CopyDone", async {
        let (mut a, key) = raw_proxy(&proxy).await;
        a.send(&pipeline::query(&format!("COPY {table} FROM STDIN")))
            .await
            .unwrap();
        read_until_tag(&mut a, b'G').await;
        if by_cancel {
            a.send(&copy_data(b"1\n")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            send_cancel(proxy.addr, key).await;
            // Postgres acts on a cancel in COPY FROM STDIN when the next data arrives.
            tokio::time::sleep(Duration::from_millis(200)).await;
            a.send(&copy_data(b"2\n")).await.unwrap();
        } else {
            a.send(&copy_data(b"not a number\n")).await.unwrap();
        }
        let replies = read_until_tag(&mut a, b'Z').await;
        let s = pipeline::summarize(&replies);
        assert!(s.iter().any(|m| m.starts_with("Error")), "{s:?}");
        // The client had more rows on the way, then ends its copy.
        a.send(&[copy_data(b"2\n"), COPY_DONE.to_vec()].concat())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A is idle: no transaction, nothing in flight. B must get the one server.
        let (mut b, _) = raw_proxy(&proxy).await;
        let r = pipeline::round_trip(&mut b, &pipeline::query("SELECT 1"), 1).await;
        match r {
            Ok(m) => assert!(
                pipeline::first_error(&m).is_none(),
                "{:?}",
                pipeline::summarize(&m)
            ),
            Err(e) => panic!("B got no server while A sat idle after its COPY: {e:#}"),
        }
        // A still works.
        let r = pipeline::round_trip(&mut a, &pipeline::query("SELECT 2"), 1)
            .await
            .unwrap();
        assert!(pipeline::first_error(&r).is_none());
    })
    .await;
    direct
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn copy_done_after_a_cancelled_copy_pins_no_server() {
    stray_copy_done_after_a_failed_copy(true).await;
}

#[tokio::test]
async fn copy_done_after_a_failed_copy_pins_no_server() {
    stray_copy_done_after_a_failed_copy(false).await;
}

/// A client leaves while its query runs. The proxy must cancel the query on the server's own
/// backend, not merely close the server after its settle timeout: Postgres only notices a
/// closed socket when it writes, so the query would keep running, pool_size would no longer
/// bound the backends, and clients could pile up long-running orphans (max_connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_query_is_cancelled_on_postgres() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
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

/// A client sends a query and disconnects while it waits in the pool queue. It must leave the
/// queue: otherwise it later takes a server, runs the query for nobody and holds the server
/// through it, while live clients queued behind it wait for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_from_the_queue_takes_no_server() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "ghost in the queue", async {
        let h = proxy.connect_service().await;
        h.batch_execute("BEGIN").await.unwrap();
        h.simple_query("SELECT 1").await.unwrap();
        let (mut ghost, _) = raw_proxy(&proxy).await;
        ghost
            .send(&pipeline::query("SELECT pg_sleep(3)"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(ghost);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let c = proxy.connect_service().await;
        let c_query = tokio::spawn(async move {
            let started = Instant::now();
            let r = c.simple_query("SELECT 1").await.map(|_| ());
            (r, started)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let released = Instant::now();
        h.batch_execute("COMMIT").await.unwrap();
        let (r, _) = c_query.await.unwrap();
        r.unwrap();
        let waited = released.elapsed();
        assert!(
            waited < Duration::from_secs(1),
            "C waited {waited:?} after the server was released: a departed client's pg_sleep(3) \
             ran first"
        );
    })
    .await;
}
