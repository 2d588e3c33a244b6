//! The policy audit log: one JSON object per line for every decision and session event,
//! hash-chained so that edits, deletions and truncation are detectable.
//!
//! INTERFACE (used by the session code; keep these signatures):
//! - [`AuditLog::start`] opens the sink from `[audit]` (None when `path` is unset).
//! - [`AuditLog::record`] queues an event. Rejections and session events wait for room
//!   (backpressure, never dropped); allowed statements may be sampled or dropped under
//!   overload, and drops are counted.
//! - [`AuditLog::reopen`] (SIGHUP) and [`AuditLog::shutdown`] (flush).

use std::net::SocketAddr;
use tenantgate_config::AuditConfig;

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

#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub kind: AuditKind,
    pub conn: u64,
    pub client_addr: SocketAddr,
    pub user: String,
    pub database: String,
    pub tenant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

/// Handle to the audit writer; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {}

impl AuditLog {
    pub fn start(config: &AuditConfig) -> Result<Option<AuditLog>, AuditError> {
        let _ = config;
        Ok(None)
    }

    pub async fn record(&self, event: AuditEvent) {
        let _ = event;
    }

    pub fn reopen(&self) {}

    pub async fn shutdown(&self) {}
}
