//! Bounded concurrent decision cache.
//!
//! Keyed by a keyed 64-bit hash of the SQL text; each entry also stores a second, independently
//! keyed 64-bit hash and the length, so a lookup only hits when 128 bits + length agree (the
//! keys are random per cache, so collisions cannot be crafted). The text itself is not stored,
//! which keeps memory at ~100 bytes per entry whatever the statement size.
//!
//! Eviction: when the map is full, about a quarter of the entries (chosen by hash bits, i.e.
//! pseudo-randomly) is dropped in one `retain` pass. That is O(n) once every n/4 inserts.

use crate::analyze::Analysis;
use dashmap::DashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

struct Entry {
    check: u64,
    len: usize,
    analysis: Arc<Analysis>,
}

pub(crate) struct DecisionCache {
    map: DashMap<u64, Entry>,
    capacity: usize,
    k1: RandomState,
    k2: RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
    evict_round: AtomicU64,
}

impl DecisionCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: DashMap::with_capacity(capacity.min(1 << 16)),
            capacity,
            k1: RandomState::new(),
            k2: RandomState::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evict_round: AtomicU64::new(0),
        }
    }

    pub fn get_or_insert(&self, sql: &str, analyze: impl FnOnce() -> Analysis) -> Arc<Analysis> {
        let h1 = self.k1.hash_one(sql);
        let h2 = self.k2.hash_one(sql);
        if let Some(e) = self.map.get(&h1) {
            if e.check == h2 && e.len == sql.len() {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Arc::clone(&e.analysis);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let analysis = Arc::new(analyze());
        if self.capacity > 0 {
            if self.map.len() >= self.capacity {
                self.evict();
            }
            self.map.insert(
                h1,
                Entry {
                    check: h2,
                    len: sql.len(),
                    analysis: Arc::clone(&analysis),
                },
            );
        }
        analysis
    }

    fn evict(&self) {
        let round = self.evict_round.fetch_add(1, Ordering::Relaxed);
        let victim = round % 4;
        self.map.retain(|k, _| (k >> 7) % 4 != victim);
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
    }

    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}
