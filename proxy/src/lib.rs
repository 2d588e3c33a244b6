//! tenantgate: a PostgreSQL wire-protocol proxy and pooler that enforces tenant isolation.
//!
//! [`run`] serves clients on a listener until its shutdown token is cancelled. The binary's
//! `main` only parses the command line, loads the configuration and calls it; tests call it
//! in-process on port 0.

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cancel;
mod client;
pub mod conn;
pub mod discovery;
pub mod io;
mod local_socket;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod server;
mod session;
pub mod tenant_pools;
pub mod tls;

use app::App;
use std::sync::Arc;
use std::time::Duration;
use tenantgate_config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use session::{quote_ident, quote_literal};

/// Serves clients until `shutdown` is cancelled, then stops accepting, lets sessions reach an
/// idle point for up to `shutdown_timeout`, and closes the rest.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve(config, listener, shutdown, None).await
}

/// [`run`] for a configuration read from `config_path`: SIGHUP and the admin console's RELOAD
/// re-read that file and apply it without dropping clients (see [`app::App::reload`]).
pub async fn serve(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
    config_path: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    // Bound first: the metric handles App::new registers must see the recorder.
    let endpoint = match &config.proxy.metrics_listen {
        Some(addr) => Some(
            metrics::Endpoint::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("proxy.metrics_listen {addr}: {e}"))?,
        ),
        None => None,
    };
    let app = Arc::new(App::new(config.clone())?);
    let reloadable = config_path.is_some();
    if let Some(path) = config_path {
        app.set_config_path(path);
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "tenantgate listening");
    }
    let unix = match &config.proxy.unix_socket_dir {
        Some(dir) => {
            let port = listener.local_addr()?.port();
            let socket =
                local_socket::LocalSocket::bind(dir, port, config.proxy.unix_socket_mode).await?;
            tracing::info!(path = %socket.path.display(), "tenantgate listening");
            Some(socket)
        }
        None => None,
    };
    let tracker = TaskTracker::new();
    // From here on `shutdown` is also cancelled by the admin console's SHUTDOWN.
    let shutdown = {
        let (external, stop) = (shutdown, app.shutdown_requested());
        tracker.spawn({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = external.cancelled() => stop.cancel(),
                    _ = stop.cancelled() => {}
                }
            }
        });
        stop
    };
    if let Some(endpoint) = endpoint {
        tracker.spawn(endpoint.serve(shutdown.clone()));
    }
    discover_catalogs(&app, &tracker, &shutdown).await;
    tracker.spawn(maintain_pools(app.clone(), shutdown.clone()));
    if reloadable || app.audit().is_some() {
        tracker.spawn(on_sighup(app.clone(), shutdown.clone()));
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            tcp = listener.accept() => tcp.map(|(tcp, peer)| {
                tcp.set_nodelay(true).ok();
                (io::Stream::Plain(tcp), io::Peer::Tcp(peer))
            }),
            local = local_socket::LocalSocket::accept(unix.as_ref()) => {
                local.map(|s| (io::Stream::Unix(s), io::Peer::Unix))
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                let guard = app.client_guard();
                tracker.spawn(client::handle(app.clone(), stream, peer, guard));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    drop(unix);
    let stop = app.shutdown_token();
    stop.start_drain();
    // Checkouts held back by an admin PAUSE would otherwise outlast the drain.
    for pool in app.pools().into_iter().chain(app.tenant_pools().pools()) {
        pool.resume();
    }
    tracker.close();
    let grace = config.proxy.shutdown_timeout();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::info!("shutdown_timeout reached; closing remaining sessions");
        stop.terminate();
        let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    }
    for pool in app.pools() {
        pool.close();
    }
    app.tenant_pools().close_all();
    if let Some(audit) = app.audit() {
        audit.shutdown().await;
    }
    tracing::info!("tenantgate stopped");
    Ok(())
}

/// Reads each database's catalog before serving; a database whose server cannot be reached
/// keeps the configuration-only catalog (which rejects undeclared relations) and is retried in
/// the background until discovery succeeds.
async fn discover_catalogs(app: &Arc<App>, tracker: &TaskTracker, shutdown: &CancellationToken) {
    for pool in app.pools() {
        let target = pool.settings().target.clone();
        let database = pool.name.clone();
        if discover_one(app, &database, &target).await {
            continue;
        }
        let (app, shutdown) = (app.clone(), shutdown.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                if discover_one(&app, &database, &target).await {
                    return;
                }
            }
        });
    }
}

async fn discover_one(app: &App, database: &str, target: &server::ServerTarget) -> bool {
    let column = app.config().tenancy.column.clone();
    match discovery::discover_target(target, &column).await {
        Ok(found) => {
            let tenant_tables = found
                .relations
                .iter()
                .filter(|r| r.has_tenant_column)
                .count();
            tracing::info!(%database, relations = found.relations.len(), tenant_tables, "catalog discovered");
            app.apply_discovery(database, Some(&found));
            true
        }
        Err(e) => {
            tracing::warn!(%database, error = %e, "catalog discovery failed; undeclared relations are rejected until it succeeds");
            false
        }
    }
}

/// SIGHUP: reload the configuration (when started from a file) and reopen the audit file
/// (after an external logrotate rename).
async fn on_sighup(app: Arc<App>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reloading");
                if let Some(audit) = app.audit() {
                    audit.reopen();
                }
                if let Err(errors) = app.reload().await {
                    tracing::error!(errors = %errors.join("; "), "reload refused; the previous configuration stays in force");
                }
            }
        }
    }
}

async fn maintain_pools(app: Arc<App>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for pool in app.pools() {
            pool.maintain().await;
        }
        app.tenant_pools().maintain().await;
        app.stats.sample(&app);
    }
}

/// Runtime threads for `[proxy] workers`: the configured number, or for 0 one per core, except
/// that up to two cores get a single thread. There a second worker thread only adds the
/// work-stealing wakeups: measured on 2 cores, `pgbench -S -M extended` used 23 instead of
/// 25–37 µs of proxy CPU per transaction at 32 clients, and 0.16–0.17 instead of 0.19–0.20 ms
/// latency at 1 client, with the same throughput at 32 and 1000 clients.
pub fn runtime_threads(configured: usize, cores: usize) -> usize {
    match configured {
        0 if cores <= 2 => 1,
        0 => cores,
        n => n,
    }
}

#[cfg(test)]
mod runtime_tests {
    use super::runtime_threads;

    #[test]
    fn workers_zero_means_one_per_core_from_three_cores() {
        assert_eq!(runtime_threads(0, 1), 1);
        assert_eq!(runtime_threads(0, 2), 1);
        assert_eq!(runtime_threads(0, 3), 3);
        assert_eq!(runtime_threads(0, 16), 16);
        assert_eq!(runtime_threads(1, 16), 1);
        assert_eq!(runtime_threads(4, 2), 4);
    }
}
