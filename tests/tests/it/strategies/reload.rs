//! Moving a tenant between strategies is a configuration change and a reload: transactions
//! that start after the reload run in the new place, the ones in flight finish where they
//! started, and none fails.

use super::*;
use std::sync::Arc;
use std::time::Duration;

const MOVER: &str = "moverco_app";

const SQL: &str = "
SET ROLE tg_server;
CREATE TABLE orders (tenant_id text NOT NULL, id bigserial, item text, PRIMARY KEY (tenant_id, id));
INSERT INTO orders (tenant_id, item) VALUES ('moverco', 'seed-1'), ('moverco', 'seed-2'), ('otherco', 'other-1');
-- Step 1 of the migration recipe: the tenant's schema, with its data copied.
CREATE SCHEMA tenant_moverco;
CREATE TABLE tenant_moverco.orders (LIKE public.orders INCLUDING DEFAULTS);
ALTER TABLE tenant_moverco.orders ADD PRIMARY KEY (id);
INSERT INTO tenant_moverco.orders SELECT * FROM public.orders WHERE tenant_id = 'moverco';
RESET ROLE;
";

fn mover_config(db: &str, moved: bool) -> Config {
    let pg = PgServer::shared();
    let placement = if moved {
        "[[tenants]]\nid = \"moverco\"\nisolation = \"schema\"\n"
    } else {
        ""
    };
    let text = format!(
        "{base}\n{user}[[users]]\nname = \"{ADMIN}\"\npassword = \"{ADMIN_PASSWORD}\"\nbypass_policy = true\n\n{placement}",
        base = base_config_toml(pg),
        user = user_toml(MOVER, "moverco"),
    );
    let mut config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    config.proxy.admin_users = vec![ADMIN.into()];
    let d = &mut config.databases[0];
    d.dbname = Some(db.to_string());
    d.pool_mode = PoolMode::Transaction;
    d.pool_size = 4;
    config
}

fn write(path: &std::path::Path, config: &Config) {
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
}

async fn count(su: &Client, table: &str, like: &str) -> i64 {
    su.query_one(
        &format!("SELECT count(*) FROM {table} WHERE tenant_id = 'moverco' AND item LIKE $1"),
        &[&like],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_a_tenant_from_row_to_schema_under_load() {
    let db = unique_name("mover");
    create_database(&db, SQL.to_string()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenantgate.toml");
    write(&path, &mover_config(&db, false));
    let proxy =
        Arc::new(TestProxy::start_with_path(mover_config(&db, false), Some(path.clone())).await);
    let tally = Arc::new(Tally::default());
    within(90, "reload under load", async {
        // A transaction open across the reload.
        let inflight = proxy.connect(MOVER, PASSWORD, "app").await.unwrap();
        let insert = "INSERT INTO orders (tenant_id, item) VALUES (current_setting('app.current_tenant'), $1)";
        inflight.simple_query("BEGIN").await.unwrap();
        inflight.execute(insert, &[&"inflight-1"]).await.unwrap();

        let deadline = Instant::now() + Duration::from_secs(4);
        let mut load = Vec::new();
        for c in 0..6 {
            let (proxy, tally) = (proxy.clone(), tally.clone());
            load.push(tokio::spawn(async move {
                let mut client = proxy.connect(MOVER, PASSWORD, "app").await.unwrap();
                let mut n = 0;
                while running(deadline) {
                    n += 1;
                    let item = format!("load-{c}-{n}");
                    let tx = async {
                        let tx = client.transaction().await?;
                        tx.execute(insert, &[&item]).await?;
                        tx.query_one(APP_QUERY.replace("item", "count(*)").replace(" ORDER BY id", "").as_str(), &[])
                            .await?;
                        tx.commit().await
                    };
                    tally.record(tx.await, "transaction");
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Step 2: switch the configuration.
        write(&path, &mover_config(&db, true));
        let admin = proxy.connect(ADMIN, ADMIN_PASSWORD, "tenantgate").await.unwrap();
        admin.simple_query("RELOAD").await.unwrap();
        // The open transaction finishes where it started.
        inflight.execute(insert, &[&"inflight-2"]).await.unwrap();
        inflight.simple_query("COMMIT").await.unwrap();
        for l in load {
            l.await.unwrap();
        }
        assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "failed transactions");
        assert!(tally.ok.load(Ordering::Relaxed) > 20);
        // Step 3: verify. New transactions of this session run in the schema now.
        assert_eq!(
            simple_one(&inflight, "SELECT current_schema()").await.as_deref(),
            Some("tenant_moverco")
        );
        let fresh = proxy.connect(MOVER, PASSWORD, "app").await.unwrap();
        fresh.execute(insert, &[&"after-1"]).await.unwrap();
        let su = PgServer::shared().superuser_client(&db).await.unwrap();
        assert_eq!(count(&su, "public.orders", "inflight-%").await, 2);
        assert_eq!(count(&su, "tenant_moverco.orders", "inflight-%").await, 0);
        assert_eq!(count(&su, "tenant_moverco.orders", "after-%").await, 1);
        assert_eq!(count(&su, "public.orders", "after-%").await, 0);
        let before = count(&su, "public.orders", "load-%").await;
        let after = count(&su, "tenant_moverco.orders", "load-%").await;
        assert_eq!(
            (before + after) as usize,
            tally.ok.load(Ordering::Relaxed),
            "every committed transaction is in exactly one place"
        );
        assert!(after > 0, "transactions after the reload went to the schema");
    })
    .await;
    match Arc::try_unwrap(proxy) {
        Ok(p) => p.shutdown().await.unwrap(),
        Err(_) => panic!("proxy still shared"),
    }
}

/// Session mode holds a server for the whole session: a reload that moves the tenant ends the
/// session at its next transaction boundary (57P01), and the reconnect lands in the new place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_clients_are_sent_to_reconnect_when_their_tenant_moves() {
    let db = unique_name("mover_s");
    create_database(&db, SQL.to_string()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenantgate.toml");
    let session = |moved| {
        let mut c = mover_config(&db, moved);
        c.databases[0].pool_mode = PoolMode::Session;
        c
    };
    write(&path, &session(false));
    let proxy = TestProxy::start_with_path(session(false), Some(path.clone())).await;
    within(60, "session-mode move", async {
        let client = proxy.connect(MOVER, PASSWORD, "app").await.unwrap();
        client.simple_query("BEGIN").await.unwrap();
        assert_eq!(
            simple_one(&client, "SELECT current_schema()")
                .await
                .as_deref(),
            Some("public")
        );
        write(&path, &session(true));
        let admin = proxy
            .connect(ADMIN, ADMIN_PASSWORD, "tenantgate")
            .await
            .unwrap();
        admin.simple_query("RELOAD").await.unwrap();
        // The open transaction finishes where it started.
        assert_eq!(items(&client, APP_QUERY).await, ["seed-1", "seed-2"]);
        client.simple_query("COMMIT").await.unwrap();
        let err = client.simple_query("SELECT 1").await.unwrap_err();
        assert_eq!(
            err.as_db_error().map(|e| e.code().code()),
            Some("57P01"),
            "{err:?}"
        );
        let again = proxy.connect(MOVER, PASSWORD, "app").await.unwrap();
        assert_eq!(
            simple_one(&again, "SELECT current_schema()")
                .await
                .as_deref(),
            Some("tenant_moverco")
        );
    })
    .await;
    proxy.shutdown().await.unwrap();
}
