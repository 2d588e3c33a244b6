//! The policy audit log: one JSON object per line for every decision and session event,
//! hash-chained so that edits, deletions and truncation are detectable.
//!
//! INTERFACE (used by the session code; keep these signatures):
//! - [`AuditLog::start`] opens the sink from `[audit]` (None when `path` is unset).
//! - [`AuditLog::record`] queues an event. Rejections and session events wait for room
//!   (backpressure, never dropped); allowed statements may be sampled or dropped under
//!   overload, and drops are counted.
//! - [`AuditLog::reopen`] (SIGHUP) and [`AuditLog::shutdown`] (flush).
//!
//! # Line format
//!
//! Keys appear in this order; keys that do not apply to an event are left out:
//! `ts` (RFC 3339, µs, UTC), `seq` (1, 2, …, continuing across files), `conn`, `client_addr`,
//! `user`, `database`, `tenant` (null when none is set), `event` (`connect`, `auth_failure`,
//! `statement`, `bind`, `tenant_switch`, `disconnect`, and the log's own `header` and
//! `dropped`), `decision` (`allow`, `reject`, `would-reject`), `rule`, `reason`, `fingerprint`,
//! `query` (pg_query's normalized text: constants are `$n`, Bind values are never recorded),
//! `sqlstate`, `from`/`to` (tenant switch), `count` (dropped), `prev_file` (header),
//! `prev_hash`, `hash`. There is no `duration_us`: the session does not measure statements.
//! `ts` is when the session reported the event; `seq` is the order of writing, so `ts` of
//! concurrent sessions may step back by a little.
//!
//! # Writer
//!
//! A dedicated thread behind a bounded queue (`queue_size`) serializes, hashes and writes, so
//! file I/O never runs on the async workers. Whatever is queued is written as one batch and
//! flushed; `fsync = always` fsyncs after every batch, `<ms>` at most that long after a write,
//! `never` leaves it to the OS. A `dropped` record (hash-chained like the rest) reports, at
//! most once a second and at shutdown, how many allowed-statement records the full queue
//! refused. [`AuditLog::shutdown`] writes everything queued before it and fsyncs.
//!
//! # Hash chain
//!
//! `hash = hex(SHA-256(prev_hash || canonical))` where `prev_hash` is the previous record's
//! `hash` as its 64 ASCII hex characters (64 zeros for the first record of a log) and
//! `canonical` is the line itself without its final `,"hash":"…"` member: `hash` is always
//! the last key, so canonical = the line with the last 75 bytes replaced by `}`. The writer
//! produces it by serializing a struct with a fixed field order (see `record.rs`).
//!
//! # Files
//!
//! `path` is the current file. When it reaches `rotate_bytes` it is renamed to
//! `<path>.NNNNNN` (six digits, one more than the highest existing number) and a new file is
//! started; the `rotate_keep` highest-numbered files are kept. Every file but the first starts
//! with a `header` record whose `prev_hash` is the last hash of the file before and whose
//! `prev_file` names it, so `tenantgate audit verify <path>.* <path>` checks the whole chain
//! in chronological order. A restart appends to `path` and continues the chain; if `path`
//! ends with a partial line (killed mid-write) it is rotated first, so that the partial line
//! stays the final line of its file and verify reports it as truncated, not as tampering.
//! [`AuditLog::reopen`], or the writer noticing that `path` was renamed or removed (checked
//! every second), opens `path` anew for external log rotation: the new file starts with a
//! header too (its `prev_file` is the name the old file had when opened; give verify the
//! files under their new names, oldest first). With `path = "-"` records go to standard
//! output and nothing rotates. One process per `path`: two writers would interleave chains.
//!
//! The chain detects a changed, removed, inserted or reordered record and a cut-off line; it
//! cannot detect the removal of the *last* records or a chain rewritten from some point on by
//! someone who can write the file: compare `verify`'s final hash with a copy kept elsewhere.

mod files;
mod record;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use record::{rfc3339_micros, ZERO_HASH};
pub use verify::{verify, Verified, VerifyError};

/// The files of the log at `path`, oldest first: the rotated `<path>.NNNNNN` by number, then
/// `path` itself if it exists. This is the order [`verify`] wants.
pub fn log_files(path: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut found: Vec<_> = files::rotated_files(path)?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if path.exists() {
        found.push(path.to_path_buf());
    }
    Ok(found)
}

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tenantgate_config::{AuditAllowed, AuditConfig};
use tokio::sync::{mpsc, oneshot, Notify};

/// What happened.
#[derive(Debug, Clone)]
pub enum AuditKind {
    Statement {
        /// "allow", "reject" or "would-reject" (audit mode).
        decision: &'static str,
        rule: &'static str,
        reason: String,
        fingerprint: String,
        /// Normalized SQL (constants replaced by $n); never literal values.
        query: String,
        sqlstate: &'static str,
    },
    /// A Bind whose tenant parameter was checked (only rejections are recorded).
    Bind {
        decision: &'static str,
        rule: &'static str,
        reason: String,
        fingerprint: String,
        query: String,
    },
    Connect,
    AuthFailure,
    TenantSwitch {
        from: Option<String>,
        to: Option<String>,
    },
    Disconnect,
}

impl AuditKind {
    /// An allowed statement: sampled per `log_allowed`, and dropped (counted) when the queue
    /// is full. Everything else waits for room.
    fn is_droppable(&self) -> bool {
        matches!(self, AuditKind::Statement { decision, .. } if *decision == "allow")
    }
}

#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub kind: AuditKind,
    pub conn: u64,
    pub client_addr: crate::io::Peer,
    pub user: String,
    pub database: String,
    pub tenant: Option<String>,
    /// The isolation strategy of the tenant's placement (None before login).
    pub isolation: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("audit.{0}: invalid value")]
    Config(&'static str),
    #[error("audit log writer: {0}")]
    Writer(std::io::Error),
}

/// Counters shared by the handles and the writer thread.
#[derive(Default)]
struct Shared {
    /// Allowed-statement records dropped because the queue was full, not yet reported.
    dropped: AtomicU64,
    /// Every allowed-statement record ever dropped (metrics; never reset).
    dropped_total: AtomicU64,
    /// Allowed statements seen, for `sample:N`.
    allowed_seen: AtomicU64,
    /// Set by [`AuditLog::reopen`]; the writer checks it before every record, so records
    /// queued after the call go to the reopened file. The notify wakes an idle writer.
    reopen_requested: AtomicBool,
    reopen: Notify,
}

enum Msg {
    Event(SystemTime, Box<AuditEvent>),
    /// Write everything queued before this, fsync, answer and stop.
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the audit writer; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    allowed: AuditAllowed,
}

impl AuditLog {
    pub fn start(config: &AuditConfig) -> Result<Option<AuditLog>, AuditError> {
        Self::start_held(config, None)
    }

    /// [`AuditLog::start`], with a writer that waits for `hold` before writing anything (tests
    /// fill the queue that way).
    fn start_held(
        config: &AuditConfig,
        hold: Option<oneshot::Receiver<()>>,
    ) -> Result<Option<AuditLog>, AuditError> {
        let Some(path) = &config.path else {
            return Ok(None);
        };
        let allowed = config.allowed().ok_or(AuditError::Config("log_allowed"))?;
        let fsync = config.fsync_policy().ok_or(AuditError::Config("fsync"))?;
        if config.queue_size == 0 {
            return Err(AuditError::Config("queue_size"));
        }
        let settings = writer::Settings {
            rotate_bytes: config.rotate_bytes,
            rotate_keep: config.rotate_keep.max(1),
            fsync,
        };
        let writer = writer::Writer::open(path, settings).map_err(|source| AuditError::Open {
            path: path.clone(),
            source,
        })?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(config.queue_size);
        writer::spawn(writer, rx, shared.clone(), hold).map_err(AuditError::Writer)?;
        Ok(Some(AuditLog {
            tx,
            shared,
            allowed,
        }))
    }

    pub async fn record(&self, event: AuditEvent) {
        let now = SystemTime::now();
        if !event.kind.is_droppable() {
            // Waits while the queue is full: a rejection is never dropped. Fails only after
            // shutdown, when there is nothing left to write to.
            let _ = self.tx.send(Msg::Event(now, Box::new(event))).await;
            return;
        }
        match self.allowed {
            AuditAllowed::None => return,
            AuditAllowed::All => {}
            AuditAllowed::Sample(n) => {
                let seen = self.shared.allowed_seen.fetch_add(1, Ordering::Relaxed);
                // One in n: the 1st, the (n+1)th, … (not `is_multiple_of`: MSRV 1.85).
                if !matches!(seen % u64::from(n), 0) {
                    return;
                }
            }
        }
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.tx.try_send(Msg::Event(now, Box::new(event)))
        {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.dropped_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records queued and not yet taken by the writer.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Allowed-statement records dropped because the queue was full, since start.
    pub fn dropped_total(&self) -> u64 {
        self.shared.dropped_total.load(Ordering::Relaxed)
    }

    /// Opens `path` again (SIGHUP after an external rotation renamed the file).
    pub fn reopen(&self) {
        self.shared.reopen_requested.store(true, Ordering::SeqCst);
        self.shared.reopen.notify_one();
    }

    /// Writes everything queued so far, fsyncs and stops the writer. Records sent afterwards
    /// are discarded.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(done)).await.is_ok() {
            let _ = finished.await;
        }
    }
}
