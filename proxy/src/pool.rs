//! Server connection pools, one per `[[databases]]` entry.
//!
//! A pool hands out idle servers most-recently-used first (warm caches), opens new ones up to
//! `pool_size`, and otherwise queues clients FIFO; a queued client gets a server directly from
//! the one released, or the right to open one when a server was discarded.
//!
//! Checkouts carry an [`Affinity`]: the session settings (tenant first of all) the client
//! wants. Among idle servers, one that already has them is preferred; a released server goes
//! to the first of the next [`AFFINITY_WINDOW`] waiters that wants its settings, but no waiter
//! is passed over more than [`MAX_PASSES`] times or for longer than [`MAX_PASS_DELAY`], so the
//! queue stays FIFO within a bound.
//!
//! A checkout may be dropped at any await (its client left while it waited): what it holds of
//! the pool by then (a place in `total`, a server granted to it) goes back when it is dropped.

use crate::server::{self, ServerConn, ServerError, ServerTarget};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tenantgate_config::{DatabaseConfig, PoolMode};
use tokio::sync::oneshot;

/// Pool settings, replaced as a whole on reload.
#[derive(Clone)]
pub struct PoolSettings {
    pub target: ServerTarget,
    pub mode: PoolMode,
    pub pool_size: usize,
    pub min_pool_size: usize,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub query_wait_timeout: Duration,
}

impl PoolSettings {
    pub fn from_config(
        db: &DatabaseConfig,
        max_message: usize,
        max_prepared: usize,
    ) -> Result<PoolSettings, crate::tls::TlsSetupError> {
        Ok(PoolSettings {
            target: ServerTarget::from_config(db, max_message, max_prepared)?,
            mode: db.pool_mode,
            pool_size: db.pool_size,
            min_pool_size: db.min_pool_size,
            idle_timeout: db.server_idle_timeout(),
            lifetime: db.server_lifetime(),
            query_wait_timeout: db.query_wait_timeout(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection available within query_wait_timeout")]
    WaitTimeout,
    #[error("pool is closed")]
    Closed,
    #[error("tenant holds max_tenant_connections servers and none was released within query_wait_timeout")]
    TenantQuota,
    #[error(transparent)]
    Server(#[from] ServerError),
}

enum Grant {
    Conn(Box<ServerConn>),
    /// The receiver may open a new connection: a slot was freed for it.
    Connect,
    /// `query_wait_timeout` passed first (sent by the pool's reaper).
    TimedOut,
}

/// A client queued for a server.
struct Waiter {
    tx: oneshot::Sender<Grant>,
    /// When `query_wait_timeout` runs out; None waits forever.
    deadline: Option<Instant>,
    affinity: Affinity,
    /// How often a server went to a waiter behind this one (at most [`MAX_PASSES`]).
    passed: u8,
    /// When that first happened.
    first_passed: Option<Instant>,
}

/// How many waiters a released server looks through for one that wants its settings.
pub const AFFINITY_WINDOW: usize = 64;
/// How often a waiter may be passed over for a later one that wants the released server's
/// settings: each pass makes it wait for one more release.
pub const MAX_PASSES: u8 = 16;
/// How long after its first pass a waiter may still be passed over: with slow transactions a
/// waiter is passed over once or twice, not [`MAX_PASSES`] times.
pub const MAX_PASS_DELAY: Duration = Duration::from_millis(3);

/// Which session settings a checkout wants, as a hint: the pool prefers a server that already
/// has them, so that none need applying (a tenant change costs the server a statement).
/// Equal setting sets give equal keys in any order; a collision only costs that statement,
/// since the session compares the settings themselves before it uses the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Affinity(u64);

impl Affinity {
    /// No preference.
    pub const NONE: Affinity = Affinity(0);

    pub fn of(settings: &[(String, String)]) -> Affinity {
        // FNV-1a per setting, summed: cheap (it runs at every checkout and release), and a
        // collision only costs a settings statement.
        let key = settings.iter().fold(0u64, |key, (k, v)| {
            let bytes = k.bytes().chain([0]).chain(v.bytes());
            let h = bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            key.wrapping_add(h)
        });
        Affinity(key.max(1))
    }
}

#[derive(Default)]
struct PoolState {
    idle: Vec<ServerConn>,
    /// Idle + checked out + being opened.
    total: usize,
    waiters: VecDeque<Waiter>,
    /// A [`reap`] task is running for this pool.
    reaping: bool,
    closed: bool,
}

#[derive(Default)]
pub struct PoolStats {
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub waits: AtomicU64,
    pub wait_timeouts: AtomicU64,
    pub wait_us_total: AtomicU64,
    /// Servers handed to clients (SHOW STATS total_server_assignment_count).
    pub assignments: AtomicU64,
}

/// An idle server, for SHOW SERVERS.
#[derive(Debug, Clone)]
pub struct IdleServer {
    pub id: u64,
    pub backend_pid: i32,
    pub created: Instant,
    pub last_used: Instant,
}

pub struct Pool {
    pub name: String,
    /// The client-facing database (`[[databases]] name`) this pool serves.
    pub database: String,
    /// Database isolation: the budget this tenant pool's servers count against.
    budget: Option<crate::tenant_pools::BudgetRef>,
    settings: arc_swap::ArcSwap<PoolSettings>,
    state: Mutex<PoolState>,
    /// Per-tenant server quotas (`max_tenant_connections`): FIFO semaphores.
    tenant_quotas: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// The ParameterStatus values of the last server opened, for transaction-mode logins that
    /// need no server.
    server_params: Mutex<Option<ServerParams>>,
    pub stats: PoolStats,
    /// Admin PAUSE: new checkouts wait until RESUME.
    paused: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
    /// Checkouts waiting for RESUME (counted as waiting clients).
    paused_waiters: std::sync::atomic::AtomicUsize,
    metrics: crate::metrics::PoolMetrics,
}

/// ParameterStatus values (name, value) as a server reported them.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// A tenant's share of a pool, held for as long as one of its clients holds a server.
pub type TenantPermit = tokio::sync::OwnedSemaphorePermit;

/// Counts for SHOW POOLS and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolCounts {
    pub idle: usize,
    pub total: usize,
    pub waiting: usize,
}

impl Pool {
    pub fn new(name: &str, settings: PoolSettings) -> Arc<Pool> {
        Self::build(name, name, settings, None)
    }

    /// A tenant database's pool, drawing servers from `budget`.
    pub(crate) fn new_tenant(
        name: &str,
        database: &str,
        settings: PoolSettings,
        budget: crate::tenant_pools::BudgetRef,
    ) -> Arc<Pool> {
        Self::build(name, database, settings, Some(budget))
    }

    fn build(
        name: &str,
        database: &str,
        settings: PoolSettings,
        budget: Option<crate::tenant_pools::BudgetRef>,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            name: name.to_string(),
            database: database.to_string(),
            budget,
            settings: arc_swap::ArcSwap::from_pointee(settings),
            state: Mutex::new(PoolState::default()),
            tenant_quotas: Mutex::new(std::collections::HashMap::new()),
            server_params: Mutex::new(None),
            stats: PoolStats::default(),
            paused: Default::default(),
            resumed: tokio::sync::Notify::new(),
            paused_waiters: Default::default(),
            metrics: crate::metrics::PoolMetrics::new(database),
        })
    }

    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// New settings (reload). A larger pool lets queued clients open servers at once; a
    /// smaller one shrinks as servers are released.
    pub fn set_settings(&self, settings: PoolSettings) {
        let size = settings.pool_size;
        self.settings.store(Arc::new(settings));
        let mut s = self.lock();
        while s.total < size {
            let Some(w) = s.waiters.pop_front() else {
                break;
            };
            s.total += 1;
            if w.tx.send(Grant::Connect).is_err() {
                s.total -= 1;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding this lock would be a bug in this module; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn counts(&self) -> PoolCounts {
        let s = self.lock();
        PoolCounts {
            idle: s.idle.len(),
            total: s.total,
            // A waiter whose checkout was dropped (its client left) stays queued until a
            // release passes it over; it waits for nothing.
            waiting: s.waiters.iter().filter(|w| !w.tx.is_closed()).count()
                + self.paused_waiters.load(Ordering::Relaxed),
        }
    }

    /// Idle servers, most recently used last.
    pub fn idle_servers(&self) -> Vec<IdleServer> {
        self.lock()
            .idle
            .iter()
            .map(|c| IdleServer {
                id: c.id,
                backend_pid: c.backend_pid,
                created: c.created,
                last_used: c.last_used,
            })
            .collect()
    }

    /// Admin PAUSE: checkouts from now on wait for [`Pool::resume`] (within
    /// `query_wait_timeout`); servers already held are not affected.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Waits while the pool is paused, up to `query_wait_timeout` (0 = forever).
    async fn wait_resumed(&self, settings: &PoolSettings) -> Result<(), PoolError> {
        let _counted = PausedWaiter::new(&self.paused_waiters);
        let wait = async {
            loop {
                let notified = self.resumed.notified();
                tokio::pin!(notified);
                // Registered before the check, so a RESUME in between is not missed.
                notified.as_mut().enable();
                if !self.is_paused() {
                    return;
                }
                notified.await;
            }
        };
        let result = if settings.query_wait_timeout.is_zero() {
            wait.await;
            Ok(())
        } else {
            tokio::time::timeout(settings.query_wait_timeout, wait)
                .await
                .map_err(|_| PoolError::WaitTimeout)
        };
        if result.is_err() {
            self.stats.wait_timeouts.fetch_add(1, Ordering::Relaxed);
            crate::metrics::error(crate::metrics::ErrorKind::PoolTimeout);
        }
        result
    }

    /// ParameterStatus values of this pool's servers, once one has been opened.
    pub fn server_params(&self) -> Option<ServerParams> {
        self.server_params
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (FIFO, up to `query_wait_timeout`) until `tenant` holds fewer than `limit` servers
    /// of this pool, so one busy tenant cannot take every server.
    pub async fn tenant_permit(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<TenantPermit, PoolError> {
        let sem = {
            let mut quotas = self.tenant_quotas.lock().unwrap_or_else(|e| e.into_inner());
            quotas
                .entry(tenant.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit.max(1))))
                .clone()
        };
        let wait = self.settings().query_wait_timeout;
        let acquire = sem.acquire_owned();
        let permit = if wait.is_zero() {
            acquire.await.ok()
        } else {
            tokio::time::timeout(wait, acquire)
                .await
                .map_err(|_| {
                    crate::metrics::error(crate::metrics::ErrorKind::PoolTimeout);
                    PoolError::TenantQuota
                })?
                .ok()
        };
        permit.ok_or(PoolError::Closed)
    }

    /// Takes an idle server, opens one, or waits FIFO for one up to `query_wait_timeout`;
    /// prefers servers whose settings match `affinity` (see [`Affinity`]).
    pub async fn acquire(self: &Arc<Self>, affinity: Affinity) -> Result<ServerConn, PoolError> {
        let conn = self.checkout(affinity).await?;
        self.stats.assignments.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    async fn checkout(self: &Arc<Self>, affinity: Affinity) -> Result<ServerConn, PoolError> {
        let settings = self.settings();
        if self.is_paused() {
            self.wait_resumed(&settings).await?;
        }
        let rx = {
            let mut s = self.lock();
            if s.closed {
                return Err(PoolError::Closed);
            }
            if let Some(conn) = Self::take_idle(&mut s, &settings, affinity) {
                return Ok(conn);
            }
            if s.total < settings.pool_size {
                s.total += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                let now = Instant::now();
                let timeout = settings.query_wait_timeout;
                let deadline = (!timeout.is_zero()).then(|| now + timeout);
                s.waiters.push_back(Waiter {
                    tx,
                    deadline,
                    affinity,
                    passed: 0,
                    first_passed: None,
                });
                if deadline.is_some() && !s.reaping {
                    s.reaping = true;
                    tokio::spawn(reap(Arc::downgrade(self)));
                }
                Some((rx, now))
            }
        };
        match rx {
            None => self.open(&settings).await,
            Some((rx, since)) => self.wait(rx, since, &settings).await,
        }
    }

    /// The most recently used idle server with `affinity`'s settings, else the most recently
    /// used one; servers past their lifetime or closed by the peer are dropped on the way.
    fn take_idle(
        s: &mut PoolState,
        settings: &PoolSettings,
        affinity: Affinity,
    ) -> Option<ServerConn> {
        loop {
            let last = s.idle.len().checked_sub(1)?;
            let i = match affinity {
                Affinity::NONE => last,
                want => s
                    .idle
                    .iter()
                    .rposition(|c| c.affinity == want)
                    .unwrap_or(last),
            };
            let conn = s.idle.remove(i);
            let expired =
                !settings.lifetime.is_zero() && conn.created.elapsed() > settings.lifetime;
            if expired || conn.conn.stream.idle_peer_gone() {
                s.total -= 1;
                continue;
            }
            return Some(conn);
        }
    }

    /// Opens a server in a place already counted in `total`; the place is given up if that
    /// fails or the checkout is dropped first.
    async fn open(&self, settings: &PoolSettings) -> Result<ServerConn, PoolError> {
        let opening = Opening(Some(self));
        let slot = match self.budget.as_ref().and_then(std::sync::Weak::upgrade) {
            Some(budget) => Some(budget.slot(settings.query_wait_timeout).await?),
            None => None,
        };
        match server::connect(&settings.target, &[]).await {
            Ok(mut conn) => {
                opening.opened();
                conn.slot = slot;
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                *self.server_params.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Arc::new(conn.params.clone()));
                Ok(conn)
            }
            Err(e) => {
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                crate::metrics::error(crate::metrics::ErrorKind::ServerConnect);
                Err(e.into())
            }
        }
    }

    async fn wait(
        &self,
        rx: oneshot::Receiver<Grant>,
        since: Instant,
        settings: &PoolSettings,
    ) -> Result<ServerConn, PoolError> {
        self.stats.waits.fetch_add(1, Ordering::Relaxed);
        let mut queued = Queued { pool: self, rx };
        // No timer here: the pool's reaper sends TimedOut at the deadline.
        let granted = (&mut queued.rx).await.ok();
        let waited = since.elapsed();
        self.stats
            .wait_us_total
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        self.metrics.waited(waited);
        match granted {
            Some(Grant::Conn(conn)) => Ok(*conn),
            Some(Grant::Connect) => self.open(settings).await,
            Some(Grant::TimedOut) => {
                self.stats.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                crate::metrics::error(crate::metrics::ErrorKind::PoolTimeout);
                Err(PoolError::WaitTimeout)
            }
            None => Err(PoolError::Closed),
        }
    }

    /// Returns a clean, idle server (ReadyForQuery 'I', no session state) to the pool.
    pub fn release(&self, conn: ServerConn) {
        self.release_to_waiter(conn);
    }

    /// [`Pool::release`], saying whether a waiting client got the server.
    pub fn release_to_waiter(&self, mut conn: ServerConn) -> bool {
        let settings = self.settings();
        if !settings.lifetime.is_zero() && conn.created.elapsed() > settings.lifetime {
            drop(conn);
            self.forget_one();
            return false;
        }
        conn.last_used = Instant::now();
        conn.affinity = Affinity::of(&conn.session_settings);
        let budget_wanted = self
            .budget
            .as_ref()
            .and_then(std::sync::Weak::upgrade)
            .is_some_and(|b| b.has_waiters());
        let mut s = self.lock();
        if budget_wanted && s.waiters.is_empty() {
            // Another tenant database waits for a server: give it this one's budget.
            s.total -= 1;
            drop(s);
            drop(conn);
            return false;
        }
        if s.closed || s.total > settings.pool_size {
            // Closed, or shrunk by a reload: this server goes away.
            s.total -= 1;
            return false;
        }
        while let Some(w) = take_waiter(&mut s.waiters, conn.affinity) {
            match w.tx.send(Grant::Conn(Box::new(conn))) {
                Ok(()) => return true,
                Err(Grant::Conn(back)) => conn = *back,
                Err(_) => return false,
            }
        }
        s.idle.push(conn);
        false
    }

    /// Accounts for a server that was closed instead of released, and lets a waiter open one.
    pub fn forget_one(&self) {
        let mut s = self.lock();
        s.total = s.total.saturating_sub(1);
        if s.closed {
            return;
        }
        while let Some(w) = s.waiters.pop_front() {
            s.total += 1;
            if w.tx.send(Grant::Connect).is_ok() {
                return;
            }
            s.total -= 1;
        }
    }

    /// Closes idle servers past `server_idle_timeout` and opens servers up to `min_pool_size`.
    pub async fn maintain(&self) {
        let settings = self.settings();
        let mut to_open = 0;
        {
            let mut s = self.lock();
            let keep = settings.min_pool_size;
            let idle_timeout = settings.idle_timeout;
            let before = s.idle.len();
            let mut idle_kept = Vec::with_capacity(before);
            // Oldest-used first so the warm ones survive.
            s.idle
                .sort_by_key(|c| std::cmp::Reverse(c.last_used.elapsed()));
            let total = s.total;
            let mut removed = 0;
            for conn in std::mem::take(&mut s.idle) {
                let stale = !idle_timeout.is_zero() && conn.last_used.elapsed() > idle_timeout;
                let dead = conn.conn.stream.idle_peer_gone();
                if dead || (stale && total - removed > keep) {
                    removed += 1;
                } else {
                    idle_kept.push(conn);
                }
            }
            idle_kept.sort_by_key(|c| c.last_used.elapsed());
            idle_kept.reverse();
            s.idle = idle_kept;
            s.total -= removed;
            if !s.closed && s.total < keep {
                to_open = keep - s.total;
                s.total += to_open;
            }
        }
        for _ in 0..to_open {
            match self.open(&settings).await {
                Ok(conn) => self.release(conn),
                Err(e) => {
                    tracing::warn!(pool = %self.name, error = %e, "could not open min_pool_size server");
                    break;
                }
            }
        }
    }

    /// When the least recently used idle server was last used.
    pub(crate) fn oldest_idle(&self) -> Option<Instant> {
        self.lock().idle.iter().map(|c| c.last_used).min()
    }

    /// Closes the least recently used idle server; false when none is idle.
    pub(crate) fn close_oldest_idle(&self) -> bool {
        let mut s = self.lock();
        let Some(i) = s
            .idle
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.last_used)
            .map(|(i, _)| i)
        else {
            return false;
        };
        let conn = s.idle.remove(i);
        s.total -= 1;
        drop(s);
        drop(conn);
        true
    }

    /// Stops handing out servers: closes idle ones and fails waiters.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        let n = s.idle.len();
        s.idle.clear();
        s.total -= n;
        s.waiters.clear();
        drop(s);
        // Paused checkouts see `closed` and fail.
        self.resume();
    }
}

/// A place in the queue. Dropped before its grant was taken (the checkout was abandoned), it
/// refuses further grants and hands back one already sent: the server to the pool, the right
/// to open one to the next waiter. Either is counted in `total` and would otherwise leak.
struct Queued<'a> {
    pool: &'a Pool,
    rx: oneshot::Receiver<Grant>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.rx.close();
        match self.rx.try_recv() {
            Ok(Grant::Conn(conn)) => self.pool.release(*conn),
            Ok(Grant::Connect) => self.pool.forget_one(),
            Ok(Grant::TimedOut) | Err(_) => {}
        }
    }
}

/// A checked-out server's place in its pool's `total`. The paths that hand the server back to
/// the pool, or close it and account for that, call [`Place::keep`]; dropped any other way (a
/// session unwinding from a panic), the place is given up, so that the pool does not shrink for
/// good.
pub struct Place(Option<Arc<Pool>>);

impl Place {
    pub fn new(pool: &Arc<Pool>) -> Place {
        Place(Some(pool.clone()))
    }

    /// The server's place is accounted for elsewhere.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.forget_one();
        }
    }
}

/// A server being opened: its place in `total` is given up when this is dropped before
/// [`Opening::opened`] (the connection failed, or the checkout was abandoned).
struct Opening<'a>(Option<&'a Pool>);

impl Opening<'_> {
    fn opened(mut self) {
        self.0 = None;
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if let Some(pool) = self.0 {
            pool.forget_one();
        }
    }
}

/// A checkout counted as waiting for RESUME for as long as this lives.
struct PausedWaiter<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> PausedWaiter<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        PausedWaiter(count)
    }
}

impl Drop for PausedWaiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The waiter a released server with `affinity`'s settings goes to: the first one in the
/// window that wants them, unless the head was passed over [`MAX_PASSES`] times already or
/// first passed over [`MAX_PASS_DELAY`] ago; the waiters it passes count a pass. Every pass of
/// a waiter also passes all waiters ahead of it, so the head has been passed over the most and
/// the longest: checking it bounds every waiter's.
fn take_waiter(waiters: &mut VecDeque<Waiter>, affinity: Affinity) -> Option<Waiter> {
    let head = waiters.front()?;
    let mut now = None;
    let may_pass = affinity != Affinity::NONE
        && head.passed < MAX_PASSES
        && head.first_passed.is_none_or(|t| {
            now.get_or_insert_with(Instant::now).duration_since(t) < MAX_PASS_DELAY
        });
    let i = if may_pass {
        waiters
            .iter()
            .take(AFFINITY_WINDOW)
            .position(|w| w.affinity == affinity)
            .unwrap_or(0)
    } else {
        0
    };
    if i > 0 {
        let now = *now.get_or_insert_with(Instant::now);
        for w in waiters.iter_mut().take(i) {
            w.passed += 1;
            w.first_passed.get_or_insert(now);
        }
    }
    waiters.remove(i)
}

/// Fails the pool's waiters whose `query_wait_timeout` ran out: one task and one timer per
/// pool while it has waiters with a deadline, instead of a timer per wait (which cost more
/// than the rest of a checkout).
async fn reap(pool: std::sync::Weak<Pool>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else {
                return;
            };
            let mut s = pool.lock();
            let now = Instant::now();
            // A reload may change the timeout, so deadlines need not be in queue order.
            if s.waiters
                .iter()
                .any(|w| w.deadline.is_some_and(|d| d <= now))
            {
                let queued = std::mem::take(&mut s.waiters);
                for w in queued {
                    if w.deadline.is_some_and(|d| d <= now) {
                        // A receiver that is gone no longer waits; nothing to undo.
                        let _ = w.tx.send(Grant::TimedOut);
                    } else {
                        s.waiters.push_back(w);
                    }
                }
            }
            match s.waiters.iter().filter_map(|w| w.deadline).min() {
                Some(next) if !s.closed => next,
                _ => {
                    s.reaping = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next.into()).await;
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
