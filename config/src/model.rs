//! The configuration schema. Field names are the public interface (`tenantgate.example.toml`).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub tenancy: TenancyConfig,
    /// Tenants placed differently from `[tenancy] isolation`.
    #[serde(default)]
    pub tenants: Vec<crate::TenantConfig>,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How JWT passwords of `tenant_from = "jwt"` users are verified.
    pub jwt: Option<JwtConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// HMAC secret (HS*), or secret_env.
    pub secret: Option<String>,
    pub secret_env: Option<String>,
    /// PEM public key file (RS*/ES*).
    pub public_key: Option<PathBuf>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Claim holding the tenant id.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// Seconds of clock skew tolerated for exp/nbf.
    #[serde(default = "default_leeway")]
    pub leeway: u64,
}

fn default_tenant_claim() -> String {
    "tenant_id".into()
}
fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    Allow,
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthType {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    Md5,
    Trust,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    Session,
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: String,
    /// Directory of a Unix-domain socket clients may connect to as well:
    /// `{unix_socket_dir}/.s.PGSQL.{listen port}`, PgBouncer's key and libpq's file name.
    pub unix_socket_dir: Option<PathBuf>,
    /// Permission bits of that socket file (TOML: `0o777`).
    pub unix_socket_mode: u32,
    pub tls_mode: TlsMode,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Default client authentication; a user's stored password format may force another method
    /// (a SCRAM verifier can only be checked with SCRAM, an md5 hash only with md5).
    pub auth_type: AuthType,
    pub max_client_connections: usize,
    /// Largest frontend or backend message accepted, in bytes.
    pub max_message_size: usize,
    /// Prepared statements kept per server connection in transaction mode (LRU, then Close).
    pub max_prepared_statements: usize,
    /// Transaction mode: keep clients' unnamed statements prepared on the servers too, under
    /// proxy-global names, so a repeated query is not parsed and planned again.
    pub cache_unnamed_statements: bool,
    /// Seconds a client has to finish TLS + startup + authentication.
    pub auth_timeout: f64,
    /// Seconds to let sessions finish after SIGTERM/SIGINT before closing them.
    pub shutdown_timeout: f64,
    pub metrics_listen: Option<String>,
    /// Add a `tenant` label to the per-tenant metric families (cardinality grows with tenants).
    pub metrics_tenant_labels: bool,
    /// Distinct tenants tracked in metrics and SHOW TENANTS; the rest are counted as "other".
    pub metrics_max_tenants: usize,
    pub admin_users: Vec<String>,
    /// Runtime worker threads (0 = one per CPU core).
    pub workers: usize,
    /// `tracing` filter (RUST_LOG overrides it), e.g. "info" or "tenantgate=debug".
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            tls_mode: TlsMode::Disable,
            tls_cert: None,
            tls_key: None,
            auth_type: AuthType::ScramSha256,
            max_client_connections: 10_000,
            max_message_size: 64 * 1024 * 1024,
            max_prepared_statements: 200,
            cache_unnamed_statements: false,
            auth_timeout: 60.0,
            shutdown_timeout: 30.0,
            metrics_listen: None,
            unix_socket_dir: None,
            unix_socket_mode: 0o777,
            metrics_tenant_labels: false,
            metrics_max_tenants: 100,
            admin_users: Vec::new(),
            workers: 0,
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

impl ProxyConfig {
    pub fn auth_timeout(&self) -> Duration {
        secs(self.auth_timeout)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        secs(self.shutdown_timeout)
    }
}

/// A database clients can name in their connection string, and the server behind it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub name: String,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database name on the server; defaults to `name`.
    pub dbname: Option<String>,
    /// Role tenantgate logs in as on the server.
    pub user: String,
    pub password: Option<String>,
    pub password_env: Option<String>,
    #[serde(default = "default_pool_mode")]
    pub pool_mode: PoolMode,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default)]
    pub min_pool_size: usize,
    #[serde(default = "default_server_tls")]
    pub server_tls: ServerTlsMode,
    /// PEM bundle of CAs trusted for `server_tls = "verify-full"`; default: webpki roots.
    pub server_tls_ca: Option<PathBuf>,
    #[serde(default = "default_server_idle_timeout")]
    pub server_idle_timeout: f64,
    #[serde(default = "default_server_lifetime")]
    pub server_lifetime: f64,
    #[serde(default = "default_server_connect_timeout")]
    pub server_connect_timeout: f64,
    #[serde(default = "default_query_wait_timeout")]
    pub query_wait_timeout: f64,
    /// Seconds a client may stay idle inside a transaction before it is disconnected (0 = off).
    #[serde(default)]
    pub idle_transaction_timeout: f64,
    /// Forward the client's `options` startup parameter to the server.
    #[serde(default)]
    pub forward_options: bool,
    /// Overrides `[policy] mode` for this database.
    pub policy_mode: Option<PolicyMode>,
}

/// A Postgres Unix-domain socket, named as libpq and PgBouncer name it: `{dir}/.s.PGSQL.{port}`.
pub fn unix_socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// Longest Unix-domain socket path: `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_UNIX_SOCKET_PATH: usize = 107;

impl DatabaseConfig {
    pub fn server_dbname(&self) -> &str {
        self.dbname.as_deref().unwrap_or(&self.name)
    }
    /// The server's Unix-domain socket when `host` is a directory (starts with `/`).
    pub fn unix_socket(&self) -> Option<PathBuf> {
        self.host
            .starts_with('/')
            .then(|| unix_socket_path(Path::new(&self.host), self.port))
    }
    pub fn server_idle_timeout(&self) -> Duration {
        secs(self.server_idle_timeout)
    }
    pub fn server_lifetime(&self) -> Duration {
        secs(self.server_lifetime)
    }
    pub fn server_connect_timeout(&self) -> Duration {
        secs(self.server_connect_timeout)
    }
    pub fn query_wait_timeout(&self) -> Duration {
        secs(self.query_wait_timeout)
    }
    pub fn idle_transaction_timeout(&self) -> Option<Duration> {
        (self.idle_transaction_timeout > 0.0).then(|| secs(self.idle_transaction_timeout))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TenantSource {
    /// The `tenant` key of this user.
    Fixed,
    /// The password is a JWT; the tenant is one of its claims.
    Jwt,
    /// A trusted service sets it per session or transaction with `SET tenantgate.tenant`.
    Switch,
}

/// A login clients may use, and how its tenant is known.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// `SCRAM-SHA-256$…` verifier, `md5…` hash, or plaintext.
    pub password: Option<String>,
    pub password_env: Option<String>,
    /// Overrides `[proxy] auth_type` for this user.
    pub auth_type: Option<AuthType>,
    pub tenant: Option<String>,
    pub tenant_from: Option<TenantSource>,
    /// Tenants a `switch` user may select.
    #[serde(default)]
    pub allowed_tenants: Vec<String>,
    /// Server connections one tenant may hold in a pool at once.
    pub max_tenant_connections: Option<usize>,
    /// Databases this user may connect to (empty = all).
    #[serde(default)]
    pub databases: Vec<String>,
    /// Statements of this user are not checked by the policy (migrations, admin jobs).
    #[serde(default)]
    pub bypass_policy: bool,
}

/// How a user's stored password is to be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredPassword<'a> {
    /// A `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier.
    Scram(&'a str),
    /// `md5` followed by md5(password || username) in hex.
    Md5(&'a str),
    Plain(&'a str),
}

impl UserConfig {
    pub fn stored_password(&self) -> Option<StoredPassword<'_>> {
        let p = self.password.as_deref()?;
        Some(classify_password(p))
    }
}

pub fn classify_password(p: &str) -> StoredPassword<'_> {
    if p.starts_with("SCRAM-SHA-256$") {
        StoredPassword::Scram(p)
    } else if p.len() == 35 && p.starts_with("md5") && p[3..].bytes().all(|b| b.is_ascii_hexdigit())
    {
        StoredPassword::Md5(p)
    } else {
        StoredPassword::Plain(p)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TablesSpec {
    /// `"auto"`: discover tenant tables from the server catalog.
    Auto(String),
    List(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableOverride {
    pub name: String,
    pub column: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyConfig {
    /// Server setting injected for Row-Level Security.
    pub setting: String,
    /// Default tenant column.
    pub column: String,
    pub tables: TablesSpec,
    pub shared_tables: Vec<String>,
    #[serde(rename = "table")]
    pub table_overrides: Vec<TableOverride>,
    /// Isolation of tenants without a `[[tenants]]` entry: row, schema or database.
    pub isolation: crate::Isolation,
    /// Schema isolation: the tenant's schema; `{tenant}` is replaced by the tenant id.
    pub schema: String,
    /// Schema isolation: schemas in `search_path` after the tenant's (shared, read-only).
    pub shared_schemas: Vec<String>,
    /// Schema isolation: the schema whose relations every tenant schema has; unset = the
    /// union of the tenant schemas found on the server.
    pub template_schema: Option<String>,
    /// Database isolation: the tenant's database on the server; `{tenant}` is replaced.
    pub database: String,
    /// Database isolation: servers per tenant database.
    pub database_pool_size: usize,
    /// Database isolation: server connections across all tenant databases of the proxy;
    /// idle ones of the least recently used databases are closed to make room.
    pub max_database_connections: usize,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        TenancyConfig {
            setting: "app.current_tenant".into(),
            column: "tenant_id".into(),
            tables: TablesSpec::Auto("auto".into()),
            shared_tables: Vec::new(),
            table_overrides: Vec::new(),
            isolation: crate::Isolation::Row,
            schema: "tenant_{tenant}".into(),
            shared_schemas: vec!["public".into()],
            template_schema: None,
            database: "{tenant}_db".into(),
            database_pool_size: 5,
            max_database_connections: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyMode {
    Enforce,
    Audit,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownRelations {
    Reject,
    Allow,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub mode: PolicyMode,
    pub require_parameters: bool,
    pub allow_multi_statement: bool,
    pub unknown_relations: UnknownRelations,
    pub max_query_length: usize,
    pub cache_entries: usize,
    pub allowed_functions: Vec<String>,
    pub allowed_procedures: Vec<String>,
    pub allow_listen: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mode: PolicyMode::Enforce,
            require_parameters: true,
            allow_multi_statement: false,
            unknown_relations: UnknownRelations::Reject,
            max_query_length: 1024 * 1024,
            cache_entries: 10_000,
            allowed_functions: Vec::new(),
            allowed_procedures: Vec::new(),
            allow_listen: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// File path, `-` for stdout; unset = no audit log.
    pub path: Option<String>,
    /// `all`, `none` or `sample:N` (one allowed statement in N).
    pub log_allowed: String,
    /// Rotate the file once it reaches this size; 0 = never rotate.
    pub rotate_bytes: u64,
    /// Rotated files kept (`<path>.000001`, `<path>.000002`, …; the oldest are deleted).
    pub rotate_keep: usize,
    /// `always`, `never`, or a number of milliseconds between fsyncs.
    pub fsync: String,
    /// Records waiting for the writer; when full, rejections wait and allowed statements are
    /// dropped (and counted).
    pub queue_size: usize,
}

/// `[audit] log_allowed`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAllowed {
    All,
    None,
    /// One allowed statement in N (N > 0).
    Sample(u32),
}

/// `[audit] fsync`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFsync {
    /// After every batch of records written.
    Always,
    /// Never; the operating system decides.
    Never,
    /// At most this long after a record is written.
    Every(Duration),
}

impl AuditConfig {
    /// `log_allowed`, or None when it is not valid.
    pub fn allowed(&self) -> Option<AuditAllowed> {
        match self.log_allowed.as_str() {
            "all" => Some(AuditAllowed::All),
            "none" => Some(AuditAllowed::None),
            s => s
                .strip_prefix("sample:")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|&n| n > 0)
                .map(AuditAllowed::Sample),
        }
    }

    /// `fsync`, or None when it is not valid.
    pub fn fsync_policy(&self) -> Option<AuditFsync> {
        match self.fsync.as_str() {
            "always" => Some(AuditFsync::Always),
            "never" => Some(AuditFsync::Never),
            ms => ms
                .parse::<u32>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(|ms| AuditFsync::Every(Duration::from_millis(u64::from(ms)))),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            log_allowed: "all".into(),
            rotate_bytes: 100 * 1024 * 1024,
            rotate_keep: 10,
            fsync: "1000".into(),
            queue_size: 65_536,
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() && s > 0.0 { s } else { 0.0 })
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_pool_mode() -> PoolMode {
    PoolMode::Session
}
fn default_pool_size() -> usize {
    20
}
fn default_server_tls() -> ServerTlsMode {
    ServerTlsMode::Disable
}
fn default_server_idle_timeout() -> f64 {
    600.0
}
fn default_server_lifetime() -> f64 {
    3600.0
}
fn default_server_connect_timeout() -> f64 {
    15.0
}
fn default_query_wait_timeout() -> f64 {
    120.0
}
