//! Malformed input over a raw socket: every case ends in an ErrorResponse or a close within a
//! timeout, never a hang, and the proxy keeps serving normal clients afterwards.

use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::Duration;
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::*;
use tenantgate_tests::wire::{self, RawConn, Refusal};
use tenantgate_tests::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a case does after connecting.
enum Then {
    /// Keep the socket open and wait for the proxy's answer.
    Wait,
    /// Half-close (FIN) after sending: the proxy sees EOF in the middle of a frame.
    ShutdownWrite,
    /// Drop the socket right after sending.
    Drop,
}

/// Sends `bytes` (from a separate task, so a proxy that stops reading cannot block the test) and
/// waits for an ErrorResponse or a close.
async fn send_and_expect_refusal(addr: SocketAddr, bytes: Vec<u8>, then: Then, what: &str) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let dropped = matches!(then, Then::Drop);
    let writer = tokio::spawn(async move {
        // The proxy may close before reading everything: a write error is fine.
        let _ = wr.write_all(&bytes).await;
        let _ = wr.flush().await;
        match then {
            Then::ShutdownWrite => {
                let _ = wr.shutdown().await;
                Some(wr)
            }
            Then::Drop => None,
            Then::Wait => Some(wr),
        }
    });
    if dropped {
        let _ = writer.await;
        drop(rd);
        return;
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let _keep_writer_alive = writer.await;
    assert!(
        read.is_ok(),
        "{what}: proxy neither answered nor closed within 10s (got {} bytes: {:?})",
        got.len(),
        &got[..got.len().min(64)]
    );
    if let Some(&first) = got.first() {
        assert_eq!(
            first,
            b'E',
            "{what}: expected ErrorResponse or close, got {:?}",
            &got[..got.len().min(64)]
        );
    }
}

pub(crate) async fn assert_proxy_still_works(proxy: &TestProxy, after: &str) {
    let client = proxy
        .connect(ACME_USER, ACME_PASSWORD, pg::APP_DB)
        .await
        .unwrap_or_else(|e| panic!("after {after}: a normal client cannot connect: {e:?}"));
    client
        .simple_query("SELECT 1")
        .await
        .unwrap_or_else(|e| panic!("after {after}: a normal query fails: {e:?}"));
}

fn header(len: i32, code: i32) -> Vec<u8> {
    let mut b = len.to_be_bytes().to_vec();
    b.extend_from_slice(&code.to_be_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets_are_refused() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7e4a);
    let garbage: Vec<u8> = (0..1000).map(|_| rng.gen()).collect();
    let user_db = wire::startup_params(&[("user", ACME_USER), ("database", pg::APP_DB)]);
    let mut two_gib = header(i32::MAX, wire::PROTOCOL_3_0);
    two_gib.extend_from_slice(&user_db);
    let mut huge = header(1024 * 1024 + 8, wire::PROTOCOL_3_0);
    huge.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    let mut truncated = header(100, wire::PROTOCOL_3_0);
    truncated.extend_from_slice(b"user\0acme");
    // The declared length matches, but the last value and the list lack their terminating NULs.
    let not_terminated = wire::startup_packet(wire::PROTOCOL_3_0, b"user\0acme_app\0database\0app");
    let cases: Vec<(&str, Vec<u8>, Then)> = vec![
        (
            "negative length",
            header(-16, wire::PROTOCOL_3_0),
            Then::Wait,
        ),
        ("length 0", vec![0, 0, 0, 0, 0, 3, 0, 0], Then::Wait),
        ("length 4", header(4, wire::PROTOCOL_3_0), Then::Wait),
        ("2 GiB length", two_gib, Then::Wait),
        ("1 MB startup packet", huge, Then::Wait),
        (
            "truncated frame then EOF",
            truncated.clone(),
            Then::ShutdownWrite,
        ),
        ("garbage bytes", garbage, Then::Wait),
        (
            "protocol 2.0",
            wire::startup_packet(2 << 16, &user_db),
            Then::Wait,
        ),
        (
            "protocol 1234.5681",
            wire::startup_packet(80_877_105, &user_db),
            Then::Wait,
        ),
        (
            "protocol 9999.9999",
            wire::startup_packet((9999 << 16) | 9999, &user_db),
            Then::Wait,
        ),
        (
            "no user parameter",
            wire::startup_packet(
                wire::PROTOCOL_3_0,
                &wire::startup_params(&[("database", "app")]),
            ),
            Then::Wait,
        ),
        ("parameters without NULs", not_terminated, Then::Wait),
        (
            "cancel request of wrong length",
            wire::startup_packet(wire::CANCEL_REQUEST_CODE, &[1, 2, 3]),
            Then::Wait,
        ),
        ("closed mid-header", vec![0, 0], Then::Drop),
        ("closed mid-message", truncated, Then::Drop),
    ];
    within(180, "malformed startup", async {
        for (what, bytes, then) in cases {
            send_and_expect_refusal(proxy.addr, bytes, then, what).await;
            assert_proxy_still_works(&proxy, what).await;
        }
    })
    .await;
}

#[tokio::test]
async fn protocol_3_2_startup_is_negotiated_or_refused() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "protocol 3.2", async {
        let mut raw = RawConn::connect(proxy.addr).await.unwrap();
        let params = wire::startup_params(&[
            ("user", ACME_USER),
            ("database", pg::APP_DB),
            ("_pq_.unknown_option", "1"),
        ]);
        raw.send(&wire::startup_packet((3 << 16) | 2, &params))
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), raw.read_message())
            .await
            .expect("no answer to a 3.2 StartupMessage")
            .unwrap();
        // NegotiateProtocolVersion (then authentication), straight to authentication, or an
        // error: all are valid; silence is not. A close is accepted too.
        if let Some(m) = first {
            assert!(
                matches!(m.tag, b'v' | b'R' | b'E'),
                "unexpected {:?}",
                m.tag as char
            );
        }
        assert_proxy_still_works(&proxy, "protocol 3.2").await;
    })
    .await;
}

/// Logs in with the byte-level client, sends `bytes`, expects ErrorResponse and then a close.
async fn after_startup_expect_error_and_close(proxy: &TestProxy, bytes: Vec<u8>, what: &str) {
    let mut raw = RawConn::connect(proxy.addr).await.unwrap();
    raw.startup(ACME_USER, pg::APP_DB, Some(ACME_PASSWORD))
        .await
        .unwrap_or_else(|e| panic!("{what}: startup: {e:#}"));
    // The proxy may refuse an oversize frame without reading its body: bound the write, and
    // ignore its errors (the socket may already be closed).
    let mut stream = raw;
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.send(&bytes)).await;
    match stream.expect_refusal(10).await {
        Ok(Refusal::Error(fields)) => {
            assert!(
                fields.contains_key(&b'C'),
                "{what}: ErrorResponse without SQLSTATE: {fields:?}"
            );
        }
        Ok(Refusal::Closed) => panic!("{what}: connection closed without an ErrorResponse"),
        Err(e) => panic!("{what}: {e:#}"),
    }
    stream
        .expect_close(10)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_after_startup_get_error_then_close() {
    let mut config = base_config(PgServer::shared());
    config.proxy.max_message_size = 1024 * 1024;
    let proxy = TestProxy::start(config).await;
    within(120, "malformed after startup", async {
        after_startup_expect_error_and_close(
            &proxy,
            wire::message_with_len(b'Q', 3, &[]),
            "Query with length 3",
        )
        .await;
        assert_proxy_still_works(&proxy, "Query with length 3").await;

        after_startup_expect_error_and_close(
            &proxy,
            wire::message_with_len(b'Q', -1, &[]),
            "negative length",
        )
        .await;
        assert_proxy_still_works(&proxy, "negative length").await;

        // Above max_message_size (1 MiB): refused on the header, before the body is read.
        let mut oversize = wire::message_with_len(b'Q', 2 * 1024 * 1024 + 4, &[]);
        oversize.extend(std::iter::repeat_n(b' ', 64 * 1024));
        after_startup_expect_error_and_close(&proxy, oversize, "message above max_message_size")
            .await;
        assert_proxy_still_works(&proxy, "oversize message").await;

        after_startup_expect_error_and_close(
            &proxy,
            wire::message_with_len(b'\x01', 4, &[]),
            "unknown message type",
        )
        .await;
        assert_proxy_still_works(&proxy, "unknown message type").await;
    })
    .await;
}

#[tokio::test]
async fn client_vanishing_mid_message_after_startup_is_harmless() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "vanish mid-message", async {
        for cut in [1usize, 3, 7] {
            let mut raw = RawConn::connect(proxy.addr).await.unwrap();
            raw.startup(ACME_USER, pg::APP_DB, Some(ACME_PASSWORD))
                .await
                .unwrap();
            let mut q = bytes::BytesMut::new();
            postgres_protocol::message::frontend::query("SELECT 1", &mut q).unwrap();
            raw.send(&q[..cut]).await.unwrap();
            drop(raw);
        }
        assert_proxy_still_works(&proxy, "clients vanishing mid-message").await;
    })
    .await;
}
