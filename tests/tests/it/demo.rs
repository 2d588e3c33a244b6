//! The demo (examples/demo): its schema isolates tenants with RLS on its own, and the demo
//! queries of scripts/demo.sh behave as advertised through the proxy.

use std::path::Path;
use tenantgate_config::Config;
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::connect;
use tenantgate_tests::{unique_name, within, TestProxy};

/// A fresh database with the demo schema loaded; returns its name.
async fn demo_database(pg: &'static PgServer) -> String {
    let db = unique_name("demo");
    let schema = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/schema.sql"),
    )
    .unwrap();
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || {
        pg.run_sql("postgres", &format!("CREATE DATABASE {db2}"))?;
        // The schema ALTERs the cluster-wide role app_rw; two tests loading it at the same time
        // can hit Postgres's "tuple concurrently updated" on that role's row. The schema is
        // re-runnable, so load again in that case.
        let load = || {
            let mut attempt = 0;
            loop {
                match pg.run_sql(&db2, &schema) {
                    Err(e)
                        if attempt < 5
                            && format!("{e:#}").contains("tuple concurrently updated") =>
                    {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(100 * attempt));
                    }
                    other => return other,
                }
            }
        };
        load()?;
        // Loading twice must work (scripts/demo.sh re-runs it).
        load()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("loading schema.sql: {e:#}"));
    db
}

#[tokio::test]
async fn demo_schema_rls_isolates_tenants_for_app_rw() {
    let pg = PgServer::shared();
    within(60, "demo schema", async {
        let db = demo_database(pg).await;
        let client = connect(&pg.tcp_config(pg::APP_RW_USER, pg::APP_RW_PASSWORD, &db))
            .await
            .unwrap();
        let count = |sql: &'static str| {
            let client = &client;
            async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
        };
        // No tenant set: RLS hides every row.
        assert_eq!(count("SELECT count(*) FROM orders").await, 0);
        client
            .batch_execute("SET app.current_tenant = 'acme'")
            .await
            .unwrap();
        assert_eq!(count("SELECT count(*) FROM orders").await, 3);
        assert_eq!(count("SELECT count(*) FROM customers").await, 2);
        assert_eq!(
            count("SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id").await,
            3
        );
        assert_eq!(count("SELECT count(*) FROM plans").await, 3);
        // Writing another tenant's row violates the policy; the shared table is read-only.
        let err = client
            .batch_execute("INSERT INTO customers VALUES ('globex', 99, 'x', NULL)")
            .await
            .unwrap_err();
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("42501"));
        let err = client
            .batch_execute("INSERT INTO plans VALUES (9, 'free', 0)")
            .await
            .unwrap_err();
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("42501"));
        client
            .batch_execute("SET app.current_tenant = 'globex'")
            .await
            .unwrap();
        assert_eq!(count("SELECT count(*) FROM orders").await, 3);
        assert_eq!(count("SELECT count(*) FROM orders WHERE id <= 3").await, 0);
    })
    .await;
}

/// The two queries scripts/demo.sh shows, against the demo config pointed at the test server.
#[tokio::test]
async fn demo_queries_through_the_proxy() {
    let pg = PgServer::shared();
    let db = within(60, "demo database", demo_database(pg)).await;
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/tenantgate.toml"),
    )
    .unwrap();
    let mut config = Config::from_toml(&text).unwrap();
    config.databases[0].port = pg.port();
    config.databases[0].dbname = Some(db.clone());
    config.audit.path = None;
    let proxy = TestProxy::start(config).await;
    within(60, "demo queries", async {
        let acme = proxy.connect("acme_app", "acme_pw", "app").await.unwrap();
        let rows = acme
            .query(
                "SELECT id, total::text FROM orders WHERE tenant_id = current_setting('app.current_tenant')",
                &[],
            )
            .await
            .unwrap();
        let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3], "acme must see exactly its own orders");

        let err = acme
            .simple_query("SELECT * FROM orders")
            .await
            .expect_err("an unconstrained SELECT on a tenant table must be rejected");
        let db_err = err
            .as_db_error()
            .unwrap_or_else(|| panic!("rejection must be an ErrorResponse: {err:?}"));
        assert!(!db_err.message().is_empty());
        // The session survives a rejection.
        acme.simple_query("SELECT 1").await.unwrap();

        let globex = proxy.connect("globex_app", "globex_pw", "app").await.unwrap();
        let rows = globex
            .query(
                "SELECT id FROM orders WHERE tenant_id = current_setting('app.current_tenant')",
                &[],
            )
            .await
            .unwrap();
        let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        ids.sort();
        assert_eq!(ids, vec![4, 5, 6]);

        // initech lives in its own schema: the same query, its own rows, no filter needed.
        let initech = proxy.connect("initech_app", "initech_pw", "app").await.unwrap();
        let rows = initech
            .query(
                "SELECT total::text FROM orders WHERE tenant_id = current_setting('app.current_tenant') ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        let totals: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(totals, ["42.00", "7.00"]);
        let n: i64 = initech
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
        let err = initech
            .simple_query("SELECT * FROM public.orders")
            .await
            .expect_err("the shared orders table still needs the tenant filter");
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("42501"));
    })
    .await;
}
