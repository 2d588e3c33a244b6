//! Database isolation at scale: 250 tenants, each with a database of its own, and a global
//! cap of 50 server connections for all of them. Pools are created on demand, idle servers of
//! the least recently used databases are closed to make room, and every transaction still runs
//! in its tenant's database. (A tenant database is a copy of template1, ~7.5 MB: 2,000 of them
//! would write 15 GB on the test machine, so the test uses 250; nothing in the code depends on
//! the number.)

use super::*;
use std::sync::Arc;
use std::time::Duration;

const TENANTS: usize = 250;
const DATABASES: usize = TENANTS;
const CAP: usize = 50;
const CLIENTS: usize = 25;
/// Each client goes through its tenants this many times.
const ROUNDS: usize = 4;

fn database_of(prefix: &str, tenant: usize) -> String {
    format!("{prefix}_{}", tenant % DATABASES)
}

/// Backends the server has for the tenant databases right now.
async fn server_backends(su: &Client, prefix: &str) -> i64 {
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE $1 || '\\_%'",
        &[&prefix],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tenant_databases_share_a_fifty_connection_budget() {
    let prefix = unique_name("tdb");
    // Created concurrently: CREATE DATABASE from template1 is quick but not free.
    let mut creating = Vec::new();
    for k in 0..DATABASES {
        let name = format!("{prefix}_{k}");
        creating.push(tokio::spawn(async move {
            create_database(&name, String::new()).await;
        }));
        if creating.len() == 4 {
            for c in creating.drain(..) {
                c.await.unwrap();
            }
        }
    }
    for c in creating {
        c.await.unwrap();
    }
    let mut tenants = String::new();
    for t in 0..TENANTS {
        tenants.push_str(&format!(
            "[[tenants]]\nid = \"t{t}\"\ndatabase = \"{}\"\n\n",
            database_of(&prefix, t)
        ));
    }
    let pg = PgServer::shared();
    let text = format!(
        "{base}\n[[users]]\nname = \"fleet\"\npassword = \"{PASSWORD}\"\ntenant_from = \"switch\"\n\
         allowed_tenants = [\"t*\"]\n\n\
         [[users]]\nname = \"{ADMIN}\"\npassword = \"{ADMIN_PASSWORD}\"\nbypass_policy = true\n\n\
         [tenancy]\nisolation = \"database\"\ndatabase_pool_size = 2\nmax_database_connections = {CAP}\n\n{tenants}",
        base = base_config_toml(pg)
    );
    let mut config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    config.proxy.admin_users = vec![ADMIN.into()];
    config.databases[0].pool_mode = PoolMode::Transaction;
    config.databases[0].query_wait_timeout = 60.0;
    let proxy = Arc::new(TestProxy::start(config).await);
    let su = pg.superuser_client("postgres").await.unwrap();
    let tally = Arc::new(Tally::default());
    within(240, "tenant databases", async {
        let done = tokio_util::sync::CancellationToken::new();
        // Watch the server side: never more than the cap for the tenant databases.
        let watcher = {
            let (done, prefix) = (done.clone(), prefix.clone());
            let su = pg.superuser_client("postgres").await.unwrap();
            tokio::spawn(async move {
                let mut max = 0;
                while !done.is_cancelled() {
                    max = max.max(server_backends(&su, &prefix).await);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                max
            })
        };
        let mut load = Vec::new();
        for c in 0..CLIENTS {
            let (proxy, tally, prefix) = (proxy.clone(), tally.clone(), prefix.clone());
            load.push(tokio::spawn(async move {
                let client = proxy.connect("fleet", PASSWORD, "app").await.unwrap();
                let mine = (c..TENANTS).step_by(CLIENTS);
                for t in std::iter::repeat_n(mine, ROUNDS).flatten() {
                    let switch = format!("SET tenantgate.tenant = 't{t}'");
                    tally.record(client.simple_query(&switch).await, "switch");
                    let row = client
                        .query_one(
                            "SELECT current_database()::text, current_setting('app.current_tenant')",
                            &[],
                        )
                        .await;
                    match row {
                        Ok(r) => {
                            let (db, tenant): (String, String) = (r.get(0), r.get(1));
                            assert_eq!(db, database_of(&prefix, t), "tenant t{t}");
                            assert_eq!(tenant, format!("t{t}"));
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tally.record(Err::<(), _>(e), "query"),
                    }
                }
            }));
        }
        for l in load {
            l.await.unwrap();
        }
        done.cancel();
        let max_backends = watcher.await.unwrap();
        assert!(
            max_backends <= CAP as i64,
            "{max_backends} server connections to tenant databases (cap {CAP})"
        );
        assert_eq!(tally.failed.load(Ordering::Relaxed), 0);
        assert_eq!(tally.ok.load(Ordering::Relaxed), 2 * ROUNDS * TENANTS);
        // The console agrees: at most CAP servers, and pools come and go.
        let admin = proxy.connect(ADMIN, ADMIN_PASSWORD, "tenantgate").await.unwrap();
        let lists = admin.simple_query("SHOW LISTS").await.unwrap();
        let get = |name: &str| -> i64 {
            lists
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) if r.get(0) == Some(name) => {
                        r.get(1).and_then(|v| v.parse().ok())
                    }
                    _ => None,
                })
                .unwrap_or_else(|| panic!("SHOW LISTS has no {name}"))
        };
        assert!(get("tenant_database_servers") <= CAP as i64);
        assert_eq!(get("max_database_connections"), CAP as i64);
        assert!(get("tenant_database_pools") >= 1);
        // Every database got a pool, and the budget moved between them.
        assert!(get("tenant_database_pools_created") >= DATABASES as i64);
        assert!(get("tenant_database_evictions") > 0);
        assert!(server_backends(&su, &prefix).await <= CAP as i64);
    })
    .await;
    drop(su);
    match Arc::try_unwrap(proxy) {
        Ok(p) => p.shutdown().await.unwrap(),
        Err(_) => panic!("proxy still shared"),
    }
    for k in 0..DATABASES {
        drop_database(&format!("{prefix}_{k}")).await;
    }
}
