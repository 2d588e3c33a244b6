//! CancelRequest routing. Each client gets its own BackendKeyData from the proxy; a cancel
//! with that key is forwarded to whichever server the client holds at that moment.

use crate::pool::PoolSettings;
use crate::server::{send_cancel, ServerTarget};
use dashmap::DashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct CancelTarget {
    /// The settings of the pool the server came from (shared: attaching copies no strings).
    pub settings: Arc<PoolSettings>,
    pub pid: i32,
    pub secret: i32,
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
                e.slot.get()
            }
            _ => None,
        };
        let Some(t) = target else {
            tracing::debug!(pid, "cancel request for unknown key or idle client ignored");
            return;
        };
        if let Err(e) = send_cancel(t.target(), t.pid, t.secret).await {
            tracing::warn!(error = %e, "forwarding cancel request failed");
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}
