//! Transaction pooling: a server connection is held only for a transaction, so clients share
//! servers; prepared statements and aborted transactions must not leak between clients.

use std::time::Duration;
use tenantgate_config::{Config, PoolMode};
use tenantgate_tests::pg::PgServer;
use tenantgate_tests::proxy::*;
use tenantgate_tests::{unique_name, within};

/// Transaction mode with a single server connection: any sharing bug shows up at once.
pub(crate) fn one_server_transaction_mode() -> Config {
    let mut config = base_config(PgServer::shared());
    for db in &mut config.databases {
        db.pool_mode = PoolMode::Transaction;
        db.pool_size = 1;
        db.query_wait_timeout = 10.0;
    }
    config
}

#[tokio::test]
async fn idle_clients_do_not_hold_the_server() {
    let proxy = TestProxy::start(one_server_transaction_mode()).await;
    within(30, "sharing one server", async {
        let a = proxy.connect_service().await;
        let b = proxy.connect_service().await;
        for _ in 0..3 {
            a.simple_query("SELECT 1").await.unwrap();
            b.simple_query("SELECT 1").await.unwrap();
        }
        // Both ran on the same server backend.
        let pa: i32 = a
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let pb: i32 = b
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(pa, pb, "pool_size = 1 but two server backends were used");
    })
    .await;
}

#[tokio::test]
async fn prepared_statements_of_different_clients_do_not_collide() {
    let proxy = TestProxy::start(one_server_transaction_mode()).await;
    within(30, "prepared statements", async {
        // tokio-postgres names statements s0, s1, … per connection: both clients use "s0" for
        // different SQL on the same server connection.
        let a = proxy.connect_service().await;
        let b = proxy.connect_service().await;
        let sa = a.prepare("SELECT $1::int4 + 1").await.unwrap();
        let sb = b.prepare("SELECT $1::text || '-b'").await.unwrap();
        for i in 0..5i32 {
            let ra: i32 = a.query_one(&sa, &[&i]).await.unwrap().get(0);
            let rb: String = b.query_one(&sb, &[&i.to_string()]).await.unwrap().get(0);
            assert_eq!(ra, i + 1);
            assert_eq!(rb, format!("{i}-b"));
        }
        // Pipelined from both at once.
        let (ra, rb) = tokio::join!(a.query_one(&sa, &[&41i32]), b.query_one(&sb, &[&"x"]));
        assert_eq!(ra.unwrap().get::<_, i32>(0), 42);
        assert_eq!(rb.unwrap().get::<_, String>(0), "x-b");
        // A statement closed by one client stays usable for the other.
        drop(sa);
        let rb: String = b.query_one(&sb, &[&"y"]).await.unwrap().get(0);
        assert_eq!(rb, "y-b");
    })
    .await;
}

#[tokio::test]
async fn client_vanishing_inside_a_transaction_is_rolled_back() {
    let proxy = TestProxy::start(one_server_transaction_mode()).await;
    within(30, "vanished transaction", async {
        let table = unique_name("tx_vanish");
        let setup = proxy.connect_service().await;
        setup
            .batch_execute(&format!("CREATE TABLE {table} (id int)"))
            .await
            .unwrap();
        drop(setup);

        let a = proxy.connect_service().await;
        a.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
            .await
            .unwrap();
        drop(a); // no COMMIT

        // The only server connection comes back rolled back and idle.
        let b = proxy.connect_service().await;
        let n: i64 = b
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            n, 0,
            "uncommitted insert of a vanished client became visible"
        );
        // Not inside the vanished client's transaction: a new BEGIN/COMMIT works normally.
        b.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (2); COMMIT"))
            .await
            .unwrap();
        let ids: Vec<i32> = b
            .query(&format!("SELECT id FROM {table}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, vec![2]);
        b.batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_transaction_holds_the_server_until_it_ends() {
    let proxy = TestProxy::start(one_server_transaction_mode()).await;
    within(30, "transaction holds server", async {
        let a = proxy.connect_service().await;
        let b = proxy.connect_service().await;
        a.batch_execute("BEGIN").await.unwrap();
        let pa: i32 = a
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        // b must wait for a's transaction; it gets the server after COMMIT.
        let waiter = tokio::spawn(async move {
            let pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
            Ok::<_, tokio_postgres::Error>(pid)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "b ran inside a's open transaction");
        a.batch_execute("COMMIT").await.unwrap();
        let pb = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("b still waiting after a committed")
            .unwrap()
            .unwrap();
        assert_eq!(pa, pb);
    })
    .await;
}

#[tokio::test]
async fn tenant_setting_follows_the_client_across_a_shared_server() {
    let proxy = TestProxy::start(one_server_transaction_mode()).await;
    within(30, "tenant per transaction", async {
        let acme = proxy.connect_acme().await;
        let svc = proxy.connect_service().await;
        for _ in 0..3 {
            let t: Option<String> = acme
                .query_one("SELECT current_setting('app.current_tenant', true)", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(t.as_deref(), Some(ACME_TENANT));
            // A user without a tenant on the same server connection sees none.
            let t: Option<String> = svc
                .query_one("SELECT current_setting('app.current_tenant', true)", &[])
                .await
                .unwrap()
                .get(0);
            assert!(
                t.as_deref().unwrap_or("").is_empty(),
                "tenant leaked: {t:?}"
            );
        }
    })
    .await;
}
