//! Hot reload (admin RELOAD; SIGHUP does the same in the binary): a valid new configuration
//! is applied without dropping clients, an invalid one is refused with every problem listed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_config::{Config, UserConfig};
use tenantgate_tests::pg::PgServer;
use tenantgate_tests::proxy::*;
use tenantgate_tests::within;

const ADMIN: &str = "reload_admin";
const ADMIN_PASSWORD: &str = "reload_admin_pw";

fn user(name: &str, password: &str) -> UserConfig {
    UserConfig {
        name: name.into(),
        password: Some(password.into()),
        password_env: None,
        auth_type: None,
        tenant: None,
        tenant_from: None,
        allowed_tenants: vec![],
        max_tenant_connections: None,
        databases: vec![],
        bypass_policy: true,
    }
}

fn config() -> Config {
    let mut config = base_config(PgServer::shared());
    config.users.push(user(ADMIN, ADMIN_PASSWORD));
    config.proxy.admin_users = vec![ADMIN.into()];
    config.databases[0].pool_mode = tenantgate_config::PoolMode::Transaction;
    config.databases[0].pool_size = 2;
    config
}

fn write(path: &std::path::Path, config: &Config) {
    let text = toml::to_string(config).expect("config serializes to TOML");
    std::fs::write(path, text).expect("write config file");
}

async fn reload(proxy: &TestProxy) -> Result<(), tokio_postgres::Error> {
    let admin = proxy.connect(ADMIN, ADMIN_PASSWORD, "tenantgate").await?;
    admin.simple_query("RELOAD").await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_keeps_clients_and_applies_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tenantgate.toml");
    let mut cfg = config();
    write(&path, &cfg);
    let proxy = Arc::new(TestProxy::start_with_path(cfg.clone(), Some(path.clone())).await);
    within(90, "reload under load", async {
        let done = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut load = Vec::new();
        for _ in 0..8 {
            let (proxy, done, failed) = (proxy.clone(), done.clone(), failed.clone());
            load.push(tokio::spawn(async move {
                let client = proxy.connect_service().await;
                while Instant::now() < deadline {
                    match client.query_one("SELECT 1::int4", &[]).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("query failed during reload: {e:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        // A new user and a bigger pool, applied while the load runs.
        cfg.users.push(user("newbie", "newbie_pw"));
        cfg.databases[0].pool_size = 4;
        write(&path, &cfg);
        reload(&proxy).await.expect("valid reload is accepted");
        let newbie = proxy
            .connect("newbie", "newbie_pw", "app")
            .await
            .expect("user added by reload logs in");
        newbie.simple_query("SELECT 1").await.expect("newbie query");

        // An invalid file is refused as a whole; the previous configuration stays in force.
        let mut bad = cfg.clone();
        bad.databases[0].pool_size = 0;
        bad.users.retain(|u| u.name != "newbie");
        write(&path, &bad);
        let err = reload(&proxy).await.expect_err("invalid reload is refused");
        assert_eq!(sqlstate(&err), Some("F0000"), "{err:?}");
        let detail = err
            .as_db_error()
            .and_then(|d| d.detail().map(str::to_string))
            .unwrap_or_default();
        assert!(
            detail.contains("databases[0].pool_size: must be > 0"),
            "{detail}"
        );
        proxy
            .connect("newbie", "newbie_pw", "app")
            .await
            .expect("old configuration still in force after a refused reload");

        for task in load {
            task.await.expect("load task");
        }
        assert_eq!(
            failed.load(Ordering::Relaxed),
            0,
            "queries failed during reload"
        );
        assert!(done.load(Ordering::Relaxed) > 100, "load ran");
    })
    .await;
}

/// A statement prepared while the policy was off was never checked. After a reload to enforce,
/// a Bind of it is refused (26000, with a hint to prepare it again) in both pool modes, and
/// preparing it again works.
#[tokio::test]
async fn statements_prepared_before_the_policy_applied_must_be_prepared_again() {
    for mode in [
        tenantgate_config::PoolMode::Session,
        tenantgate_config::PoolMode::Transaction,
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tenantgate.toml");
        let mut cfg = config();
        cfg.databases[0].pool_mode = mode;
        cfg.policy.mode = tenantgate_config::PolicyMode::Off;
        write(&path, &cfg);
        let proxy = TestProxy::start_with_path(cfg.clone(), Some(path.clone())).await;
        within(30, "policy turned on under a prepared statement", async {
            let acme = proxy.connect_acme().await;
            let old = acme.prepare("SELECT $1::int4 + 1").await.unwrap();
            cfg.policy.mode = tenantgate_config::PolicyMode::Enforce;
            write(&path, &cfg);
            reload(&proxy).await.unwrap();

            let err = acme.query_one(&old, &[&1i32]).await.unwrap_err();
            let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
            assert_eq!(db.code().code(), "26000", "{mode:?}: {db:?}");
            let hint = db.hint().unwrap_or_default();
            assert!(hint.contains("prepare it again"), "{mode:?}: {db:?}");

            let new = acme.prepare("SELECT $1::int4 + 1").await.unwrap();
            let n: i32 = acme.query_one(&new, &[&1i32]).await.unwrap().get(0);
            assert_eq!(n, 2);
        })
        .await;
    }
}
