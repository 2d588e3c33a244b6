//! Relaying the PostgreSQL protocol: simple and extended query, pipelining, errors inside
//! transactions, COPY, cancel, ParameterStatus and startup parameters.

use futures_util::{SinkExt, TryStreamExt};
use std::time::{Duration, Instant};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::*;
use tenantgate_tests::wire::{self, RawConn};
use tenantgate_tests::{unique_name, within};
use tokio_postgres::{NoTls, SimpleQueryMessage};

#[tokio::test]
async fn simple_query_returns_rows_and_command_tags() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "simple query", async {
        let client = proxy.connect_service().await;
        let msgs = client
            .simple_query("SELECT g, 'x' || g FROM generate_series(1, 3) g")
            .await
            .unwrap();
        let rows: Vec<(String, String)> = msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((r.get(0).unwrap().to_string(), r.get(1).unwrap().to_string()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("1".into(), "x1".into()),
                ("2".into(), "x2".into()),
                ("3".into(), "x3".into())
            ]
        );
        assert!(msgs
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(3))));
        // A tenant user's trivial query goes through too.
        let acme = proxy.connect_acme().await;
        let msgs = acme.simple_query("SELECT 1").await.unwrap();
        assert!(msgs.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))));
    })
    .await;
}

#[tokio::test]
async fn extended_protocol_prepare_and_parameters() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "extended protocol", async {
        let client = proxy.connect_service().await;
        let stmt = client
            .prepare("SELECT $1::int8 * 2, $2::text || '!'")
            .await
            .unwrap();
        for i in 0..5i64 {
            let row = client
                .query_one(&stmt, &[&i, &format!("hi{i}")])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i64>(0), i * 2);
            assert_eq!(row.get::<_, String>(1), format!("hi{i}!"));
        }
        // Unnamed statements, NULLs, binary results of several types.
        let row = client
            .query_one(
                "SELECT $1::text IS NULL, $2::float8, $3::bool, now() IS NOT NULL",
                &[&None::<String>, &1.5f64, &true],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0));
        assert_eq!(row.get::<_, f64>(1), 1.5);
        assert!(row.get::<_, bool>(2));
        assert!(row.get::<_, bool>(3));
        // An error in Parse is reported and the session goes on.
        let err = client.prepare("SELECT FROM WHERE").await.unwrap_err();
        assert_eq!(sqlstate(&err), Some("42601"));
        let row = client.query_one(&stmt, &[&21i64, &"x"]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 42);
    })
    .await;
}

#[tokio::test]
async fn pipelined_queries_on_one_connection() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "pipelining", async {
        let client = proxy.connect_service().await;
        let stmt = client.prepare("SELECT $1::int4 + 1").await.unwrap();
        // tokio-postgres sends all of these before reading any response.
        let futures = (0..50i32).map(|i| {
            let client = &client;
            let stmt = &stmt;
            async move {
                let row = client.query_one(stmt, &[&i]).await?;
                Ok::<_, tokio_postgres::Error>((i, row.get::<_, i32>(0)))
            }
        });
        let results = futures_util::future::try_join_all(futures).await.unwrap();
        for (i, got) in results {
            assert_eq!(got, i + 1);
        }
        // Pipelined with an error in the middle: only that query fails.
        let (a, b, c) = tokio::join!(
            client.query_one("SELECT 1::int4", &[]),
            client.query_one("SELECT 1/0", &[]),
            client.query_one("SELECT 3::int4", &[]),
        );
        assert_eq!(a.unwrap().get::<_, i32>(0), 1);
        assert_eq!(sqlstate(&b.unwrap_err()), Some("22012"));
        assert_eq!(c.unwrap().get::<_, i32>(0), 3);
    })
    .await;
}

#[tokio::test]
async fn errors_inside_transactions_keep_the_connection_usable() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "errors in transactions", async {
        let mut client = proxy.connect_service().await;
        let table = unique_name("tx_err");
        client
            .batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY)"))
            .await
            .unwrap();
        // Simple protocol: error, then the aborted transaction refuses work until ROLLBACK.
        client.batch_execute("BEGIN").await.unwrap();
        client
            .batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
            .await
            .unwrap();
        let err = client.batch_execute("SELECT 1/0").await.unwrap_err();
        assert_eq!(sqlstate(&err), Some("22012"));
        let err = client.batch_execute("SELECT 1").await.unwrap_err();
        assert_eq!(sqlstate(&err), Some("25P02"));
        client.batch_execute("ROLLBACK").await.unwrap();
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "rolled-back insert is visible");
        // Extended protocol inside a transaction object.
        let tx = client.transaction().await.unwrap();
        tx.execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&7i32])
            .await
            .unwrap();
        let err = tx
            .execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&7i32])
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err), Some("23505"));
        drop(tx); // rolls back
        client
            .execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&8i32])
            .await
            .unwrap();
        let ids: Vec<i32> = client
            .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, vec![8]);
        client
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_100k_rows() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(120, "COPY 100k rows", async {
        let client = proxy.connect_service().await;
        let table = unique_name("copy_rows");
        client
            .batch_execute(&format!("CREATE TABLE {table} (id int8, name text)"))
            .await
            .unwrap();
        const ROWS: i64 = 100_000;
        let sink = client
            .copy_in::<_, bytes::Bytes>(&format!("COPY {table} (id, name) FROM STDIN"))
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        let mut chunk = String::new();
        for i in 0..ROWS {
            chunk.push_str(&format!("{i}\tname-{i}\n"));
            if chunk.len() > 64 * 1024 {
                sink.send(bytes::Bytes::from(std::mem::take(&mut chunk)))
                    .await
                    .unwrap();
            }
        }
        sink.send(bytes::Bytes::from(chunk)).await.unwrap();
        let copied = sink.finish().await.unwrap();
        assert_eq!(copied, ROWS as u64);
        let row = client
            .query_one(&format!("SELECT count(*), sum(id)::int8 FROM {table}"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), ROWS);
        assert_eq!(row.get::<_, i64>(1), ROWS * (ROWS - 1) / 2);

        let stream = client
            .copy_out(&format!("COPY {table} TO STDOUT"))
            .await
            .unwrap();
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
        let data: Vec<u8> = chunks.concat();
        let lines = data
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert_eq!(lines as i64, ROWS);
        assert!(data.starts_with(b"0\tname-0\n"));

        // The session is still in a clean state after both COPYs.
        let n: i64 = client
            .query_one("SELECT 5::int8", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 5);
        client
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn copy_in_error_keeps_session_usable() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "COPY error", async {
        let client = proxy.connect_service().await;
        let table = unique_name("copy_bad");
        client
            .batch_execute(&format!("CREATE TABLE {table} (id int8)"))
            .await
            .unwrap();
        let sink = client
            .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN"))
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"1\nnot-a-number\n"))
            .await
            .ok();
        let err = sink.finish().await.unwrap_err();
        assert_eq!(sqlstate(&err), Some("22P02"));
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
        client
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_a_running_query() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "cancel", async {
        let client = proxy.connect_service().await;
        let token = client.cancel_token();
        let started = Instant::now();
        let query = tokio::spawn(async move {
            let r = client.simple_query("SELECT pg_sleep(30)").await;
            (r, client)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await.unwrap();
        let (result, client) = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .expect("cancelled query did not return")
            .unwrap();
        let err = result.expect_err("pg_sleep(30) finished instead of being cancelled");
        assert_eq!(sqlstate(&err), Some("57014"), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // The session survives a cancel.
        let msgs = client.simple_query("SELECT 1").await.unwrap();
        assert!(msgs.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))));
    })
    .await;
}

#[tokio::test]
async fn cancel_with_unknown_key_is_harmless() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "bogus cancel", async {
        let client = proxy.connect_service().await;
        let mut raw = RawConn::connect(proxy.addr).await.unwrap();
        let mut payload = Vec::new();
        payload.extend_from_slice(&12345i32.to_be_bytes());
        payload.extend_from_slice(&67890i32.to_be_bytes());
        raw.send(&wire::startup_packet(wire::CANCEL_REQUEST_CODE, &payload))
            .await
            .unwrap();
        raw.expect_close(5).await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn parameter_status_is_relayed() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "ParameterStatus", async {
        let mut raw = RawConn::connect(proxy.addr).await.unwrap();
        let info = raw
            .startup(ACME_USER, pg::APP_DB, Some(ACME_PASSWORD))
            .await
            .unwrap();
        let version = info
            .parameters
            .get("server_version")
            .unwrap_or_else(|| panic!("no server_version in {:?}", info.parameters));
        assert!(
            version.starts_with(|c: char| c.is_ascii_digit()),
            "{version}"
        );
        assert_eq!(
            info.parameters.get("client_encoding").map(String::as_str),
            Some("UTF8")
        );
        for p in [
            "server_encoding",
            "DateStyle",
            "integer_datetimes",
            "standard_conforming_strings",
        ] {
            assert!(
                info.parameters.contains_key(p),
                "missing {p}: {:?}",
                info.parameters
            );
        }
        assert!(info.backend_key.is_some(), "no BackendKeyData");
    })
    .await;
}

#[tokio::test]
async fn application_name_is_forwarded() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "application_name", async {
        let mut c = proxy.client_config(SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, pg::APP_DB);
        c.application_name("tg-test-app");
        let client = connect(&c).await.unwrap();
        let name: String = client
            .query_one("SELECT current_setting('application_name')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, "tg-test-app");
    })
    .await;
}

#[tokio::test]
async fn gssenc_request_gets_n_then_startup_works() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "GSSENCRequest", async {
        let mut raw = RawConn::connect(proxy.addr).await.unwrap();
        assert_eq!(
            raw.encryption_request(wire::GSSENC_REQUEST_CODE)
                .await
                .unwrap(),
            Some(b'N')
        );
        raw.startup(ACME_USER, pg::APP_DB, Some(ACME_PASSWORD))
            .await
            .unwrap();
        let msgs = raw.simple_query("SELECT 1").await.unwrap();
        assert_eq!(wire::data_rows(&msgs), vec![Some("1".to_string())]);
    })
    .await;
}

/// A query pipelined behind the startup packet (legal: Postgres reads it after the login) is
/// answered, also when the login waited for a server and the proxy read the query meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_sent_with_the_startup_packet_is_answered() {
    use tenantgate_config::PoolMode;
    for (mode, held) in [
        (PoolMode::Session, false),
        (PoolMode::Session, true),
        (PoolMode::Transaction, false),
    ] {
        let mut config = base_config(PgServer::shared());
        config.databases[0].pool_mode = mode;
        config.databases[0].pool_size = 1;
        let proxy = TestProxy::start(config).await;
        within(30, "query with the startup packet", async {
            let mut holder = Some(proxy.connect_service().await);
            if let Some(h) = &holder {
                h.simple_query("SELECT 1").await.unwrap();
            }
            if !held {
                holder = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut c = RawConn::connect(proxy.addr).await.unwrap();
            let mut batch = wire::startup_packet(
                wire::PROTOCOL_3_0,
                &wire::startup_params(&[("user", TRUST_CLIENT), ("database", pg::APP_DB)]),
            );
            batch.extend_from_slice(&tenantgate_tests::pipeline::query("SELECT 41 + 1"));
            c.send(&batch).await.unwrap();
            let reader = async {
                c.authenticate(TRUST_CLIENT, None).await.unwrap();
                let replies = tenantgate_tests::pipeline::read_until_ready(&mut c, 1, 10)
                    .await
                    .unwrap();
                wire::data_rows(&replies)
            };
            if held {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            drop(holder);
            assert_eq!(
                reader.await,
                [Some("42".to_string())],
                "{mode:?}, held: {held}"
            );
        })
        .await;
    }
}
