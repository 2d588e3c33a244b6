//! Pooling limits: many clients queueing for few server connections, queue timeout, and the
//! client connection limit.

use std::time::{Duration, Instant};
use tenantgate_config::PoolMode;
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::*;
use tenantgate_tests::{unique_name, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_short_lived_clients() {
    let pg = PgServer::shared();
    // A server role of its own, so the number of server connections can be counted exactly.
    let role = unique_name("pool_role");
    let su = pg.superuser_client(pg::APP_DB).await.unwrap();
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pool_pw'"))
        .await
        .unwrap();
    let mut config = base_config(pg);
    // Session mode with 10 server connections: 190 clients wait in the queue at any time.
    config.databases[0].pool_mode = PoolMode::Session;
    config.databases[0].pool_size = 10;
    config.databases[0].query_wait_timeout = 120.0;
    config.databases[0].user = role.clone();
    config.databases[0].password = Some("pool_pw".into());
    let proxy = TestProxy::start(config).await;
    let config = proxy.client_config(ACME_USER, ACME_PASSWORD, pg::APP_DB);
    within(180, "200 clients", async {
        let done = tokio_util::sync::CancellationToken::new();
        let monitor = {
            let done = done.clone();
            let role = role.clone();
            tokio::spawn(async move {
                let mut max = 0i64;
                while !done.is_cancelled() {
                    let n: i64 = su
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                            &[&role],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    max = max.max(n);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                max
            })
        };
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let config = config.clone();
                tokio::spawn(async move {
                    let client = connect(&config).await?;
                    let mut rows = 0;
                    for _ in 0..3 {
                        let msgs = client.simple_query("SELECT 1").await?;
                        rows += msgs
                            .iter()
                            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                            .count();
                    }
                    Ok::<_, tokio_postgres::Error>(rows)
                })
            })
            .collect();
        let mut failures = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(rows) => assert_eq!(rows, 3),
                Err(e) => failures.push(format!("{e:?}")),
            }
        }
        done.cancel();
        let max = monitor.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} of 200 clients failed, first: {}",
            failures.len(),
            failures[0]
        );
        assert!(max >= 1, "no server connection seen for {role}");
        assert!(
            max <= 10,
            "pool_size is 10 but {max} server connections were open"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhausted_client_gets_53300_after_query_wait_timeout() {
    let mut config = base_config(PgServer::shared());
    config.databases[0].pool_mode = PoolMode::Session;
    config.databases[0].pool_size = 1;
    config.databases[0].query_wait_timeout = 0.5;
    let proxy = TestProxy::start(config).await;
    within(30, "queue timeout", async {
        let holder = proxy.connect_acme().await;
        holder.simple_query("SELECT 1").await.unwrap();

        let started = Instant::now();
        let result = async {
            let c = proxy.connect(ACME_USER, ACME_PASSWORD, pg::APP_DB).await?;
            c.simple_query("SELECT 1").await?;
            Ok::<_, tokio_postgres::Error>(c)
        }
        .await;
        let elapsed = started.elapsed();
        let err = match result {
            Ok(_) => panic!("second client got a server although pool_size = 1 is held"),
            Err(e) => e,
        };
        assert_eq!(sqlstate(&err), Some("53300"), "{err:?}");
        assert!(
            elapsed < Duration::from_secs(3),
            "took {elapsed:?} for a 0.5 s queue timeout"
        );

        // Once the holder leaves, the server connection is free again.
        drop(holder);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let attempt = async {
                let c = proxy.connect(ACME_USER, ACME_PASSWORD, pg::APP_DB).await?;
                c.simple_query("SELECT 1").await
            }
            .await;
            match attempt {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("pool not released after the holder disconnected: {e:?}"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_clients_time_out_each_on_its_own_deadline() {
    // Transaction mode, one server held by an open transaction: clients queued at different
    // times each get 53300 about query_wait_timeout after their own request (one reaper timer
    // per pool serves them all), and the pool serves the next client once the server is free.
    let mut config = base_config(PgServer::shared());
    config.databases[0].pool_mode = PoolMode::Transaction;
    config.databases[0].pool_size = 1;
    config.databases[0].query_wait_timeout = 0.5;
    let proxy = TestProxy::start(config).await;
    within(30, "staggered queue timeouts", async {
        let holder = proxy.connect_acme().await;
        holder.batch_execute("BEGIN").await.unwrap();
        let mut waiters = Vec::new();
        for i in 0..3u64 {
            let c = proxy.connect_acme().await;
            waiters.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300 * i)).await;
                let started = Instant::now();
                let err = c.simple_query("SELECT 1").await.err();
                (started.elapsed(), err)
            }));
        }
        for w in waiters {
            let (elapsed, err) = w.await.unwrap();
            let err = err.expect("a queued client got the held server");
            assert_eq!(sqlstate(&err), Some("53300"), "{err:?}");
            assert!(
                elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
                "53300 after {elapsed:?} for a 0.5 s queue timeout"
            );
        }
        holder.batch_execute("COMMIT").await.unwrap();
        let next = proxy.connect_acme().await;
        next.simple_query("SELECT 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn max_client_connections_refuses_the_next_client() {
    let mut config = base_config(PgServer::shared());
    config.proxy.max_client_connections = 2;
    let proxy = TestProxy::start(config).await;
    within(30, "max_client_connections", async {
        let a = proxy.connect_acme().await;
        let b = proxy.connect_acme().await;
        a.simple_query("SELECT 1").await.unwrap();
        b.simple_query("SELECT 1").await.unwrap();
        let err = match proxy.connect(ACME_USER, ACME_PASSWORD, pg::APP_DB).await {
            Ok(c) => match c.simple_query("SELECT 1").await {
                Ok(_) => panic!("third client accepted with max_client_connections = 2"),
                Err(e) => e,
            },
            Err(e) => e,
        };
        assert_eq!(sqlstate(&err), Some("53300"), "{err:?}");
        let msg = err.as_db_error().unwrap().message().to_lowercase();
        assert!(msg.contains("too many"), "{msg}");

        // A slot frees up when a client leaves.
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match proxy.connect(ACME_USER, ACME_PASSWORD, pg::APP_DB).await {
                Ok(c) => {
                    c.simple_query("SELECT 1").await.unwrap();
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("slot not freed after a client left: {e:?}"),
            }
        }
        drop(b);
    })
    .await;
}
