//! The proxy under test, running in-process on the test's tokio runtime via `tenantgate::run`.

use crate::pg::{self, PgServer};
use anyhow::{anyhow, Result};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tenantgate_config::Config;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// Fixed-tenant user with a plaintext password in the config (tenant `acme`).
pub const ACME_USER: &str = "acme_app";
pub const ACME_PASSWORD: &str = "acme_pw";
pub const ACME_TENANT: &str = "acme";
/// User whose config password is a SCRAM-SHA-256 verifier.
pub const SCRAM_CLIENT: &str = "scram_client";
pub const SCRAM_CLIENT_PASSWORD: &str = "scram_client_pw";
/// User whose config password is an md5 hash (so the proxy must use md5 auth).
pub const MD5_CLIENT: &str = "md5_client";
pub const MD5_CLIENT_PASSWORD: &str = "md5_client_pw";
/// User with `auth_type = "trust"`.
pub const TRUST_CLIENT: &str = "trust_client";
/// Trusted service user with `bypass_policy = true` and no tenant: for protocol tests that run
/// DDL, COPY or functions the tenant policy would reject.
pub const SERVICE_CLIENT: &str = "svc_client";
pub const SERVICE_CLIENT_PASSWORD: &str = "svc_client_pw";

/// Computed once: SCRAM with 4096 iterations is slow in debug builds.
static SCRAM_VERIFIER: LazyLock<String> =
    LazyLock::new(|| postgres_protocol::password::scram_sha_256(SCRAM_CLIENT_PASSWORD.as_bytes()));

/// TOML basic string.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// TOML text of [`base_config`], for tests that want to edit text rather than structs.
pub fn base_config_toml(pg: &PgServer) -> String {
    let md5 = postgres_protocol::password::md5(MD5_CLIENT_PASSWORD.as_bytes(), MD5_CLIENT);
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
shutdown_timeout = 2

[[databases]]
name = "app"
host = {host}
port = {port}
dbname = "app"
user = {svc_user}
password = {svc_password}
query_wait_timeout = 30

[[databases]]
name = "bench"
host = {host}
port = {port}
dbname = "bench"
user = {svc_user}
password = {svc_password}
query_wait_timeout = 30

[[users]]
name = {acme}
password = {acme_pw}
tenant = {acme_tenant}

[[users]]
name = {scram}
password = {scram_verifier}
tenant = {acme_tenant}

[[users]]
name = {md5_user}
password = {md5}
tenant = {acme_tenant}

[[users]]
name = {trust}
auth_type = "trust"
tenant = {acme_tenant}

[[users]]
name = {svc}
password = {svc_pw}
bypass_policy = true
"#,
        host = q(pg.host()),
        port = pg.port(),
        svc_user = q(pg::SERVICE_USER),
        svc_password = q(pg::SERVICE_PASSWORD),
        acme = q(ACME_USER),
        acme_pw = q(ACME_PASSWORD),
        acme_tenant = q(ACME_TENANT),
        scram = q(SCRAM_CLIENT),
        scram_verifier = q(&SCRAM_VERIFIER),
        md5_user = q(MD5_CLIENT),
        md5 = q(&md5),
        trust = q(TRUST_CLIENT),
        svc = q(SERVICE_CLIENT),
        svc_pw = q(SERVICE_CLIENT_PASSWORD),
    )
}

/// A config with databases `app` and `bench` on `pg` (the proxy logs in as `tg_server`, session
/// pooling, pool_size 20) and the users above. Tests change fields before [`TestProxy::start`].
pub fn base_config(pg: &PgServer) -> Config {
    let text = base_config_toml(pg);
    match Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => panic!("base test config does not parse:\n{e}\n{text}"),
    }
}

/// The proxy, listening on a free loopback port. Dropping it cancels its shutdown token.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub config: Arc<Config>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestProxy {
    /// Validates `config` (a test with an invalid config fails here, not somewhere in the proxy),
    /// binds 127.0.0.1:0 and spawns `tenantgate::run` on the current runtime.
    pub async fn start(config: Config) -> TestProxy {
        Self::start_with_path(config, None).await
    }

    /// Like [`TestProxy::start`], reloadable from `path` (admin RELOAD re-reads that file).
    pub async fn start_with_path(
        mut config: Config,
        path: Option<std::path::PathBuf>,
    ) -> TestProxy {
        crate::init_tracing();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let addr = listener.local_addr().expect("local address");
        config.proxy.listen = addr.to_string();
        if let Err(e) = config.validate() {
            panic!("test config is invalid:\n{e}");
        }
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tenantgate::serve(
            config.clone(),
            listener,
            shutdown.clone(),
            path,
        ));
        TestProxy {
            addr,
            config,
            shutdown,
            task: Some(task),
        }
    }

    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// tokio-postgres config for a client of the proxy.
    pub fn client_config(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(self.host())
            .port(self.port())
            .user(user)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10));
        if !password.is_empty() {
            c.password(password);
        }
        c
    }

    /// Connects without TLS and spawns the connection task.
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        connect(&self.client_config(user, password, dbname)).await
    }

    /// `acme_app` on database `app`.
    pub async fn connect_acme(&self) -> Client {
        self.connect(ACME_USER, ACME_PASSWORD, pg::APP_DB)
            .await
            .unwrap_or_else(|e| panic!("acme_app cannot connect through the proxy: {e:?}"))
    }

    /// `svc_client` (policy bypass) on database `app`.
    pub async fn connect_service(&self) -> Client {
        self.connect(SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, pg::APP_DB)
            .await
            .unwrap_or_else(|e| panic!("svc_client cannot connect through the proxy: {e:?}"))
    }

    /// libpq key/value conninfo through the proxy (add `sslmode=…` as needed).
    pub fn conninfo(&self, user: &str, dbname: &str) -> String {
        format!(
            "host={} port={} user={user} dbname={dbname}",
            self.host(),
            self.port()
        )
    }

    /// `postgresql://user:password@host:port/dbname` through the proxy.
    pub fn url(&self, user: &str, password: &str, dbname: &str) -> String {
        format!(
            "postgresql://{user}:{password}@{}:{}/{dbname}",
            self.host(),
            self.port()
        )
    }

    /// Cancels the shutdown token and waits for `run` to return (drain included).
    pub async fn shutdown(mut self) -> Result<()> {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let limit = self.config.proxy.shutdown_timeout() + Duration::from_secs(10);
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(anyhow!("proxy task panicked: {join}")),
            Err(_) => Err(anyhow!("proxy did not shut down within {limit:?}")),
        }
    }

    /// True once `run` has returned (e.g. it failed at startup).
    pub fn has_exited(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Connects with `config` (no TLS) and spawns the connection task.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// SQLSTATE of a tokio-postgres error, if the server (or proxy) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}
