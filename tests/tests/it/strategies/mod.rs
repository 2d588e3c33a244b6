//! Isolation strategies behind one endpoint (issue 9): row isolation (shared tables, tenant
//! filter), schema isolation (`tenant_<id>` schemas, proxy-owned `search_path`) and database
//! isolation (a database per tenant, pools created on demand under a global server budget),
//! on a real PostgreSQL, driven with tokio-postgres through the proxy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tenantgate_config::{Config, PoolMode};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::pipeline;
use tenantgate_tests::proxy::*;
use tenantgate_tests::wire::RawConn;
use tenantgate_tests::{unique_name, within};
use tokio_postgres::{Client, SimpleQueryMessage};

mod budget;
mod reload;

const ADMIN: &str = "strat_admin";
const ADMIN_PASSWORD: &str = "strat_admin_pw";
/// Users with a fixed tenant each: one per strategy.
const ROW_USER: &str = "rowco_app";
const SCHEMA_USER: &str = "schemaco_app";
const DB_USER: &str = "dbco_app";
const PASSWORD: &str = "strat_pw";
/// The same query every tenant's app runs, whatever its strategy.
const APP_QUERY: &str =
    "SELECT item FROM orders WHERE tenant_id = current_setting('app.current_tenant') ORDER BY id";

/// The shared database: row-isolated `orders` (rowco and otherco), a shared `plans`, and the
/// schemas of the schema-isolated tenants schemaco and victim.
const MAIN_SQL: &str = "
SET ROLE tg_server;
CREATE TABLE orders (tenant_id text NOT NULL, id bigserial, item text, PRIMARY KEY (tenant_id, id));
INSERT INTO orders (tenant_id, item) VALUES ('rowco', 'row-1'), ('rowco', 'row-2'), ('otherco', 'other-1');
CREATE TABLE plans (id int PRIMARY KEY, name text);
INSERT INTO plans VALUES (1, 'free'), (2, 'pro');
CREATE SCHEMA tenant_schemaco;
CREATE TABLE tenant_schemaco.orders (tenant_id text NOT NULL, id bigserial PRIMARY KEY, item text);
INSERT INTO tenant_schemaco.orders (tenant_id, item) VALUES ('schemaco', 'schema-1');
CREATE SCHEMA tenant_victim;
CREATE TABLE tenant_victim.orders (tenant_id text NOT NULL, id bigserial PRIMARY KEY, item text);
INSERT INTO tenant_victim.orders (tenant_id, item) VALUES ('victim', 'victim-secret');
RESET ROLE;
";

/// A tenant's own database.
fn tenant_db_sql(tenant: &str, item: &str) -> String {
    format!(
        "SET ROLE tg_server;
         CREATE TABLE orders (tenant_id text NOT NULL, id bigserial PRIMARY KEY, item text);
         INSERT INTO orders (tenant_id, item) VALUES ('{tenant}', '{item}');
         RESET ROLE;"
    )
}

/// Creates a database owned by the proxy's server role and runs `sql` in it.
async fn create_database(name: &str, sql: String) {
    let pg = PgServer::shared();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        pg.run_sql(
            "postgres",
            &format!(
                "CREATE DATABASE {name} OWNER {} STRATEGY FILE_COPY",
                pg::SERVICE_USER
            ),
        )?;
        if !sql.is_empty() {
            pg.run_sql(&name, &sql)?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("creating a database: {e:#}"));
}

async fn drop_database(name: &str) {
    let pg = PgServer::shared();
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    let _ = tokio::task::spawn_blocking(move || pg.run_sql("postgres", &sql)).await;
}

/// The three-strategy fixture: the main database and the tenant databases of dbco and
/// dbvictim; returns the main database's name (the others are `<main>_dbco`, `<main>_dbvictim`).
async fn fixture() -> String {
    let main = unique_name("strat");
    create_database(&main, MAIN_SQL.to_string()).await;
    create_database(&format!("{main}_dbco"), tenant_db_sql("dbco", "db-1")).await;
    create_database(
        &format!("{main}_dbvictim"),
        tenant_db_sql("dbvictim", "dbvictim-secret"),
    )
    .await;
    main
}

/// Stops the proxy and drops the fixture's tenant databases.
async fn teardown(proxy: TestProxy, main: &str) {
    proxy.shutdown().await.unwrap();
    for db in ["dbco", "dbvictim"] {
        drop_database(&format!("{main}_{db}")).await;
    }
}

fn user(
    name: &str,
    tenant: Option<&str>,
    tenant_from: Option<tenantgate_config::TenantSource>,
    allowed_tenants: Vec<String>,
) -> tenantgate_config::UserConfig {
    tenantgate_config::UserConfig {
        name: name.into(),
        password: Some(PASSWORD.into()),
        password_env: None,
        auth_type: None,
        tenant: tenant.map(str::to_string),
        tenant_from,
        allowed_tenants,
        max_tenant_connections: None,
        databases: vec![],
        bypass_policy: false,
    }
}

fn user_toml(name: &str, tenant: &str) -> String {
    format!("[[users]]\nname = \"{name}\"\npassword = \"{PASSWORD}\"\ntenant = \"{tenant}\"\n\n")
}

/// One endpoint (`app`) for all three strategies: row by default, schemaco and victim in their
/// schemas, dbco and dbvictim in their databases.
fn config(main: &str, mode: PoolMode, extra: &str) -> Config {
    let pg = PgServer::shared();
    let text = format!(
        "{base}\n{row}{schema}{db}{lost}\
         [[users]]\nname = \"{ADMIN}\"\npassword = \"{ADMIN_PASSWORD}\"\nbypass_policy = true\n\n\
         [tenancy]\nshared_tables = [\"plans\"]\n{extra}\n\
         [[tenants]]\nid = \"schemaco\"\nisolation = \"schema\"\n\n\
         [[tenants]]\nid = \"victim\"\nisolation = \"schema\"\n\n\
         [[tenants]]\nid = \"lostco\"\nisolation = \"schema\"\n\n\
         [[tenants]]\nid = \"dbco\"\ndatabase = \"{main}_dbco\"\n\n\
         [[tenants]]\nid = \"dbvictim\"\ndatabase = \"{main}_dbvictim\"\n",
        base = base_config_toml(pg),
        row = user_toml(ROW_USER, "rowco"),
        schema = user_toml(SCHEMA_USER, "schemaco"),
        db = user_toml(DB_USER, "dbco"),
        lost = user_toml("lostco_app", "lostco"),
    );
    let mut config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    config.proxy.admin_users = vec![ADMIN.into()];
    let d = &mut config.databases[0];
    d.dbname = Some(main.to_string());
    d.pool_mode = mode;
    d.pool_size = 4;
    d.query_wait_timeout = 20.0;
    // Clients may pass settings in `options` (checked: see the cross-tenant test).
    d.forward_options = true;
    config
}

async fn items(client: &Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The error must be tenantgate's rejection with `rule`.
fn assert_rule(
    result: Result<impl std::fmt::Debug, tokio_postgres::Error>,
    rule: &str,
    what: &str,
) {
    let err = match result {
        Ok(v) => panic!("{what}: expected a {rule} rejection, got {v:?}"),
        Err(e) => e,
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not an ErrorResponse: {err:?}"));
    assert_eq!(
        db.detail(),
        Some(format!("rule: {rule}").as_str()),
        "{what}: {} {}",
        db.code().code(),
        db.message()
    );
    assert!(db.message().starts_with("tenantgate: "), "{what}: {db:?}");
}

async fn simple_one(client: &Client, sql: &str) -> Option<String> {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_strategies_behind_one_endpoint_return_each_tenants_own_data() {
    let main = fixture().await;
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let proxy = TestProxy::start(config(&main, mode, "")).await;
        within(60, "three strategies", async {
            let row = proxy.connect(ROW_USER, PASSWORD, "app").await.unwrap();
            let schema = proxy.connect(SCHEMA_USER, PASSWORD, "app").await.unwrap();
            let db = proxy.connect(DB_USER, PASSWORD, "app").await.unwrap();
            // The same app query, three places.
            assert_eq!(items(&row, APP_QUERY).await, ["row-1", "row-2"], "{mode:?}");
            assert_eq!(items(&schema, APP_QUERY).await, ["schema-1"], "{mode:?}");
            assert_eq!(items(&db, APP_QUERY).await, ["db-1"], "{mode:?}");
            // Each session is where its strategy puts it.
            assert_eq!(
                simple_one(&schema, "SELECT current_schema()")
                    .await
                    .as_deref(),
                Some("tenant_schemaco")
            );
            assert_eq!(
                simple_one(&db, "SELECT current_database()").await,
                Some(format!("{main}_dbco"))
            );
            // No tenant filter is needed where the schema or database is the tenant's alone;
            // row isolation still demands one.
            let count = "SELECT count(*)::int8 FROM orders";
            assert_rule(
                row.query_one(count, &[]).await,
                "tenant-filter-missing",
                "row count",
            );
            let n: i64 = schema.query_one(count, &[]).await.unwrap().get(0);
            assert_eq!(n, 1);
            let n: i64 = db.query_one(count, &[]).await.unwrap().get(0);
            assert_eq!(n, 1);
            // Shared tables are readable from the tenant schema (search_path includes public).
            let plans = items(&schema, "SELECT name FROM plans ORDER BY id").await;
            assert_eq!(plans, ["free", "pro"]);
        })
        .await;
        proxy.shutdown().await.unwrap();
    }
    // Writes without a tenant column land in the tenant's own schema / database.
    let proxy = TestProxy::start(config(&main, PoolMode::Transaction, "")).await;
    within(30, "writes", async {
        let schema = proxy.connect(SCHEMA_USER, PASSWORD, "app").await.unwrap();
        let db = proxy.connect(DB_USER, PASSWORD, "app").await.unwrap();
        let insert = "INSERT INTO orders (tenant_id, item) VALUES (current_setting('app.current_tenant'), $1)";
        schema.execute(insert, &[&"schema-2"]).await.unwrap();
        db.execute(insert, &[&"db-2"]).await.unwrap();
        let su = PgServer::shared().superuser_client(&main).await.unwrap();
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM tenant_schemaco.orders WHERE item = 'schema-2'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        let n: i64 = su
            .query_one("SELECT count(*) FROM public.orders WHERE item LIKE '%-2' AND tenant_id <> 'rowco'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "nothing leaked into the shared table");
        assert_eq!(items(&db, APP_QUERY).await, ["db-1", "db-2"]);
    })
    .await;
    teardown(proxy, &main).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_schema_and_cross_database_attempts_are_rejected() {
    let main = fixture().await;
    let proxy = TestProxy::start(config(&main, PoolMode::Transaction, "")).await;
    within(60, "cross-tenant attempts", async {
        let schema = proxy.connect(SCHEMA_USER, PASSWORD, "app").await.unwrap();
        let attempts: &[(&str, &str)] = &[
            ("SELECT item FROM tenant_victim.orders", "cross-tenant-schema"),
            (
                "SELECT o.item FROM orders o JOIN tenant_victim.orders v ON v.id = o.id",
                "cross-tenant-schema",
            ),
            (
                "SELECT item FROM orders WHERE id IN (SELECT id FROM \"tenant_victim\".\"orders\")",
                "cross-tenant-schema",
            ),
            (
                "WITH v AS (SELECT item FROM tenant_victim.orders) SELECT item FROM v",
                "cross-tenant-schema",
            ),
            (
                "INSERT INTO orders (tenant_id, item) SELECT tenant_id, item FROM tenant_victim.orders",
                "cross-tenant-schema",
            ),
            (
                "UPDATE tenant_victim.orders SET item = item WHERE id = $1",
                "cross-tenant-schema",
            ),
            ("DELETE FROM tenant_victim.orders", "cross-tenant-schema"),
            (
                "SELECT nextval('tenant_victim.orders_id_seq')",
                "cross-tenant-schema",
            ),
            (
                "SELECT 'tenant_victim.orders'::regclass::oid",
                "cross-tenant-schema",
            ),
            ("SELECT to_regclass($1)", "forbidden-function"),
            ("SET search_path = tenant_victim, public", "tenant-setting-write"),
            ("SET LOCAL search_path = tenant_victim", "tenant-setting-write"),
            ("SET SCHEMA 'tenant_victim'", "tenant-setting-write"),
            ("RESET search_path", "tenant-setting-write"),
            (
                "SELECT set_config('search_path', 'tenant_victim', false)",
                "tenant-setting-write",
            ),
            // The row-isolated table in public still needs its tenant filter.
            ("SELECT item FROM public.orders", "tenant-filter-missing"),
            ("INSERT INTO plans (id, name) VALUES ($1, $2)", "shared-table-write"),
            (
                "SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(a int)",
                "forbidden-function",
            ),
            ("CREATE TABLE tenant_victim.x (a int)", "ddl"),
        ];
        for (sql, rule) in attempts {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                if sql.contains("$2") {
                    vec![&3i32, &"x"]
                } else if sql.contains("$1") && sql.contains("regclass") {
                    vec![&"tenant_victim.orders"]
                } else if sql.contains("$1") {
                    vec![&1i64]
                } else {
                    vec![]
                };
            if params.is_empty() {
                assert_rule(schema.simple_query(sql).await, rule, sql);
            }
            assert_rule(schema.query(*sql, &params).await, rule, sql);
        }
        // lastval() would answer with whatever the pooled server last generated, possibly for
        // another tenant: refused in transaction mode.
        let err = schema.simple_query("SELECT lastval()").await.unwrap_err();
        assert_eq!(err.as_db_error().unwrap().code().code(), "0A000");
        // Setting search_path to exactly the proxy's value (as tenant libraries do) is a no-op.
        schema
            .simple_query("SET search_path = tenant_schemaco, public")
            .await
            .unwrap();
        // Prisma qualifies names with the tenant's own schema: allowed.
        let own = items(
            &schema,
            "SELECT \"tenant_schemaco\".\"orders\".\"item\" FROM \"tenant_schemaco\".\"orders\" ORDER BY 1",
        )
        .await;
        assert_eq!(own[0], "schema-1");
        // The connection is still usable and still in its schema.
        assert_eq!(items(&schema, APP_QUERY).await[0], "schema-1");
        assert_eq!(
            simple_one(&schema, "SHOW search_path").await.as_deref(),
            Some("tenant_schemaco, public")
        );

        let db = proxy.connect(DB_USER, PASSWORD, "app").await.unwrap();
        let victim_db = format!("{main}_dbvictim");
        let attempts = [
            (format!("SELECT item FROM {victim_db}.public.orders"), "unknown-relation"),
            (
                "SELECT * FROM dblink('dbname=x', 'SELECT item FROM orders') AS t(i text)".into(),
                "forbidden-function",
            ),
            ("CREATE TABLE stolen (a int)".into(), "ddl"),
            ("SET ROLE postgres".into(), "role-change"),
            ("COPY orders TO PROGRAM 'cat'".into(), "copy"),
            ("SELECT query_to_xml('SELECT 1', true, true, '')".into(), "forbidden-function"),
        ];
        for (sql, rule) in &attempts {
            assert_rule(db.simple_query(sql).await, rule, sql);
        }
        assert_eq!(items(&db, APP_QUERY).await, ["db-1"]);
        // A row tenant cannot reach a tenant schema: not by name (even with a filter and a
        // tenant column), not through search_path.
        let row = proxy.connect(ROW_USER, PASSWORD, "app").await.unwrap();
        for sql in [
            "SELECT item FROM tenant_victim.orders WHERE tenant_id = current_setting('app.current_tenant')",
            "INSERT INTO tenant_victim.orders (tenant_id, item) VALUES (current_setting('app.current_tenant'), $1)",
        ] {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                if sql.contains("$1") { vec![&"planted"] } else { vec![] };
            assert_rule(row.query(sql, &params).await, "cross-tenant-schema", sql);
        }
        assert_rule(
            row.simple_query("SET search_path = tenant_victim").await,
            "tenant-setting-write",
            "row tenant setting search_path to a tenant schema",
        );
        row.simple_query("SET search_path = public").await.unwrap();
        assert_eq!(items(&row, APP_QUERY).await, ["row-1", "row-2"]);
        // Nor through a startup parameter.
        let mut c = proxy.client_config(ROW_USER, PASSWORD, "app");
        c.options("-c search_path=tenant_victim");
        let Err(err) = connect(&c).await else {
            panic!("a startup search_path naming a tenant schema must be refused");
        };
        assert_eq!(err.as_db_error().unwrap().code().code(), "42501", "{err:?}");
        // A schema tenant whose schema lacks a table (or has no schema yet) does not fall
        // through to the shared table of the same name.
        let lost = proxy.connect("lostco_app", PASSWORD, "app").await.unwrap();
        assert_rule(
            lost.simple_query("SELECT item FROM orders").await,
            "unknown-relation",
            "schema tenant without the table",
        );
        assert_eq!(
            items(&lost, "SELECT name FROM plans ORDER BY id").await,
            ["free", "pro"]
        );
    })
    .await;
    // Nothing of the victims changed.
    let su = PgServer::shared().superuser_client(&main).await.unwrap();
    let v: Vec<String> = su
        .query("SELECT item FROM tenant_victim.orders", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(v, ["victim-secret"]);
    teardown(proxy, &main).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_user_moves_between_strategies_per_transaction() {
    let main = fixture().await;
    let extra = "";
    let mut cfg = config(&main, PoolMode::Transaction, extra);
    let allowed = vec!["rowco".into(), "schemaco".into(), "dbco".into()];
    let switch = Some(tenantgate_config::TenantSource::Switch);
    cfg.users.push(user("switcher", None, switch, allowed));
    let proxy = TestProxy::start(cfg).await;
    within(60, "switching strategies", async {
        let c = proxy.connect("switcher", PASSWORD, "app").await.unwrap();
        // A prepared statement made for one tenant is re-checked when the tenant changes.
        c.simple_query("SET tenantgate.tenant = 'schemaco'")
            .await
            .unwrap();
        let unfiltered = c
            .prepare("SELECT item FROM orders ORDER BY id")
            .await
            .unwrap();
        let filtered = c.prepare(APP_QUERY).await.unwrap();
        for round in 0..3 {
            for (tenant, want) in [
                ("rowco", vec!["row-1", "row-2"]),
                ("schemaco", vec!["schema-1"]),
                ("dbco", vec!["db-1"]),
            ] {
                c.simple_query(&format!("SET tenantgate.tenant = '{tenant}'"))
                    .await
                    .unwrap();
                let got: Vec<String> = c
                    .query(&filtered, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                assert_eq!(got, want, "round {round}, {tenant}");
                let plain = c.query(&unfiltered, &[]).await;
                if tenant == "rowco" {
                    assert_rule(plain, "tenant-filter-missing", "unfiltered as rowco");
                } else {
                    assert_eq!(plain.unwrap().len(), want.len(), "{tenant}");
                }
            }
        }
        // SET LOCAL cannot carry a transaction into another database.
        c.simple_query("SET tenantgate.tenant = 'rowco'")
            .await
            .unwrap();
        c.simple_query("BEGIN").await.unwrap();
        let err = c
            .simple_query("SET LOCAL tenantgate.tenant = 'dbco'")
            .await
            .unwrap_err();
        assert_eq!(err.as_db_error().unwrap().code().code(), "0A000");
        c.simple_query("ROLLBACK").await.unwrap();
        assert_eq!(items(&c, APP_QUERY).await, ["row-1", "row-2"]);

        // A switch to a database tenant pipelined behind a query the server has not answered:
        // the unfiltered query after it (allowed for a database tenant) must run in dbco's
        // database, not on the row tenants' server the first query holds.
        let mut raw = RawConn::connect(proxy.addr).await.unwrap();
        raw.startup("switcher", pg::APP_DB, Some(PASSWORD))
            .await
            .unwrap();
        let batch = [
            pipeline::query("SET tenantgate.tenant = 'rowco'"),
            pipeline::query(APP_QUERY),
            pipeline::query("SET tenantgate.tenant = 'dbco'"),
            pipeline::query("SELECT item FROM orders ORDER BY id"),
        ]
        .concat();
        let replies = pipeline::round_trip(&mut raw, &batch, 4).await.unwrap();
        let rows: Vec<String> = pipeline::summarize(&replies)
            .into_iter()
            .filter(|m| m.starts_with("Row"))
            .collect();
        assert_eq!(rows, ["Row[row-1]", "Row[row-2]", "Row[db-1]"]);
    })
    .await;
    teardown(proxy, &main).await;
}

/// Two schema tenants on one server connection, running the same prepared statements in turn:
/// the server-side statement is shared (same text), its plan follows `search_path`, and each
/// tenant only ever sees its own schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_tenants_sharing_one_server_and_its_prepared_statements_stay_apart() {
    let main = fixture().await;
    let mut cfg = config(&main, PoolMode::Transaction, "");
    cfg.databases[0].pool_size = 1;
    cfg.users
        .push(user("victim_app", Some("victim"), None, vec![]));
    let proxy = TestProxy::start(cfg).await;
    within(60, "shared server, two schemas", async {
        let a = proxy.connect(SCHEMA_USER, PASSWORD, "app").await.unwrap();
        let b = proxy.connect("victim_app", PASSWORD, "app").await.unwrap();
        let unfiltered = "SELECT item FROM orders ORDER BY id";
        let (a1, a2) = (
            a.prepare(APP_QUERY).await.unwrap(),
            a.prepare(unfiltered).await.unwrap(),
        );
        let (b1, b2) = (
            b.prepare(APP_QUERY).await.unwrap(),
            b.prepare(unfiltered).await.unwrap(),
        );
        for round in 0..20 {
            for (client, stmts, want) in [
                (&a, [&a1, &a2], "schema-1"),
                (&b, [&b1, &b2], "victim-secret"),
            ] {
                for stmt in stmts {
                    let rows = client.query(stmt, &[]).await.unwrap();
                    let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    assert_eq!(got, [want], "round {round}");
                }
                let got = items(client, unfiltered).await;
                assert_eq!(got, [want], "round {round}, unnamed");
            }
        }
    })
    .await;
    teardown(proxy, &main).await;
}

/// SHOW TENANTS names each tenant's strategy and placement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_tenants_reports_strategy_and_server_use() {
    let main = fixture().await;
    let proxy = TestProxy::start(config(&main, PoolMode::Session, "")).await;
    within(30, "SHOW TENANTS", async {
        let _row = proxy.connect(ROW_USER, PASSWORD, "app").await.unwrap();
        let _schema = proxy.connect(SCHEMA_USER, PASSWORD, "app").await.unwrap();
        let _db = proxy.connect(DB_USER, PASSWORD, "app").await.unwrap();
        let admin = proxy
            .connect(ADMIN, ADMIN_PASSWORD, "tenantgate")
            .await
            .unwrap();
        let rows: Vec<Vec<String>> = admin
            .simple_query("SHOW TENANTS")
            .await
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..5).map(|i| r.get(i).unwrap_or("").to_string()).collect())
                }
                _ => None,
            })
            .collect();
        let find = |t: &str| rows.iter().find(|r| r[0] == t).cloned().unwrap();
        assert_eq!(find("rowco")[1..], ["row", "", "1", "1"]);
        assert_eq!(
            find("schemaco")[1..],
            ["schema", "tenant_schemaco", "1", "1"]
        );
        assert_eq!(
            find("dbco")[1..],
            [
                "database".to_string(),
                format!("{main}_dbco"),
                "1".into(),
                "1".into()
            ]
        );
        let pools = admin.simple_query("SHOW POOLS").await.unwrap();
        let names: Vec<String> = pools
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        assert!(names.contains(&format!("app/{main}_dbco")), "{names:?}");
    })
    .await;
    teardown(proxy, &main).await;
}

/// Counts loads that failed, for the load tests.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
}

impl Tally {
    fn record<T>(&self, r: Result<T, tokio_postgres::Error>, what: &str) {
        match r {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("{what} failed: {e:?}");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Waits until `deadline`, for load loops.
fn running(deadline: Instant) -> bool {
    Instant::now() < deadline
}
