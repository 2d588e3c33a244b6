//! Database isolation: one pool per (client-facing database, tenant database), created when a
//! tenant first needs it, all drawing server connections from one budget
//! (`[tenancy] max_database_connections`).
//!
//! 10,000 tenants must not mean 10,000 idle pools or 10,000 open servers: when the budget is
//! spent, the idle server that was used least recently, in whichever tenant pool, is closed to
//! make room; when none is idle, the request waits (FIFO) for a server to be closed, within
//! `query_wait_timeout`. A server released while others wait for the budget is closed rather
//! than kept idle, so the budget moves to where the demand is. Pools left without servers or
//! clients are dropped by [`TenantPools::maintain`].

use crate::pool::{Pool, PoolError, PoolSettings};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

/// (client-facing database, tenant database on the server)
type Key = (String, String);

#[derive(Default)]
struct Budget {
    used: usize,
    cap: usize,
    waiters: VecDeque<oneshot::Sender<()>>,
}

pub struct TenantPools {
    pools: Mutex<HashMap<Key, Arc<Pool>>>,
    budget: Mutex<Budget>,
    /// Pools created since start (a pool dropped when unused and needed again counts twice).
    created: AtomicU64,
    /// Idle servers closed to make room for another tenant database.
    evictions: AtomicU64,
}

/// The right to hold one server connection of a tenant pool; returned when dropped (the
/// connection holds it for as long as it is open).
pub struct ServerSlot {
    owner: Arc<TenantPools>,
}

impl Drop for ServerSlot {
    fn drop(&mut self) {
        self.owner.give_back();
    }
}

impl std::fmt::Debug for ServerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSlot")
    }
}

/// Budget use, for SHOW LISTS and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct BudgetCounts {
    pub pools: usize,
    pub servers: usize,
    pub cap: usize,
    pub waiting: usize,
    pub created: u64,
    pub evictions: u64,
}

impl TenantPools {
    pub fn new(cap: usize) -> Arc<TenantPools> {
        Arc::new(TenantPools {
            pools: Mutex::new(HashMap::new()),
            budget: Mutex::new(Budget {
                cap: cap.max(1),
                ..Budget::default()
            }),
            created: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    fn pools_lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Pool>>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn budget_lock(&self) -> MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool of `tenant_db` behind `database`, created with `settings()` when missing.
    pub fn get_or_create(
        self: &Arc<Self>,
        database: &str,
        tenant_db: &str,
        settings: impl FnOnce() -> PoolSettings,
    ) -> Arc<Pool> {
        let key = (database.to_string(), tenant_db.to_string());
        let mut pools = self.pools_lock();
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        let pool = Pool::new_tenant(
            &format!("{database}/{tenant_db}"),
            database,
            settings(),
            Arc::downgrade(self),
        );
        pools.insert(key, pool.clone());
        self.created.fetch_add(1, Ordering::Relaxed);
        pool
    }

    /// Every tenant pool, for the admin console, metrics and maintenance.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools_lock().values().cloned().collect()
    }

    pub fn counts(&self) -> BudgetCounts {
        let pools = self.pools_lock().len();
        let b = self.budget_lock();
        BudgetCounts {
            pools,
            servers: b.used,
            cap: b.cap,
            waiting: b.waiters.len(),
            created: self.created.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// A new cap (reload). A larger one lets waiters connect at once; a smaller one takes
    /// effect as servers close.
    pub fn set_cap(&self, cap: usize) {
        let mut b = self.budget_lock();
        b.cap = cap.max(1);
        while b.used < b.cap {
            let Some(tx) = b.waiters.pop_front() else {
                break;
            };
            b.used += 1;
            if tx.send(()).is_err() {
                b.used -= 1;
            }
        }
    }

    /// Someone is waiting for the budget: a released server should be closed, not kept idle.
    pub fn has_waiters(&self) -> bool {
        let mut b = self.budget_lock();
        // Waiters that timed out leave closed senders behind.
        b.waiters.retain(|tx| !tx.is_closed());
        !b.waiters.is_empty()
    }

    fn give_back(&self) {
        let mut b = self.budget_lock();
        b.used = b.used.saturating_sub(1);
        while b.used < b.cap {
            let Some(tx) = b.waiters.pop_front() else {
                break;
            };
            b.used += 1;
            if tx.send(()).is_ok() {
                return;
            }
            b.used -= 1;
        }
    }

    fn try_take(&self) -> bool {
        let mut b = self.budget_lock();
        if b.used < b.cap {
            b.used += 1;
            true
        } else {
            false
        }
    }

    /// Closes the least recently used idle server of any tenant pool. False when none is idle.
    fn evict_lru(&self) -> bool {
        let victim = self
            .pools()
            .into_iter()
            .filter_map(|p| p.oldest_idle().map(|at| (at, p)))
            .min_by_key(|(at, _)| *at);
        let evicted = victim.is_some_and(|(_, pool)| pool.close_oldest_idle());
        if evicted {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        evicted
    }

    /// A slot for one new server connection: free budget, an evicted idle server's, or the
    /// next one closed (FIFO, up to `wait`; zero waits forever).
    pub async fn slot(self: &Arc<Self>, wait: Duration) -> Result<ServerSlot, PoolError> {
        loop {
            if self.try_take() {
                return Ok(ServerSlot {
                    owner: self.clone(),
                });
            }
            if !self.evict_lru() {
                break;
            }
        }
        let mut queued = {
            let mut b = self.budget_lock();
            if b.used < b.cap {
                b.used += 1;
                return Ok(ServerSlot {
                    owner: self.clone(),
                });
            }
            let (tx, rx) = oneshot::channel();
            b.waiters.push_back(tx);
            BudgetWait { owner: self, rx }
        };
        // A server may have gone idle between the eviction attempt and the registration
        // (its release did not see a waiter yet): evict now that we are registered.
        self.evict_lru();
        let granted = if wait.is_zero() {
            (&mut queued.rx).await.is_ok()
        } else {
            match tokio::time::timeout(wait, &mut queued.rx).await {
                Ok(r) => r.is_ok(),
                Err(_) => {
                    // Dropping `queued` hands back a slot granted meanwhile.
                    crate::metrics::error(crate::metrics::ErrorKind::PoolTimeout);
                    return Err(PoolError::WaitTimeout);
                }
            }
        };
        if granted {
            Ok(ServerSlot {
                owner: self.clone(),
            })
        } else {
            Err(PoolError::Closed)
        }
    }

    /// Drops pools that have no server, no waiter and no client holding them, and applies
    /// the per-pool maintenance (idle timeouts) to the others.
    pub async fn maintain(&self) {
        // Requests waiting for the budget while servers sit idle: make room.
        while self.has_waiters() && self.evict_lru() {}
        let pools = self.pools();
        for pool in &pools {
            pool.maintain().await;
        }
        drop(pools);
        self.pools_lock().retain(|_, p| {
            // The map holds one reference; any other is a client's.
            let c = p.counts();
            Arc::strong_count(p) > 1 || c.total > 0 || c.waiting > 0
        });
    }

    /// Applies new settings to the pools of databases that remain and closes the others.
    /// `settings(database, tenant_db)` is None for a database that is gone.
    pub fn reconfigure(&self, settings: impl Fn(&str, &str) -> Option<PoolSettings>) {
        let mut pools = self.pools_lock();
        pools.retain(|(db, tdb), pool| match settings(db, tdb) {
            Some(s) => {
                pool.set_settings(s);
                true
            }
            None => {
                pool.close();
                false
            }
        });
    }

    /// Closes every tenant pool (shutdown).
    pub fn close_all(&self) {
        for pool in self.pools_lock().drain().map(|(_, p)| p) {
            pool.close();
        }
    }
}

/// A place in the budget's queue. Dropped before its grant was taken (a timeout, or the
/// checkout was abandoned), it refuses further grants and gives back one already sent.
struct BudgetWait<'a> {
    owner: &'a TenantPools,
    rx: oneshot::Receiver<()>,
}

impl Drop for BudgetWait<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            self.owner.give_back();
        }
    }
}

/// How a pool draws on the tenant-database budget.
pub(crate) type BudgetRef = Weak<TenantPools>;
