//! The process-global Prometheus recorder and the `/metrics` HTTP endpoint.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Histogram buckets for every `*_seconds` metric: 100 µs to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder on first use and returns its handle.
fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "histogram buckets rejected; using summaries");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("tenantgate_client_connections", "Logged-in client sessions");
    describe_gauge!(
        "tenantgate_server_connections",
        "Server connections by state"
    );
    describe_gauge!("tenantgate_clients_waiting", "Clients waiting for a server");
    describe_gauge!(
        "tenantgate_pool_paused",
        "1 while the pool is paused (admin PAUSE)"
    );
    describe_counter!(
        "tenantgate_client_waits_total",
        "Checkouts that had to wait for a server"
    );
    describe_histogram!(
        "tenantgate_client_wait_duration_seconds",
        "Time clients waited for a server"
    );
    describe_counter!(
        "tenantgate_transactions_total",
        "Transactions (explicit or implicit) completed"
    );
    describe_counter!(
        "tenantgate_queries_total",
        "Requests answered by ReadyForQuery"
    );
    describe_histogram!(
        "tenantgate_query_duration_seconds",
        "Client Query/Sync to ReadyForQuery"
    );
    describe_counter!(
        "tenantgate_client_received_bytes_total",
        "Bytes received from clients"
    );
    describe_counter!(
        "tenantgate_client_sent_bytes_total",
        "Bytes sent to clients"
    );
    describe_counter!(
        "tenantgate_policy_decisions_total",
        "Policy decisions by verdict and rule"
    );
    describe_counter!("tenantgate_policy_cache_hits_total", "Decision cache hits");
    describe_counter!(
        "tenantgate_policy_cache_misses_total",
        "Decision cache misses"
    );
    describe_counter!(
        "tenantgate_tenant_injections_total",
        "Checkouts that changed the server's tenant setting"
    );
    describe_gauge!(
        "tenantgate_audit_queue_depth",
        "Audit records queued for the writer"
    );
    describe_counter!(
        "tenantgate_audit_dropped_records_total",
        "Allowed-statement audit records dropped"
    );
    describe_counter!("tenantgate_errors_total", "Errors by kind");
}

/// Runs the recorder's periodic upkeep (histogram buffers) when one is installed.
pub(super) fn upkeep() {
    if let Some(h) = HANDLE.get() {
        h.run_upkeep();
    }
}

/// The `/metrics` HTTP endpoint.
pub struct Endpoint {
    listener: TcpListener,
    handle: PrometheusHandle,
}

impl Endpoint {
    /// Installs the recorder (once per process) and binds `addr`.
    pub async fn bind(addr: &str) -> std::io::Result<Endpoint> {
        let handle = recorder();
        let listener = TcpListener::bind(addr).await?;
        if let Ok(a) = listener.local_addr() {
            tracing::info!(addr = %a, "metrics endpoint listening");
        }
        Ok(Endpoint { listener, handle })
    }

    /// Answers scrapes until `shutdown`.
    pub async fn serve(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        let handle = self.handle.clone();
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(10), respond(tcp, &handle)).await;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}

/// A minimal HTTP/1.x exchange: `GET /metrics` gets the text exposition format, anything
/// else 404/405; the connection is closed after one response.
async fn respond(mut tcp: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", handle.render()),
        ("GET" | "HEAD", _) => ("404 Not Found", "not found; try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        tcp.write_all(body.as_bytes()).await?;
    }
    tcp.shutdown().await
}
