//! State shared by every client task: configuration, users, pools, cancel keys, counters.

use crate::auth::Credential;
use crate::cancel::CancelRegistry;
use crate::pool::{Pool, PoolSettings};
use crate::session::Shutdown;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tenantgate_config::{Config, PolicyMode, TlsMode, UserConfig};
use tenantgate_policy::Policy;
use tokio_util::sync::CancellationToken;

pub struct UserEntry {
    pub config: UserConfig,
    pub credential: Credential,
}

pub struct App {
    config: Arc<Config>,
    users: HashMap<String, Arc<UserEntry>>,
    pools: HashMap<String, Arc<Pool>>,
    /// Per database; replaced when the catalog is (re)discovered.
    policies: HashMap<String, ArcSwap<Policy>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pub cancel: CancelRegistry,
    audit: Option<crate::audit::AuditLog>,
    clients: AtomicUsize,
    next_conn_id: std::sync::atomic::AtomicU64,
    shutdown: Shutdown,
    /// Statistics for metrics and the admin console.
    pub stats: crate::metrics::Stats,
    /// Cancelled by the admin console's SHUTDOWN; `run` then shuts down as on SIGTERM.
    stop: CancellationToken,
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
            users.insert(
                u.name.clone(),
                Arc::new(UserEntry {
                    config: u.clone(),
                    credential,
                }),
            );
        }
        let mut pools = HashMap::new();
        let mut policies = HashMap::new();
        for db in &config.databases {
            let policy = crate::discovery::build_policy(&config, None);
            policies.insert(db.name.clone(), ArcSwap::from_pointee(policy));
            let settings = PoolSettings::from_config(
                db,
                config.proxy.max_message_size,
                config.proxy.max_prepared_statements,
            )?;
            pools.insert(db.name.clone(), Pool::new(&db.name, settings));
        }
        let audit = crate::audit::AuditLog::start(&config.audit)?;
        let stats = crate::metrics::Stats::new(&config);
        Ok(App {
            stats,
            stop: CancellationToken::new(),
            audit,
            next_conn_id: std::sync::atomic::AtomicU64::new(1),
            config,
            users,
            pools,
            policies,
            tls,
            cancel: CancelRegistry::default(),
            clients: AtomicUsize::new(0),
            shutdown: Shutdown {
                drain: CancellationToken::new(),
                terminate: CancellationToken::new(),
            },
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn user(&self, name: &str) -> Option<Arc<UserEntry>> {
        self.users.get(name).cloned()
    }

    pub fn pool(&self, database: &str) -> Option<Arc<Pool>> {
        self.pools.get(database).cloned()
    }

    /// The policy for a database (None only for a database that is not configured).
    pub fn policy(&self, database: &str) -> Option<Arc<Policy>> {
        self.policies.get(database).map(ArcSwap::load_full)
    }

    pub fn set_policy(&self, database: &str, policy: Policy) {
        if let Some(slot) = self.policies.get(database) {
            slot.store(Arc::new(policy));
        }
    }

    /// `[policy] mode`, or the database's `policy_mode` override.
    pub fn policy_mode(&self, database: &str) -> PolicyMode {
        self.config
            .database(database)
            .and_then(|d| d.policy_mode)
            .unwrap_or(self.config.policy.mode)
    }

    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }

    pub fn tls_acceptor(&self) -> Option<&tokio_rustls::TlsAcceptor> {
        self.tls.as_ref()
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
