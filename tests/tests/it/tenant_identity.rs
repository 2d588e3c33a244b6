//! Tenant identity: config events and token contents after which a statement could run under a
//! tenant other than the one the proxy checked it for.

use tenantgate_config::{Config, PoolMode, TenantSource, UserConfig};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::pipeline;
use tenantgate_tests::proxy::*;
use tenantgate_tests::wire::{self, RawConn};
use tenantgate_tests::{unique_name, within};

const PASSWORD: &str = "review_pw";
const SWITCHER: &str = "review_switcher";
const ADMIN: &str = "review_admin";

/// Main database: row-isolated `orders` (rowco, otherco — the switch user may never act for
/// otherco) and the schema of the schema-isolated tenant schemaco. No RLS: the proxy alone
/// stands between tenants, as in the RLS-off half of the isolation suite.
const MAIN_SQL: &str = "
SET ROLE tg_server;
CREATE TABLE orders (tenant_id text NOT NULL, id bigserial, item text, PRIMARY KEY (tenant_id, id));
INSERT INTO orders (tenant_id, item) VALUES ('rowco', 'row-1'), ('rowco', 'row-2'), ('otherco', 'other-1');
CREATE SCHEMA tenant_schemaco;
CREATE TABLE tenant_schemaco.orders (tenant_id text NOT NULL, id bigserial PRIMARY KEY, item text);
INSERT INTO tenant_schemaco.orders (tenant_id, item) VALUES ('schemaco', 'schema-1');
RESET ROLE;
";

fn run_sql(db: &str, sql: &str) {
    PgServer::shared()
        .run_sql(db, sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:#}"));
}

async fn create_database(name: &str, sql: &str) {
    let (name, sql) = (name.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || {
        run_sql(
            "postgres",
            &format!(
                "CREATE DATABASE {name} OWNER {} STRATEGY FILE_COPY",
                pg::SERVICE_USER
            ),
        );
        run_sql(&name, &sql);
    })
    .await
    .unwrap();
}

fn user(
    name: &str,
    tenant: Option<&str>,
    from: Option<TenantSource>,
    allowed: &[&str],
) -> UserConfig {
    UserConfig {
        name: name.into(),
        password: Some(PASSWORD.into()),
        password_env: None,
        auth_type: None,
        tenant: tenant.map(str::to_string),
        tenant_from: from,
        allowed_tenants: allowed.iter().map(|s| s.to_string()).collect(),
        max_tenant_connections: None,
        databases: vec![],
        bypass_policy: false,
    }
}

/// Database `app` on `main`; schemaco in its schema, dbco in database `<main>_dbco`; a switch
/// user allowed `allowed`.
fn strategies_config(main: &str, mode: PoolMode, pool_size: usize, allowed: &[&str]) -> Config {
    let text = format!(
        "{base}\n\
         [[tenants]]\nid = \"schemaco\"\nisolation = \"schema\"\n\n\
         [[tenants]]\nid = \"dbco\"\ndatabase = \"{main}_dbco\"\n",
        base = base_config_toml(PgServer::shared()),
    );
    let mut config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let d = &mut config.databases[0];
    d.dbname = Some(main.to_string());
    d.pool_mode = mode;
    d.pool_size = pool_size;
    d.query_wait_timeout = 20.0;
    config
        .users
        .push(user(SWITCHER, None, Some(TenantSource::Switch), allowed));
    let mut admin = user(ADMIN, None, None, &[]);
    admin.bypass_policy = true;
    config.users.push(admin);
    config.proxy.admin_users = vec![ADMIN.into()];
    config
}

async fn switcher(proxy: &TestProxy) -> RawConn {
    let mut c = RawConn::connect(proxy.addr).await.unwrap();
    c.startup(SWITCHER, "app", Some(PASSWORD)).await.unwrap();
    c
}

async fn simple(c: &mut RawConn, sql: &str) -> Vec<wire::BackendMessage> {
    pipeline::round_trip(c, &pipeline::query(sql), 1)
        .await
        .unwrap()
}

fn rows(msgs: &[wire::BackendMessage]) -> Vec<String> {
    pipeline::summarize(msgs)
        .into_iter()
        .filter(|m| m.starts_with("Row"))
        .collect()
}

/// A reload that takes a tenant out of a switch user's `allowed_tenants` does not reach the
/// user's connected sessions: they keep the login-time user entry and may still switch to the
/// revoked tenant (and run statements for it) after the reload. New logins are refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_revokes_a_tenant_applies_to_connected_switch_sessions() {
    let main = unique_name("rvt_rl");
    create_database(&main, MAIN_SQL).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenantgate.toml");
    let cfg = strategies_config(&main, PoolMode::Transaction, 2, &["rowco", "otherco"]);
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let proxy = TestProxy::start_with_path(cfg.clone(), Some(path.clone())).await;
    let outcome = within(60, "revoked tenant", async {
        let mut c = switcher(&proxy).await;
        simple(&mut c, "SET tenantgate.tenant = 'rowco'").await;
        // otherco is revoked.
        let mut revoked = cfg.clone();
        revoked
            .users
            .iter_mut()
            .find(|u| u.name == SWITCHER)
            .unwrap()
            .allowed_tenants = vec!["rowco".into()];
        std::fs::write(&path, toml::to_string(&revoked).unwrap()).unwrap();
        let admin = proxy.connect(ADMIN, PASSWORD, "tenantgate").await.unwrap();
        admin.simple_query("RELOAD").await.unwrap();
        // A new session of the same user is refused otherco...
        let mut fresh = switcher(&proxy).await;
        let fresh_switch = pipeline::summarize(&simple(&mut fresh, "SET tenantgate.tenant = 'otherco'").await);
        // ... the connected one is not.
        let old_switch = pipeline::summarize(&simple(&mut c, "SET tenantgate.tenant = 'otherco'").await);
        let read = pipeline::summarize(
            &simple(
                &mut c,
                "SELECT item FROM orders WHERE tenant_id = current_setting('app.current_tenant') ORDER BY id",
            )
            .await,
        );
        (fresh_switch, old_switch, read)
    })
    .await;
    proxy.shutdown().await.unwrap();
    let (fresh, old, read) = outcome;
    assert!(
        fresh.iter().any(|m| m.starts_with("Error")),
        "new session: {fresh:?}"
    );
    assert!(
        old.iter().any(|m| m.starts_with("Error")),
        "connected session switched to a tenant revoked by the reload: {old:?}, then read {read:?}"
    );
}

/// A token for `tenant`, valid for five minutes.
fn token(tenant: &str) -> String {
    crate::jwt::token(tenant, crate::jwt::now() + 300, crate::jwt::SECRET)
}

const RLS_SQL: &str = "
SET ROLE tg_server;
CREATE TABLE orders (tenant_id text NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id));
INSERT INTO orders VALUES ('acme', 1), ('acme', 2), ('acme', 3), ('globex', 4);
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE orders FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON orders
    USING (tenant_id = current_setting('app.current_tenant', true))
    WITH CHECK (tenant_id = current_setting('app.current_tenant', true));
GRANT ALL ON ALL TABLES IN SCHEMA public TO app_rw;
RESET ROLE;
";

/// A JWT tenant claim is any non-empty string of up to 256 bytes, NUL included (`"\u0000"`).
/// The proxy marks a server whose inline tenant setting was undone with the sentinel value
/// `"\0unknown"` — and a token whose tenant is exactly that string then matches the sentinel:
/// the checkout sees nothing to change and runs the client's statements under whatever tenant
/// the server really has (here acme's), through RLS too (the setting itself is acme).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_tenant_with_a_nul_is_refused_and_inherits_nothing() {
    let db = PgServer::shared().new_database("rvt_jwt", &[RLS_SQL]).await;
    let mut cfg = base_config(PgServer::shared());
    let d = &mut cfg.databases[0];
    d.dbname = Some(db.clone());
    d.user = pg::APP_RW_USER.to_string();
    d.password = Some(pg::APP_RW_PASSWORD.to_string());
    d.pool_mode = PoolMode::Transaction;
    d.pool_size = 1;
    cfg.auth.jwt = Some(crate::jwt::hs256_config());
    let mut jwt_user = user("jwt_app", None, Some(TenantSource::Jwt), &[]);
    jwt_user.password = None;
    cfg.users.push(jwt_user);
    cfg.users
        .push(user("globex_app", Some("globex"), None, &[]));
    let proxy = TestProxy::start(cfg).await;
    let got = within(60, "sentinel tenant", async {
        let mut acme = RawConn::connect(proxy.addr).await.unwrap();
        acme.startup(ACME_USER, "app", Some(ACME_PASSWORD))
            .await
            .unwrap();
        let mut globex = RawConn::connect(proxy.addr).await.unwrap();
        globex
            .startup("globex_app", "app", Some(PASSWORD))
            .await
            .unwrap();
        let own = "SELECT id FROM orders WHERE tenant_id = current_setting('app.current_tenant')";
        // globex's first transaction (its settings are read back after it).
        assert_eq!(rows(&simple(&mut globex, own).await), ["Row[4]"]);
        // The one server now carries acme.
        assert_eq!(
            rows(&simple(&mut acme, own).await),
            ["Row[1]", "Row[2]", "Row[3]"]
        );
        // globex's next request fails at Bind: its inline tenant setting is undone with the
        // implicit transaction, the server keeps acme and is marked "tenant unknown".
        let failing = pipeline::simple_extended("SELECT $1::int4", &[Some("x")]);
        let replies = pipeline::round_trip(&mut globex, &failing, 1)
            .await
            .unwrap();
        assert!(
            pipeline::summarize(&replies)
                .iter()
                .any(|m| m == "Error 22P02"),
            "{:?}",
            pipeline::summarize(&replies)
        );
        // Refused at login: the tenant could never be set on the server, and must not match
        // the proxy's marker for a server whose tenant is unknown.
        proxy
            .connect("jwt_app", &token("\u{0}unknown"), "app")
            .await
            .map(|_| ())
    })
    .await;
    proxy.shutdown().await.unwrap();
    let err = got.expect_err("a token with a NUL in its tenant logged in");
    assert_eq!(sqlstate(&err), Some("28P01"), "{err:?}");
}
