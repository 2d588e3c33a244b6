//! CancelRequest routing. Each client gets its own BackendKeyData from the proxy; a cancel
//! with that key is forwarded to whichever server the client holds at that moment.
//!
//! A forwarded cancel reaches Postgres some time after the proxy read it (a new connection, a
//! fork on the server), by which time the query may have finished and the server gone back to
//! the pool. So that it never cancels the next client's query, as in PgBouncer a server with a
//! cancel in flight is not handed on until Postgres has closed the cancel connection, which it
//! does once the backend is signalled (a cancel reaching an idle backend is ignored).

use crate::pool::PoolSettings;
use crate::server::{send_cancel, ServerTarget};
use dashmap::DashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How long a released server waits for the cancels forwarded to it before it is closed
/// instead of pooled.
pub const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Set in [`CancelsInFlight`]'s count by a cancel whose outcome is unknown.
const DOUBTFUL: usize = 1 << (usize::BITS - 1);

/// The cancels forwarded to one server's backend that have not finished, shared between the
/// server and its cancel target.
#[derive(Default)]
pub struct CancelsInFlight {
    /// How many are in flight, plus [`DOUBTFUL`] once one failed or timed out: Postgres may
    /// still act on it (the request may be in its socket buffer), so the server is not reused.
    count: AtomicUsize,
    /// Woken when the count of those in flight drops to zero.
    done: Notify,
}

impl CancelsInFlight {
    /// Must the server wait (or be closed) before another client gets it? One atomic load:
    /// this runs at every release.
    pub fn busy(&self) -> bool {
        self.count.load(Ordering::Acquire) != 0
    }

    /// Waits up to [`CANCEL_WAIT`] until no cancel is in flight. False if one still is, or one
    /// had an unknown outcome: the server must then be closed, not reused.
    pub async fn finished(&self) -> bool {
        let wait = async {
            loop {
                let notified = self.done.notified();
                tokio::pin!(notified);
                // Registered before the check, so a cancel finishing in between is not missed.
                notified.as_mut().enable();
                match self.count.load(Ordering::Acquire) {
                    0 => return true,
                    // Closing the server makes any cancel to its backend harmless.
                    n if n & DOUBTFUL != 0 => return false,
                    _ => notified.await,
                }
            }
        };
        tokio::time::timeout(CANCEL_WAIT, wait)
            .await
            .unwrap_or(false)
    }

    /// Counts a cancel as in flight until the returned guard is dropped.
    fn start(self: &Arc<Self>) -> InFlight {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlight {
            cancels: self.clone(),
            sure: false,
        }
    }
}

/// One forwarded cancel, counted in [`CancelsInFlight`] until dropped: dropped without
/// [`InFlight::sure`] (an error, a timeout, the task gone), its outcome counts as unknown.
struct InFlight {
    cancels: Arc<CancelsInFlight>,
    sure: bool,
}

impl InFlight {
    /// Postgres has closed the cancel connection: the backend has been signalled, or the
    /// request ignored.
    fn sure(mut self) {
        self.sure = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let c = &self.cancels;
        if !self.sure {
            c.count.fetch_or(DOUBTFUL, Ordering::AcqRel);
        }
        if c.count.fetch_sub(1, Ordering::AcqRel) & !DOUBTFUL == 1 {
            c.done.notify_waiters();
        }
    }
}

#[derive(Clone)]
pub struct CancelTarget {
    /// The settings of the pool the server came from (shared: attaching copies no strings).
    pub settings: Arc<PoolSettings>,
    pub pid: i32,
    pub secret: i32,
    /// The server's [`CancelsInFlight`].
    pub in_flight: Arc<CancelsInFlight>,
}

impl CancelTarget {
    pub fn target(&self) -> &ServerTarget {
        &self.settings.target
    }
}

/// The part of a client's state a cancel needs; shared between the session and the registry.
#[derive(Default)]
pub struct CancelSlot(Mutex<Option<CancelTarget>>);

impl CancelSlot {
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }
    pub fn get(&self) -> Option<CancelTarget> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The target, its cancel counted as in flight under the same lock: a session that
    /// cleared the slot (releasing the server) then sees the count.
    fn start_cancel(&self) -> Option<(CancelTarget, InFlight)> {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let target = slot.as_ref()?;
        let in_flight = target.in_flight.start();
        Some((target.clone(), in_flight))
    }
}

struct Entry {
    secret: i32,
    slot: Arc<CancelSlot>,
}

#[derive(Default)]
pub struct CancelRegistry {
    clients: Arc<DashMap<i32, Entry>>,
}

/// Removes the client's key when its session ends.
pub struct CancelKey {
    clients: Arc<DashMap<i32, Entry>>,
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.clients.remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Issues a fresh, unique key for a client.
    pub fn register(&self) -> CancelKey {
        let slot = Arc::new(CancelSlot::default());
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            let secret = rand::random::<i32>();
            if pid == 0 {
                continue;
            }
            if let dashmap::Entry::Vacant(v) = self.clients.entry(pid) {
                v.insert(Entry {
                    secret,
                    slot: slot.clone(),
                });
                return CancelKey {
                    clients: self.clients.clone(),
                    pid,
                    secret,
                    slot,
                };
            }
        }
    }

    /// Forwards a cancel if the key matches a client that currently holds a server; otherwise
    /// does nothing, as Postgres does for unknown keys.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = match self.clients.get(&pid) {
            Some(e)
                if crate::auth::constant_time_eq(
                    &e.secret.to_be_bytes(),
                    &secret.to_be_bytes(),
                ) =>
            {
                e.slot.start_cancel()
            }
            _ => None,
        };
        let Some((t, in_flight)) = target else {
            tracing::debug!(pid, "cancel request for unknown key or idle client ignored");
            return;
        };
        // Bounded by the server's connect timeout; the server waits for it at release.
        match send_cancel(t.target(), t.pid, t.secret).await {
            Ok(()) => in_flight.sure(),
            Err(e) => tracing::warn!(error = %e, "forwarding cancel request failed"),
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_is_free_once_its_cancels_have_finished() {
        let cancels = Arc::new(CancelsInFlight::default());
        assert!(!cancels.busy());
        let (a, b) = (cancels.start(), cancels.start());
        assert!(cancels.busy());
        let waiting = tokio::spawn({
            let cancels = cancels.clone();
            async move { cancels.finished().await }
        });
        a.sure();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one cancel is still in flight");
        b.sure();
        assert!(waiting.await.unwrap_or(false));
        assert!(!cancels.busy());
    }

    #[tokio::test]
    async fn a_cancel_with_an_unknown_outcome_closes_the_server() {
        let cancels = Arc::new(CancelsInFlight::default());
        drop(cancels.start());
        assert!(cancels.busy());
        assert!(!cancels.finished().await);
    }
}
