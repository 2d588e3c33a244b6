//! Prometheus metrics, and the counters behind the admin console's SHOW commands.
//!
//! The recorder is process-global (the `metrics` facade has one), installed once by the first
//! [`Endpoint::bind`]; every proxy in the process records into it and every endpoint serves it.
//! Until one is installed the macros are no-ops. Names are `tenantgate_*` with the unit in the
//! name; labels are bounded: `database` (a configured database), `state`, `verdict`, `rule`
//! (a policy rule id), `kind` (an [`ErrorKind`]), and `tenant` only on the `tenantgate_tenant_*`
//! families, which exist only with `metrics_tenant_labels = true` and count at most
//! `metrics_max_tenants` tenants (the rest as `other`).
//!
//! Hot-path cost: a session holds its database's [`DbStats`] (registered metric handles and
//! atomics), so a relayed read or write is two atomic adds, and a request one `Instant` at
//! send and one at ReadyForQuery.

mod exporter;

use exporter::upkeep;
pub use exporter::Endpoint;

use crate::cancel::{CancelSlot, CancelTarget};
use crate::pool::Pool;
use dashmap::DashMap;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tenantgate_config::Config;

/// PgBouncer's `stats_period`: SHOW STATS averages cover the last completed period.
const STATS_PERIOD: Duration = Duration::from_secs(60);
/// Tenant label value for tenants past `metrics_max_tenants`.
pub const OTHER_TENANT: &str = "other";

/// Label values of `tenantgate_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    AuthFailure,
    ServerConnect,
    Protocol,
    PoolTimeout,
    ClientLimit,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::AuthFailure => "auth_failure",
            ErrorKind::ServerConnect => "server_connect",
            ErrorKind::Protocol => "protocol",
            ErrorKind::PoolTimeout => "pool_timeout",
            ErrorKind::ClientLimit => "client_limit",
        }
    }
}

pub fn error(kind: ErrorKind) {
    counter!("tenantgate_errors_total", "kind" => kind.as_str()).increment(1);
}

/// A pool's wait metrics, registered once.
pub struct PoolMetrics {
    waits: Counter,
    wait_seconds: Histogram,
}

impl PoolMetrics {
    pub fn new(database: &str) -> PoolMetrics {
        PoolMetrics {
            waits: counter!("tenantgate_client_waits_total", "database" => database.to_string()),
            wait_seconds: histogram!("tenantgate_client_wait_duration_seconds", "database" => database.to_string()),
        }
    }

    pub fn waited(&self, d: Duration) {
        self.waits.increment(1);
        self.wait_seconds.record(d.as_secs_f64());
    }
}

/// SHOW STATS totals of one database (times in microseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub assignments: u64,
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
}

/// SHOW STATS averages over the last [`STATS_PERIOD`]: counts per second, times per event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Averages {
    pub assignments: u64,
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
}

struct Window {
    at: Instant,
    last: Totals,
    averages: Averages,
}

/// Per-database counters shared by its sessions: atomics for SHOW STATS, metric handles.
pub struct DbStats {
    xacts: AtomicU64,
    queries: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    xact_us: AtomicU64,
    query_us: AtomicU64,
    clients: Gauge,
    xacts_total: Counter,
    queries_total: Counter,
    received_total: Counter,
    sent_total: Counter,
    query_seconds: Histogram,
    injections: Counter,
    window: Mutex<Window>,
}

impl DbStats {
    fn new(database: &str) -> DbStats {
        let db = || database.to_string();
        DbStats {
            xacts: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            xact_us: AtomicU64::new(0),
            query_us: AtomicU64::new(0),
            clients: gauge!("tenantgate_client_connections", "database" => db()),
            xacts_total: counter!("tenantgate_transactions_total", "database" => db()),
            queries_total: counter!("tenantgate_queries_total", "database" => db()),
            received_total: counter!("tenantgate_client_received_bytes_total", "database" => db()),
            sent_total: counter!("tenantgate_client_sent_bytes_total", "database" => db()),
            query_seconds: histogram!("tenantgate_query_duration_seconds", "database" => db()),
            injections: counter!("tenantgate_tenant_injections_total", "database" => db()),
            window: Mutex::new(Window {
                at: Instant::now(),
                last: Totals::default(),
                averages: Averages::default(),
            }),
        }
    }

    /// Totals, with the pool's wait time and assignments.
    pub fn totals(&self, pool: &Pool) -> Totals {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            assignments: get(&pool.stats.assignments),
            xacts: get(&self.xacts),
            queries: get(&self.queries),
            received: get(&self.received),
            sent: get(&self.sent),
            xact_us: get(&self.xact_us),
            query_us: get(&self.query_us),
            wait_us: get(&pool.stats.wait_us_total),
        }
    }

    pub fn averages(&self) -> Averages {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .averages
    }

    /// Closes the averaging period when it is over (called every second).
    fn roll(&self, pool: &Pool) {
        let now = self.totals(pool);
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let secs = w.at.elapsed().as_secs();
        if secs < STATS_PERIOD.as_secs() {
            return;
        }
        w.averages = averages(&w.last, &now, secs);
        w.last = now;
        w.at = Instant::now();
    }
}

fn averages(a: &Totals, b: &Totals, secs: u64) -> Averages {
    let d = |x: u64, y: u64| y.saturating_sub(x);
    let per = |n: u64, over: u64| n.checked_div(over).unwrap_or(0);
    let xacts = d(a.xacts, b.xacts);
    let queries = d(a.queries, b.queries);
    let assignments = d(a.assignments, b.assignments);
    Averages {
        assignments: per(assignments, secs),
        xacts: per(xacts, secs),
        queries: per(queries, secs),
        received: per(d(a.received, b.received), secs),
        sent: per(d(a.sent, b.sent), secs),
        xact_us: per(d(a.xact_us, b.xact_us), xacts),
        query_us: per(d(a.query_us, b.query_us), queries),
        wait_us: per(d(a.wait_us, b.wait_us), assignments),
    }
}

/// Per-tenant counters (SHOW TENANTS), with metric handles when tenant labels are on.
pub struct TenantStats {
    pub name: String,
    clients: AtomicI64,
    queries: AtomicU64,
    rejections: AtomicU64,
    /// Server connections held by the tenant's clients right now.
    servers: AtomicI64,
    labelled: Option<TenantHandles>,
}

struct TenantHandles {
    clients: Gauge,
    servers: Gauge,
    queries: Counter,
    rejections: Counter,
}

impl TenantStats {
    fn new(name: &str, labelled: bool) -> TenantStats {
        let labelled = labelled.then(|| TenantHandles {
            clients: gauge!("tenantgate_tenant_client_connections", "tenant" => name.to_string()),
            servers: gauge!("tenantgate_tenant_server_connections", "tenant" => name.to_string()),
            queries: counter!("tenantgate_tenant_queries_total", "tenant" => name.to_string()),
            rejections: counter!("tenantgate_tenant_rejections_total", "tenant" => name.to_string()),
        });
        TenantStats {
            name: name.to_string(),
            clients: AtomicI64::new(0),
            queries: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            servers: AtomicI64::new(0),
            labelled,
        }
    }

    /// Server connections the tenant's clients hold now.
    pub fn servers(&self) -> i64 {
        self.servers.load(Ordering::Relaxed)
    }

    fn holding(&self, delta: i64) {
        self.servers.fetch_add(delta, Ordering::Relaxed);
        if let Some(h) = &self.labelled {
            h.servers.increment(delta as f64);
        }
    }

    /// (connected clients, queries, rejections)
    pub fn counts(&self) -> (i64, u64, u64) {
        (
            self.clients.load(Ordering::Relaxed),
            self.queries.load(Ordering::Relaxed),
            self.rejections.load(Ordering::Relaxed),
        )
    }

    fn connected(&self, delta: i64) {
        self.clients.fetch_add(delta, Ordering::Relaxed);
        if let Some(h) = &self.labelled {
            h.clients.increment(delta as f64);
        }
    }

    fn query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = &self.labelled {
            h.queries.increment(1);
        }
    }

    fn rejection(&self) {
        self.rejections.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = &self.labelled {
            h.rejections.increment(1);
        }
    }
}

/// Tenants seen, at most `max` of them; later ones share the [`OTHER_TENANT`] entry.
pub struct Tenants {
    map: DashMap<String, Arc<TenantStats>>,
    insert: Mutex<()>,
    other: OnceLock<Arc<TenantStats>>,
    max: usize,
    labelled: bool,
}

impl Tenants {
    fn new(max: usize, labelled: bool) -> Tenants {
        Tenants {
            map: DashMap::new(),
            insert: Mutex::new(()),
            other: OnceLock::new(),
            max,
            labelled,
        }
    }

    pub fn get(&self, tenant: &str) -> Arc<TenantStats> {
        if let Some(t) = self.map.get(tenant) {
            return t.clone();
        }
        // Rare (first sight of a tenant): serialized so the bound is exact.
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.map.get(tenant) {
            return t.clone();
        }
        if self.map.len() >= self.max {
            return self
                .other
                .get_or_init(|| Arc::new(TenantStats::new(OTHER_TENANT, self.labelled)))
                .clone();
        }
        let stats = Arc::new(TenantStats::new(tenant, self.labelled));
        self.map.insert(tenant.to_string(), stats.clone());
        stats
    }

    /// Every tracked tenant (and `other` once used), by name.
    pub fn all(&self) -> Vec<Arc<TenantStats>> {
        let mut all: Vec<_> = self.map.iter().map(|e| e.value().clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.extend(self.other.get().cloned());
        all
    }
}

/// A logged-in client, for SHOW CLIENTS / SHOW SERVERS.
pub struct ClientInfo {
    pub conn_id: u64,
    pub user: String,
    pub database: String,
    pub peer: crate::io::Peer,
    pub tls: bool,
    pub application_name: String,
    pub connected: SystemTime,
    tenant: Mutex<Option<String>>,
    /// Set while the client holds a server (it is the cancel target).
    slot: Arc<CancelSlot>,
}

impl ClientInfo {
    pub fn tenant(&self) -> Option<String> {
        self.tenant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server the client holds now, if any.
    pub fn server(&self) -> Option<CancelTarget> {
        self.slot.get()
    }
}

type ClientMap = DashMap<u64, Arc<ClientInfo>>;

/// Everything [`crate::app::App`] counts besides the pools' own statistics.
pub struct Stats {
    /// Per database; a reload may add databases.
    databases: DashMap<String, Arc<DbStats>>,
    pub tenants: Tenants,
    clients: Arc<ClientMap>,
    pub started: SystemTime,
}

impl Stats {
    pub fn new(config: &Config) -> Stats {
        Stats {
            databases: config
                .databases
                .iter()
                .map(|d| (d.name.clone(), Arc::new(DbStats::new(&d.name))))
                .collect(),
            tenants: Tenants::new(
                config.proxy.metrics_max_tenants,
                config.proxy.metrics_tenant_labels,
            ),
            clients: Arc::new(DashMap::new()),
            started: SystemTime::now(),
        }
    }

    pub fn database(&self, name: &str) -> Option<Arc<DbStats>> {
        self.databases.get(name).map(|d| d.clone())
    }

    /// Registers a database added by a reload.
    pub fn add_database(&self, name: &str) {
        self.databases
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(DbStats::new(name)));
    }

    /// Logged-in clients, oldest first.
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        let mut all: Vec<_> = self.clients.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|c| c.conn_id);
        all
    }

    /// Registers a session; the returned handle unregisters it when dropped.
    pub fn session(
        &self,
        id: &crate::session::ClientIdentity,
        tls: bool,
        slot: Arc<CancelSlot>,
        tenant: Option<&str>,
    ) -> SessionMetrics {
        let db = match self.databases.get(&id.database) {
            Some(d) => d.clone(),
            None => Arc::new(DbStats::new(&id.database)),
        };
        db.clients.increment(1.0);
        let application_name = id
            .params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let info = Arc::new(ClientInfo {
            conn_id: id.conn_id,
            user: id.user.clone(),
            database: id.database.clone(),
            peer: id.peer,
            tls,
            application_name,
            connected: SystemTime::now(),
            tenant: Mutex::new(tenant.map(str::to_string)),
            slot,
        });
        self.clients.insert(id.conn_id, info.clone());
        let tenant = tenant.map(|t| self.tenants.get(t));
        if let Some(t) = &tenant {
            t.connected(1);
        }
        SessionMetrics {
            db,
            tenant,
            info,
            clients: self.clients.clone(),
            request_started: None,
            xact_started: None,
        }
    }

    /// Samples what is not counted as it happens: pool gauges, decision-cache and audit
    /// statistics; closes SHOW STATS periods. Called every second.
    pub fn sample(&self, app: &crate::app::App) {
        for pool in app.pools() {
            let c = pool.counts();
            let db = pool.name.clone();
            let active = c.total.saturating_sub(c.idle) as f64;
            gauge!("tenantgate_server_connections", "database" => db.clone(), "state" => "active")
                .set(active);
            gauge!("tenantgate_server_connections", "database" => db.clone(), "state" => "idle")
                .set(c.idle as f64);
            gauge!("tenantgate_clients_waiting", "database" => db.clone()).set(c.waiting as f64);
            gauge!("tenantgate_pool_paused", "database" => db.clone()).set(if pool.is_paused() {
                1.0
            } else {
                0.0
            });
            let (mut hits, mut misses) = (0, 0);
            for isolation in tenantgate_config::Isolation::ALL {
                if let Some(policy) = app.policy(&pool.name, isolation) {
                    let (h, m) = policy.cache_stats();
                    hits += h;
                    misses += m;
                }
            }
            counter!("tenantgate_policy_cache_hits_total", "database" => db.clone()).absolute(hits);
            counter!("tenantgate_policy_cache_misses_total", "database" => db).absolute(misses);
            if let Some(stats) = self.databases.get(&pool.name) {
                stats.roll(&pool);
            }
        }
        let tenant_dbs = app.tenant_pools().counts();
        gauge!("tenantgate_tenant_database_pools").set(tenant_dbs.pools as f64);
        gauge!("tenantgate_tenant_database_servers").set(tenant_dbs.servers as f64);
        gauge!("tenantgate_tenant_database_servers_max").set(tenant_dbs.cap as f64);
        gauge!("tenantgate_tenant_database_waiting").set(tenant_dbs.waiting as f64);
        counter!("tenantgate_tenant_database_pools_created_total").absolute(tenant_dbs.created);
        counter!("tenantgate_tenant_database_evictions_total").absolute(tenant_dbs.evictions);
        if let Some(audit) = app.audit() {
            gauge!("tenantgate_audit_queue_depth").set(audit.queue_depth() as f64);
            counter!("tenantgate_audit_dropped_records_total").absolute(audit.dropped_total());
        }
        upkeep();
    }
}

/// A server held by one tenant's client (SHOW TENANTS sv_active).
pub struct ServerHeld(Arc<TenantStats>);

impl Drop for ServerHeld {
    fn drop(&mut self) {
        self.0.holding(-1);
    }
}

/// One session's view of the statistics; unregisters the client when dropped.
pub struct SessionMetrics {
    db: Arc<DbStats>,
    tenant: Option<Arc<TenantStats>>,
    info: Arc<ClientInfo>,
    clients: Arc<ClientMap>,
    /// The oldest request (Query, Sync, FunctionCall) without its ReadyForQuery.
    request_started: Option<Instant>,
    xact_started: Option<Instant>,
}

impl SessionMetrics {
    pub fn bytes_received(&self, n: usize) {
        self.db.received.fetch_add(n as u64, Ordering::Relaxed);
        self.db.received_total.increment(n as u64);
    }

    pub fn bytes_sent(&self, n: usize) {
        self.db.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.db.sent_total.increment(n as u64);
    }

    /// A request that will be answered by ReadyForQuery went to the server.
    pub fn request_sent(&mut self) {
        if self.request_started.is_none() {
            let now = Instant::now();
            self.request_started = Some(now);
            self.xact_started.get_or_insert(now);
        }
    }

    /// A ReadyForQuery from the server: one query done; a transaction done at status 'I'.
    /// `pending` is how many requests still await theirs.
    pub fn ready_for_query(&mut self, status: u8, pending: usize) {
        let Some(started) = self.request_started.take() else {
            return;
        };
        let now = Instant::now();
        let took = now.saturating_duration_since(started);
        let db = &self.db;
        db.queries.fetch_add(1, Ordering::Relaxed);
        db.query_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        db.queries_total.increment(1);
        db.query_seconds.record(took.as_secs_f64());
        if let Some(t) = &self.tenant {
            t.query();
        }
        if status == b'I' {
            if let Some(x) = self.xact_started.take() {
                let took = now.saturating_duration_since(x);
                db.xacts.fetch_add(1, Ordering::Relaxed);
                db.xact_us
                    .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                db.xacts_total.increment(1);
            }
        }
        if pending > 0 {
            // Pipelined: the next request's time runs from here.
            self.request_started = Some(now);
            self.xact_started.get_or_insert(now);
        }
    }

    /// A policy verdict ("allow", "reject", "would-reject") on a statement or Bind.
    pub fn decision(&self, verdict: &'static str, rule: &'static str) {
        counter!("tenantgate_policy_decisions_total", "verdict" => verdict, "rule" => rule)
            .increment(1);
        if verdict == "reject" {
            if let Some(t) = &self.tenant {
                t.rejection();
            }
        }
    }

    /// A checkout changed the server's tenant setting.
    pub fn injection(&self) {
        self.db.injections.increment(1);
    }

    /// Counts a server held for the session's tenant until the guard is dropped.
    pub fn server_held(&self) -> Option<ServerHeld> {
        let t = self.tenant.clone()?;
        t.holding(1);
        Some(ServerHeld(t))
    }

    /// The session's tenant changed (tenant switch).
    pub fn set_tenant(&mut self, stats: &Stats, tenant: Option<&str>) {
        if let Some(old) = self.tenant.take() {
            old.connected(-1);
        }
        self.tenant = tenant.map(|t| stats.tenants.get(t));
        if let Some(t) = &self.tenant {
            t.connected(1);
        }
        *self.info.tenant.lock().unwrap_or_else(|e| e.into_inner()) = tenant.map(str::to_string);
    }
}

impl Drop for SessionMetrics {
    fn drop(&mut self) {
        self.db.clients.decrement(1.0);
        if let Some(t) = &self.tenant {
            t.connected(-1);
        }
        self.clients.remove(&self.info.conn_id);
    }
}

/// Whether bringing a server from `have` to `want` changes the tenant `setting`.
pub fn changes_tenant(have: &[(String, String)], want: &[(String, String)], setting: &str) -> bool {
    let value = |s: &[(String, String)]| {
        s.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(setting))
            .map(|(_, v)| v.clone())
    };
    let wanted = value(want);
    wanted.is_some() && value(have) != wanted
}

/// The rule id in a rejection's DETAIL (`rule: …`), for the decision counter.
pub fn rule_of(err: &crate::protocol::PgError) -> &'static str {
    err.detail
        .as_deref()
        .and_then(|d| d.strip_prefix("rule: "))
        .and_then(tenantgate_policy::Rule::from_id)
        .map_or("malformed-bind", |r| r.as_str())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tenants_are_bounded() {
        let t = Tenants::new(2, false);
        t.get("a").query();
        t.get("b").query();
        t.get("c").query();
        t.get("d").query();
        t.get("a").query();
        let all = t.all();
        let names: Vec<_> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", OTHER_TENANT]);
        assert_eq!(all[0].counts().1, 2);
        assert_eq!(all[2].counts().1, 2);
    }

    #[test]
    fn averages_per_second_and_per_event() {
        let a = Totals::default();
        let b = Totals {
            xacts: 120,
            queries: 240,
            xact_us: 1200,
            query_us: 4800,
            assignments: 60,
            wait_us: 600,
            ..Totals::default()
        };
        let avg = averages(&a, &b, 60);
        assert_eq!((avg.xacts, avg.queries, avg.assignments), (2, 4, 1));
        assert_eq!((avg.xact_us, avg.query_us, avg.wait_us), (10, 20, 10));
        assert_eq!(averages(&b, &b, 60), Averages::default());
    }

    #[test]
    fn tenant_change_detection() {
        let s = |v: &str| vec![("app.current_tenant".to_string(), v.to_string())];
        assert!(changes_tenant(&[], &s("acme"), "app.current_tenant"));
        assert!(changes_tenant(
            &s("globex"),
            &s("acme"),
            "app.current_tenant"
        ));
        assert!(!changes_tenant(
            &s("acme"),
            &s("acme"),
            "App.Current_Tenant"
        ));
        assert!(!changes_tenant(&s("acme"), &[], "app.current_tenant"));
    }
}
