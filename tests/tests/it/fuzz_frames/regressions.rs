//! Minimal cases the frame fuzzer found, written out by hand so that they stay tested whatever
//! the generator becomes.

use super::cases::TRUST_TENANT;
use super::{fuzz_config, TRUST_BYPASS};
use bytes::Buf;
use tenantgate_config::PoolMode;
use tenantgate_tests::pg;
use tenantgate_tests::pipeline::{query, read_until_ready, summarize};
use tenantgate_tests::proxy::*;
use tenantgate_tests::wire::{self, RawConn};
use tenantgate_tests::within;

fn startup_packet(user: &str) -> Vec<u8> {
    wire::startup_params(&[("user", user), ("database", pg::APP_DB)])
}

/// A query sent right behind the StartupMessage (trust needs no round trip) reaches the proxy
/// while the login waits for a new server: it was read into the session's buffer and then left
/// there, unanswered, until the client sent something more.
#[tokio::test]
async fn query_pipelined_behind_the_startup_packet_is_answered() {
    let (_db, config) = fuzz_config(PoolMode::Session).await;
    let proxy = TestProxy::start(config).await;
    within(30, "pipelined startup", async {
        let mut raw = RawConn::connect(proxy.addr).await.unwrap();
        let startup = wire::startup_packet(wire::PROTOCOL_3_0, &startup_packet(TRUST_BYPASS));
        raw.send(&[startup, query("SELECT 'pipelined'")].concat())
            .await
            .unwrap();
        let got = read_until_ready(&mut raw, 2, 10).await.unwrap();
        assert!(
            summarize(&got).contains(&"Row[pipelined]".to_string()),
            "{:?}",
            summarize(&got)
        );
    })
    .await;
}

/// A connection of the md5 user `MD5_CLIENT` that has sent its startup packet and been asked
/// for its password: and the salt.
async fn md5_requested(proxy: &TestProxy) -> (RawConn, [u8; 4]) {
    let mut raw = RawConn::connect(proxy.addr).await.unwrap();
    let startup = wire::startup_packet(wire::PROTOCOL_3_0, &startup_packet(MD5_CLIENT));
    raw.send(&startup).await.unwrap();
    let request = raw.read_message().await.unwrap().unwrap();
    let mut body = request.body.clone();
    assert_eq!((request.tag, body.get_i32()), (b'R', 5), "md5 expected");
    let salt: [u8; 4] = body[..4].try_into().unwrap();
    (raw, salt)
}

/// The same behind an md5 password message, in transaction mode: the authentication read took
/// the query into its buffer along with the password.
#[tokio::test]
async fn query_pipelined_behind_the_password_message_is_answered() {
    let (_db, config) = fuzz_config(PoolMode::Transaction).await;
    let proxy = TestProxy::start(config).await;
    within(30, "pipelined password", async {
        let (mut raw, salt) = md5_requested(&proxy).await;
        let hash = postgres_protocol::authentication::md5_hash(
            MD5_CLIENT.as_bytes(),
            MD5_CLIENT_PASSWORD.as_bytes(),
            salt,
        );
        let mut password = bytes::BytesMut::new();
        postgres_protocol::message::frontend::password_message(hash.as_bytes(), &mut password)
            .unwrap();
        raw.send(&[&password[..], &query("SELECT 'pipelined'")].concat())
            .await
            .unwrap();
        let got = read_until_ready(&mut raw, 2, 10).await.unwrap();
        assert!(
            summarize(&got).contains(&"Row[pipelined]".to_string()),
            "{:?}",
            summarize(&got)
        );
    })
    .await;
}

/// The next message is an ErrorResponse with SQLSTATE 08P01 (protocol violation).
async fn expect_08p01(raw: &mut RawConn, what: &str) {
    match raw.expect_refusal(5).await {
        Ok(wire::Refusal::Error(f)) => assert_eq!(f.get(&b'C').map(String::as_str), Some("08P01")),
        other => panic!("{what}: expected ErrorResponse 08P01, got {other:?}"),
    }
}

/// Logs in as `user`, sends `bytes` and keeps the socket open: an ErrorResponse and a close must
/// follow within seconds, although the declared body never arrives.
async fn refused_at_the_header(proxy: &TestProxy, user: &str, bytes: &[u8], what: &str) {
    let mut raw = RawConn::connect(proxy.addr).await.unwrap();
    raw.startup(user, pg::APP_DB, None).await.unwrap();
    raw.send(bytes).await.unwrap();
    expect_08p01(&mut raw, what).await;
    raw.expect_close(5)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

/// A second StartupMessage after login reads as type byte 0 and a length of 12544: the proxy
/// waited for those bytes (and reserved room for them) instead of refusing the type byte, and
/// the message type nobody sends got as far as a server.
#[tokio::test]
async fn unknown_message_type_is_refused_before_its_body() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let (_db, config) = fuzz_config(mode).await;
        let proxy = TestProxy::start(config).await;
        within(30, "unknown type with a long body", async {
            let startup = wire::startup_packet(wire::PROTOCOL_3_0, &startup_packet(TRUST_BYPASS));
            refused_at_the_header(&proxy, TRUST_BYPASS, &startup[..20], "StartupMessage again")
                .await;
            refused_at_the_header(
                &proxy,
                TRUST_TENANT,
                &wire::message_with_len(b'p', 1000, b"secret"),
                "password message after login",
            )
            .await;
            // Sync, Flush, Describe and the like are small: a megabyte is refused at once.
            refused_at_the_header(
                &proxy,
                TRUST_TENANT,
                &wire::message_with_len(b'S', 1 << 20, &[]),
                "1 MB Sync",
            )
            .await;
        })
        .await;
    }
}

/// During authentication a password message declaring a long body was waited for (with room
/// reserved up to max_message_size) until auth_timeout; it is refused at the header.
#[tokio::test]
async fn long_password_message_is_refused_before_its_body() {
    let (_db, config) = fuzz_config(PoolMode::Session).await;
    let proxy = TestProxy::start(config).await;
    within(30, "long password message", async {
        let (mut raw, _) = md5_requested(&proxy).await;
        raw.send(&wire::message_with_len(b'p', 16 << 20, b"md5"))
            .await
            .unwrap();
        expect_08p01(&mut raw, "").await;
    })
    .await;
}

/// A StartupMessage sent twice reads, during the SCRAM exchange, as type byte 0 with a length
/// of 17920: waited for until auth_timeout, now refused at the type byte.
#[tokio::test]
async fn second_startup_message_during_authentication_is_refused_at_once() {
    let (_db, config) = fuzz_config(PoolMode::Transaction).await;
    let proxy = TestProxy::start(config).await;
    within(30, "startup twice", async {
        let mut raw = RawConn::connect(proxy.addr).await.unwrap();
        let startup = wire::startup_packet(wire::PROTOCOL_3_0, &startup_packet(ACME_USER));
        raw.send(&[startup.clone(), startup].concat())
            .await
            .unwrap();
        let request = raw.read_message().await.unwrap().unwrap();
        assert_eq!(request.tag, b'R');
        expect_08p01(&mut raw, "").await;
    })
    .await;
}
