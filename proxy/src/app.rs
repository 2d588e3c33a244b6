//! State shared by every client task: configuration, users, pools, cancel keys, counters.

use crate::auth::Credential;
use crate::cancel::CancelRegistry;
use crate::pool::{Pool, PoolSettings};
use crate::session::Shutdown;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tenantgate_config::{Config, Isolation, Placement, PolicyMode, TlsMode, UserConfig};
use tenantgate_policy::Policy;
use tokio_util::sync::CancellationToken;

pub struct UserEntry {
    pub config: UserConfig,
    pub credential: Credential,
}

/// Everything a configuration reload replaces, swapped as a whole.
pub struct Runtime {
    pub config: Arc<Config>,
    users: HashMap<String, Arc<UserEntry>>,
    pools: HashMap<String, Arc<Pool>>,
    /// Per database and isolation strategy; replaced when the catalog is (re)discovered.
    policies: HashMap<String, PolicySet>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Runtime {
    /// Builds the state for `config`, keeping the pools (and their servers) of databases that
    /// `old` already had, with their new settings.
    fn build(config: Arc<Config>, old: Option<&Runtime>) -> Result<Runtime, StartError> {
        let tls = match (
            &config.proxy.tls_mode,
            &config.proxy.tls_cert,
            &config.proxy.tls_key,
        ) {
            (TlsMode::Disable, _, _) => None,
            (_, Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let jwt = match &config.auth.jwt {
            Some(j) => Some(Arc::new(
                crate::auth::JwtVerifier::new(j).map_err(StartError::Credential)?,
            )),
            None => None,
        };
        let mut users = HashMap::new();
        for u in &config.users {
            let credential = Credential::for_user(u, config.proxy.auth_type, jwt.as_ref())
                .map_err(StartError::Credential)?;
            let entry = UserEntry {
                config: u.clone(),
                credential,
            };
            users.insert(u.name.clone(), Arc::new(entry));
        }
        let mut pools = HashMap::new();
        let mut policies = HashMap::new();
        for db in &config.databases {
            let settings = PoolSettings::from_config(
                db,
                config.proxy.max_message_size,
                config.proxy.max_prepared_statements,
            )?;
            let pool = match old.and_then(|o| o.pools.get(&db.name)) {
                Some(pool) => {
                    pool.set_settings(settings);
                    pool.clone()
                }
                None => Pool::new(&db.name, settings),
            };
            pools.insert(db.name.clone(), pool);
            let set = Isolation::ALL.map(|isolation| {
                ArcSwap::from_pointee(crate::discovery::build_policy(&config, isolation, None))
            });
            policies.insert(db.name.clone(), PolicySet(set));
        }
        Ok(Runtime {
            config,
            users,
            pools,
            policies,
            tls,
        })
    }
}

/// A database's policies, one per isolation strategy (indexed as [`Isolation::ALL`]).
struct PolicySet([ArcSwap<Policy>; 3]);

impl PolicySet {
    fn slot(&self, isolation: Isolation) -> &ArcSwap<Policy> {
        let i = match isolation {
            Isolation::Row => 0,
            Isolation::Schema => 1,
            Isolation::Database => 2,
        };
        &self.0[i]
    }
}

impl Runtime {
    fn apply_discovery(&self, database: &str, found: Option<&crate::discovery::Discovered>) {
        let Some(set) = self.policies.get(database) else {
            return;
        };
        for isolation in Isolation::ALL {
            let policy = crate::discovery::build_policy(&self.config, isolation, found);
            set.slot(isolation).store(Arc::new(policy));
        }
    }
}

pub struct App {
    runtime: ArcSwap<Runtime>,
    /// The file the configuration came from, for reloads.
    config_path: std::sync::Mutex<Option<std::path::PathBuf>>,
    reload_lock: tokio::sync::Mutex<()>,
    pub cancel: CancelRegistry,
    audit: Option<crate::audit::AuditLog>,
    clients: AtomicUsize,
    next_conn_id: std::sync::atomic::AtomicU64,
    shutdown: Shutdown,
    /// Statistics for metrics and the admin console.
    pub stats: crate::metrics::Stats,
    /// Database isolation: the pools of tenant databases and their server budget.
    tenant_pools: Arc<crate::tenant_pools::TenantPools>,
    /// Cancelled by the admin console's SHUTDOWN; `run` then shuts down as on SIGTERM.
    stop: CancellationToken,
}

/// A tenant database's pool: the database entry's server, role and timeouts, with the tenant's
/// database name and `[tenancy] database_pool_size`.
fn tenant_pool_settings(base: &PoolSettings, tenant_db: &str, config: &Config) -> PoolSettings {
    let mut s = base.clone();
    s.target.dbname = tenant_db.to_string();
    s.pool_size = config.tenancy.database_pool_size;
    s.min_pool_size = 0;
    s
}

/// Settings a running proxy cannot change; a reload keeps the old value and says so.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            notes.push(format!("{key} changed: takes effect after a restart"));
        }
    };
    check("proxy.listen", old.proxy.listen != new.proxy.listen);
    check(
        "proxy.unix_socket_dir",
        old.proxy.unix_socket_dir != new.proxy.unix_socket_dir,
    );
    check(
        "proxy.unix_socket_mode",
        old.proxy.unix_socket_mode != new.proxy.unix_socket_mode,
    );
    check(
        "proxy.metrics_listen",
        old.proxy.metrics_listen != new.proxy.metrics_listen,
    );
    check("proxy.workers", old.proxy.workers != new.proxy.workers);
    check(
        "audit",
        format!("{:?}", old.audit) != format!("{:?}", new.audit),
    );
    check(
        "proxy.log_level",
        old.proxy.log_level != new.proxy.log_level,
    );
    notes
}

/// Counts a connected client for `max_client_connections` until dropped.
pub struct ClientGuard(Arc<App>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("proxy TLS: {0}")]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("{0}")]
    Credential(String),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

impl App {
    pub fn new(config: Arc<Config>) -> Result<App, StartError> {
        let runtime = Runtime::build(config.clone(), None)?;
        let audit = crate::audit::AuditLog::start(&config.audit)?;
        let stats = crate::metrics::Stats::new(&config);
        let tenant_pools =
            crate::tenant_pools::TenantPools::new(config.tenancy.max_database_connections);
        Ok(App {
            tenant_pools,
            runtime: ArcSwap::from_pointee(runtime),
            config_path: std::sync::Mutex::new(None),
            reload_lock: tokio::sync::Mutex::new(()),
            stats,
            stop: CancellationToken::new(),
            audit,
            next_conn_id: std::sync::atomic::AtomicU64::new(1),
            cancel: CancelRegistry::default(),
            clients: AtomicUsize::new(0),
            shutdown: Shutdown::default(),
        })
    }

    /// The current configuration (replaced by reloads).
    pub fn config(&self) -> Arc<Config> {
        self.runtime.load().config.clone()
    }

    /// Is `config` still the configuration in force (no reload since it was read)?
    pub fn config_is(&self, config: &Arc<Config>) -> bool {
        Arc::ptr_eq(&self.runtime.load().config, config)
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub fn set_config_path(&self, path: std::path::PathBuf) {
        *self.config_path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    pub fn user(&self, name: &str) -> Option<Arc<UserEntry>> {
        self.runtime.load().users.get(name).cloned()
    }

    pub fn pool(&self, database: &str) -> Option<Arc<Pool>> {
        self.runtime.load().pools.get(database).cloned()
    }

    /// The policy for tenants placed with `isolation` on a database (None only for a database
    /// that is not configured).
    pub fn policy(&self, database: &str, isolation: Isolation) -> Option<Arc<Policy>> {
        self.runtime
            .load()
            .policies
            .get(database)
            .map(|set| set.slot(isolation).load_full())
    }

    /// Installs the policies of a database built from a catalog discovery (None: from the
    /// configuration only).
    pub fn apply_discovery(&self, database: &str, found: Option<&crate::discovery::Discovered>) {
        self.runtime.load().apply_discovery(database, found);
    }

    /// The pool a placement's transactions run on: the database's own pool for row and
    /// schema isolation, the tenant database's pool (created on first use) for database
    /// isolation.
    pub fn placement_pool(&self, database: &str, placement: &Placement) -> Option<Arc<Pool>> {
        let rt = self.runtime.load();
        let base = rt.pools.get(database)?;
        let Placement::Database(tenant_db) = placement else {
            return Some(base.clone());
        };
        let pool = self.tenant_pools.get_or_create(database, tenant_db, || {
            tenant_pool_settings(&base.settings(), tenant_db, &rt.config)
        });
        if base.is_paused() && !pool.is_paused() {
            // Created (again) while its database is paused on the console.
            pool.pause();
        }
        Some(pool)
    }

    pub fn tenant_pools(&self) -> &Arc<crate::tenant_pools::TenantPools> {
        &self.tenant_pools
    }

    /// `[policy] mode`, or the database's `policy_mode` override.
    pub fn policy_mode(&self, database: &str) -> PolicyMode {
        let rt = self.runtime.load();
        rt.config
            .database(database)
            .and_then(|d| d.policy_mode)
            .unwrap_or(rt.config.policy.mode)
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.runtime.load().pools.values().cloned().collect()
    }

    pub fn tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.runtime.load().tls.clone()
    }

    /// Re-reads the configuration file: validates it fully and, only if it is valid, swaps it
    /// in. Pools of databases that remain keep their servers (with the new sizes and timeouts),
    /// new databases get pools, removed ones are closed once their clients leave; users,
    /// credentials and TLS certificates are replaced; each database's policy is rebuilt (new
    /// epoch: the decision cache starts empty) from a fresh catalog discovery. Connected
    /// clients are not dropped. Returns every problem when the new configuration is refused.
    pub async fn reload(&self) -> Result<String, Vec<String>> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let path = self
            .config_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                vec!["this proxy was not started from a configuration file".to_string()]
            })?;
        let config = tenantgate_config::load(&path)
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        let old = self.runtime.load_full();
        let mut notes = restart_only_changes(&old.config, &config);
        let config = Arc::new(config);
        let new = Runtime::build(config.clone(), Some(&old)).map_err(|e| vec![e.to_string()])?;
        // Read every catalog before the swap, so no statement is ever screened with a
        // policy that has not seen the server (it would reject undeclared relations).
        for (name, pool) in &new.pools {
            let target = pool.settings().target.clone();
            match crate::discovery::discover_target(&target, &config.tenancy.column).await {
                Ok(found) => new.apply_discovery(name, Some(&found)),
                Err(e) => notes.push(format!(
                    "database {name:?}: catalog discovery failed ({e}); undeclared relations are rejected"
                )),
            }
        }
        for name in new.pools.keys() {
            self.stats.add_database(name);
        }
        for (name, pool) in &old.pools {
            if !new.pools.contains_key(name) {
                pool.close();
                notes.push(format!("database {name:?} removed"));
            }
        }
        self.runtime.store(Arc::new(new));
        self.tenant_pools
            .set_cap(config.tenancy.max_database_connections);
        let rt = self.runtime.load_full();
        self.tenant_pools.reconfigure(|database, tenant_db| {
            let base = rt.pools.get(database)?;
            Some(tenant_pool_settings(&base.settings(), tenant_db, &config))
        });
        let summary = if notes.is_empty() {
            "configuration reloaded".to_string()
        } else {
            format!("configuration reloaded; {}", notes.join("; "))
        };
        tracing::info!("{summary}");
        Ok(summary)
    }

    pub fn shutdown_token(&self) -> Shutdown {
        self.shutdown.clone()
    }

    pub fn client_guard(self: &Arc<Self>) -> ClientGuard {
        self.clients.fetch_add(1, Ordering::Relaxed);
        ClientGuard(self.clone())
    }

    pub fn audit(&self) -> Option<&crate::audit::AuditLog> {
        self.audit.as_ref()
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Asks [`crate::run`] to shut down (admin SHUTDOWN).
    pub fn request_shutdown(&self) {
        self.stop.cancel();
    }

    /// Cancelled once a shutdown was requested by [`App::request_shutdown`].
    pub fn shutdown_requested(&self) -> CancellationToken {
        self.stop.clone()
    }
}
