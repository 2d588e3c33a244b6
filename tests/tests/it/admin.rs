//! The admin console (database `tenantgate`, users in `[proxy] admin_users`): SHOW commands
//! through psql and tokio-postgres, refusals, PAUSE/RESUME and SHUTDOWN.

use std::time::Duration;
use tenantgate_config::{Config, PoolMode};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::*;
use tenantgate_tests::{tools, within};
use tokio_postgres::{Client, SimpleQueryMessage};

const ADMIN: &str = "tg_admin";
const ADMIN_PASSWORD: &str = "tg_admin_pw";

/// The base config plus an admin user.
fn admin_config() -> Config {
    let mut config = base_config(PgServer::shared());
    let mut admin = config.users[0].clone();
    admin.name = ADMIN.into();
    admin.password = Some(ADMIN_PASSWORD.into());
    admin.tenant = None;
    admin.bypass_policy = true;
    config.users.push(admin);
    config.proxy.admin_users = vec![ADMIN.into()];
    config
}

async fn console(proxy: &TestProxy) -> Client {
    proxy
        .connect(ADMIN, ADMIN_PASSWORD, "tenantgate")
        .await
        .unwrap_or_else(|e| panic!("admin cannot open the console: {e:?}"))
}

/// Column names and rows (as text) of a single-result simple query.
async fn show(client: &Client, sql: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                if columns.is_empty() {
                    columns = r.columns().iter().map(|c| c.name().to_string()).collect();
                }
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
            }
            _ => {}
        }
    }
    (columns, rows)
}

/// The value of `column` in the row whose `key_column` is `key`.
fn cell(
    result: &(Vec<String>, Vec<Vec<Option<String>>>),
    key_column: &str,
    key: &str,
    column: &str,
) -> Option<String> {
    let (cols, rows) = result;
    let k = cols.iter().position(|c| c == key_column)?;
    let c = cols.iter().position(|c| c == column)?;
    rows.iter()
        .find(|r| r[k].as_deref() == Some(key))
        .and_then(|r| r[c].clone())
}

fn int(v: Option<String>) -> i64 {
    v.and_then(|s| s.parse().ok()).unwrap_or(-1)
}

/// A proxy with an acme client that ran three queries, and a console.
async fn busy_proxy() -> (TestProxy, Client, Client) {
    let proxy = TestProxy::start(admin_config()).await;
    let app_client = proxy.connect_acme().await;
    for _ in 0..3 {
        app_client.simple_query("SELECT 1").await.unwrap();
    }
    let admin = console(&proxy).await;
    (proxy, app_client, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_clients_and_servers_reflect_live_sessions() {
    within(60, "SHOW POOLS/CLIENTS/SERVERS", async {
        let (_proxy, _app_client, admin) = busy_proxy().await;
        let pools = show(&admin, "SHOW POOLS").await;
        assert_eq!(
            pools.0[..12],
            [
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
                "sv_idle",
                "sv_used",
                "sv_tested"
            ]
        );
        for c in ["sv_login", "maxwait", "maxwait_us", "pool_mode"] {
            assert!(pools.0.iter().any(|x| x == c), "SHOW POOLS lacks {c}");
        }
        assert_eq!(int(cell(&pools, "database", "app", "cl_active")), 1);
        // Session mode: the acme client holds its server.
        assert_eq!(int(cell(&pools, "database", "app", "sv_active")), 1);
        assert_eq!(
            cell(&pools, "database", "app", "pool_mode").as_deref(),
            Some("session")
        );
        assert_eq!(
            cell(&pools, "database", "app", "user").as_deref(),
            Some(pg::SERVICE_USER)
        );

        let clients = show(&admin, "SHOW CLIENTS;").await;
        for c in [
            "type",
            "user",
            "database",
            "state",
            "addr",
            "port",
            "connect_time",
            "tenant",
        ] {
            assert!(clients.0.iter().any(|x| x == c), "SHOW CLIENTS lacks {c}");
        }
        assert_eq!(
            cell(&clients, "user", ACME_USER, "tenant").as_deref(),
            Some(ACME_TENANT)
        );
        assert_eq!(
            cell(&clients, "user", ACME_USER, "state").as_deref(),
            Some("active")
        );
        assert_eq!(
            cell(&clients, "user", ACME_USER, "database").as_deref(),
            Some("app")
        );

        let servers = show(&admin, "show servers").await;
        assert_eq!(
            cell(&servers, "database", "app", "state").as_deref(),
            Some("active")
        );
        assert!(int(cell(&servers, "database", "app", "remote_pid")) > 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_stats_tenants_config_and_version() {
    within(60, "SHOW STATS/TENANTS/CONFIG", async {
        let (_proxy, _app_client, admin) = busy_proxy().await;
        let stats = show(&admin, "SHOW STATS").await;
        for c in [
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "avg_xact_count",
        ] {
            assert!(stats.0.iter().any(|x| x == c), "SHOW STATS lacks {c}");
        }
        assert!(int(cell(&stats, "database", "app", "total_query_count")) >= 3);
        assert!(int(cell(&stats, "database", "app", "total_xact_count")) >= 3);
        assert!(int(cell(&stats, "database", "app", "total_received")) > 0);

        let tenants = show(&admin, "SHOW TENANTS").await;
        assert_eq!(int(cell(&tenants, "tenant", ACME_TENANT, "cl_active")), 1);
        assert!(int(cell(&tenants, "tenant", ACME_TENANT, "total_query_count")) >= 3);

        let version = show(&admin, "SHOW VERSION").await;
        assert!(version.1[0][0]
            .as_deref()
            .unwrap_or("")
            .starts_with("tenantgate "));

        let config = show(&admin, "SHOW CONFIG").await;
        assert_eq!(config.0, ["key", "value", "default", "changeable"]);
        let text = format!("{:?}", config.1);
        for secret in [ACME_PASSWORD, ADMIN_PASSWORD, pg::SERVICE_PASSWORD] {
            assert!(!text.contains(secret), "SHOW CONFIG shows a password");
        }
        assert_eq!(
            cell(&config, "key", "databases[0].password", "value").as_deref(),
            Some("********")
        );
        assert_eq!(
            cell(&config, "key", "proxy.admin_users", "value").as_deref(),
            Some(ADMIN)
        );

        let dbs = show(&admin, "SHOW DATABASES").await;
        assert_eq!(int(cell(&dbs, "name", "bench", "paused")), 0);
    })
    .await;
}

#[tokio::test]
async fn psql_prints_console_tables() {
    let proxy = TestProxy::start(admin_config()).await;
    within(60, "psql console", async {
        let conninfo = proxy.conninfo(ADMIN, "tenantgate");
        let args = [
            "-X",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conninfo,
            "-c",
            "SHOW POOLS",
        ];
        let out = tools::run("psql", &args, Some(ADMIN_PASSWORD), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(out.success, "psql failed: {}", out.stderr);
        let mut lines = out.stdout.lines();
        let header = lines.next().unwrap_or_default();
        assert!(
            header.starts_with("database|user|cl_active|cl_waiting|"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.lines().any(|l| l.starts_with("app|")),
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains("(2 rows)"), "{}", out.stdout);

        let out = tools::psql(&conninfo, Some(ADMIN_PASSWORD), "SHOW VERSION")
            .await
            .unwrap();
        assert!(
            out.success && out.stdout.starts_with("tenantgate "),
            "{out:?}"
        );

        let out = tools::psql(&conninfo, Some(ADMIN_PASSWORD), "SHOW NONSENSE")
            .await
            .unwrap();
        assert!(
            !out.success && out.stderr.contains("unknown command"),
            "{out:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn non_admins_are_refused_after_authentication() {
    let proxy = TestProxy::start(admin_config()).await;
    within(30, "non-admin", async {
        let e = proxy
            .connect(ACME_USER, ACME_PASSWORD, "tenantgate")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), Some("42501"), "{e:?}");
        // A wrong password still fails as a wrong password, admin or not.
        let e = proxy
            .connect(ADMIN, "wrong", "tenantgate")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), Some("28P01"), "{e:?}");
        let e = proxy
            .connect("nobody", "x", "tenantgate")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), Some("28P01"), "{e:?}");
    })
    .await;
}

#[tokio::test]
async fn unknown_commands_and_reload_are_errors_that_keep_the_console() {
    let proxy = TestProxy::start(admin_config()).await;
    within(30, "console errors", async {
        let admin = console(&proxy).await;
        let e = admin.simple_query("SELECT 1").await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("42601"), "{e:?}");
        // This proxy was not started from a file: RELOAD explains, the console stays usable.
        let e = admin.simple_query("RELOAD").await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("F0000"), "{e:?}");
        let detail = e
            .as_db_error()
            .and_then(|d| d.detail().map(str::to_string))
            .unwrap_or_default();
        assert!(
            detail.contains("not started from a configuration file"),
            "{detail}"
        );
        let e = admin.simple_query("PAUSE no_such_db").await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("3D000"), "{e:?}");
        // Extended protocol: refused, and the console stays usable.
        let e = admin.query("SHOW POOLS", &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("0A000"), "{e:?}");
        assert!(!show(&admin, "SHOW LISTS").await.1.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_checkouts_until_resume() {
    let mut config = admin_config();
    config.databases[0].pool_mode = PoolMode::Transaction;
    let proxy = TestProxy::start(config).await;
    within(60, "PAUSE/RESUME", async {
        let client = proxy.connect_acme().await;
        client.simple_query("SELECT 1").await.unwrap();
        let admin = console(&proxy).await;
        admin.simple_query("PAUSE app").await.unwrap();
        let dbs = show(&admin, "SHOW DATABASES").await;
        assert_eq!(int(cell(&dbs, "name", "app", "paused")), 1);
        let query =
            tokio::spawn(async move { client.simple_query("SELECT 1").await.map(|_| client) });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !query.is_finished(),
            "a query ran while its pool was paused"
        );
        let pools = show(&admin, "SHOW POOLS").await;
        assert_eq!(int(cell(&pools, "database", "app", "cl_waiting")), 1);
        // Other databases are not paused.
        let bench = proxy
            .connect(ACME_USER, ACME_PASSWORD, pg::BENCH_DB)
            .await
            .unwrap();
        bench.simple_query("SELECT 1").await.unwrap();
        admin.simple_query("RESUME app").await.unwrap();
        let client = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .expect("RESUME did not release the waiting query")
            .unwrap()
            .expect("the held query failed");
        client.simple_query("SELECT 1").await.unwrap();
        // PAUSE / RESUME without a database apply to all.
        admin.simple_query("PAUSE").await.unwrap();
        admin.simple_query("RESUME").await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn shutdown_command_stops_the_proxy() {
    let mut config = admin_config();
    config.proxy.shutdown_timeout = 2.0;
    let proxy = TestProxy::start(config).await;
    within(30, "SHUTDOWN", async {
        let admin = console(&proxy).await;
        admin.simple_query("SHUTDOWN").await.unwrap();
        for _ in 0..100 {
            if proxy.has_exited() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(proxy.has_exited(), "tenantgate still runs after SHUTDOWN");
        assert!(proxy
            .connect(ACME_USER, ACME_PASSWORD, pg::APP_DB)
            .await
            .is_err());
        proxy.shutdown().await.expect("run returned an error");
    })
    .await;
}

/// Session mode, every server taken: clients that give up while their login waits for a server
/// (a connect timeout, a retry storm) must leave the queue at once. Otherwise each would later
/// take the freed server for a login nobody reads, ahead of the live clients behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_abandoned_while_waiting_for_a_server_leave_the_queue() {
    let mut config = admin_config();
    config.databases[0].pool_mode = PoolMode::Session;
    config.databases[0].pool_size = 1;
    config.databases[0].query_wait_timeout = 30.0;
    let proxy = TestProxy::start(config).await;
    within(60, "abandoned logins", async {
        let holder = proxy.connect_acme().await;
        holder.simple_query("SELECT 1").await.unwrap();
        let admin = console(&proxy).await;
        for _ in 0..5 {
            let login = proxy.connect(ACME_USER, ACME_PASSWORD, pg::APP_DB);
            let gave_up = tokio::time::timeout(Duration::from_millis(300), login).await;
            assert!(
                gave_up.is_err(),
                "a login got the only server while it was held"
            );
        }
        let mut waiting = -1;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let pools = show(&admin, "SHOW POOLS").await;
            waiting = int(cell(&pools, "database", "app", "cl_waiting"));
            if waiting == 0 {
                break;
            }
        }
        assert_eq!(
            waiting, 0,
            "departed logins are still queued for the server"
        );
    })
    .await;
}
