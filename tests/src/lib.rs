//! Test harness for tenantgate: a real PostgreSQL ([`pg::PgServer`]), the proxy running in-process
//! ([`proxy::TestProxy`]), certificates ([`tls`]), a byte-level protocol client for malformed input
//! ([`wire`]) and the `psql`/`pgbench` binaries ([`tools`]).
//!
//! Everything here is test support: a panic is a test failure with a message, so `unwrap`/`expect`
//! are allowed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod pg;
pub mod pipeline;
pub mod proxy;
pub mod tls;
pub mod tools;
pub mod wire;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use pg::PgServer;
pub use proxy::{base_config, TestProxy};

/// Runs `fut`, failing the test if it takes longer than `secs` seconds: nothing may hang CI.
pub async fn within<F: Future>(secs: u64, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// A name no other test (or earlier run against the same server) uses: for tables and schemas of
/// tests that write, so tests run in parallel without locks.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

/// Logs of the proxy under test go to the test's captured output; `RUST_LOG` selects (default warn).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
