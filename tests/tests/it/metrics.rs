//! The Prometheus endpoint (`[proxy] metrics_listen`): scraped over plain TCP like Prometheus
//! does, parsed, and checked to move with traffic.
//!
//! The `metrics` recorder is process-global, so every proxy of this test binary with metrics
//! records into it: the assertions compare values before and after this test's own traffic
//! (counters only grow) and use labels only this test produces where it matters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tenantgate_config::{Config, PoolMode};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::*;
use tenantgate_tests::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback address that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().expect("local address")
}

/// `config` with a metrics endpoint on a free port; returns its address.
pub fn with_metrics(config: &mut Config) -> SocketAddr {
    let addr = free_addr();
    config.proxy.metrics_listen = Some(addr.to_string());
    addr
}

/// One HTTP/1.1 GET; returns (status line, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    // The proxy binds the endpoint when its task first runs: retry for a moment.
    let mut attempts = 0;
    let mut tcp = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => break tcp,
            Err(e) if attempts >= 50 => panic!("metrics endpoint {addr} refused: {e}"),
            Err(_) => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tcp.read_to_end(&mut resp).await.unwrap();
    let resp = String::from_utf8(resp).expect("UTF-8 response");
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP head and body");
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// Parsed exposition: series (`name{labels}`) → value.
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    pub async fn take(addr: SocketAddr) -> Scrape {
        let (status, body) = http_get(addr, "/metrics").await;
        assert!(status.contains("200"), "scrape answered {status}");
        let mut series = HashMap::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, value) = line.rsplit_once(' ').expect("`series value` line");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            series.insert(name.to_string(), value);
        }
        Scrape(series)
    }

    /// Sum of the series named `name` that carry all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.0
            .keys()
            .any(|s| s.split_once('{').map_or(s.as_str(), |(n, _)| n) == name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_clients_queries_and_decisions() {
    // The recorder is per process and other tests' proxies also serve a database "app": give
    // this proxy's database a name of its own so the gauges read here are only its own.
    const DB: &str = "metrics_app";
    let mut config = base_config(PgServer::shared());
    config.databases[0].pool_mode = PoolMode::Transaction;
    config.databases[0].dbname = Some(pg::APP_DB.into());
    config.databases[0].name = DB.into();
    let addr = with_metrics(&mut config);
    let proxy = TestProxy::start(config).await;
    within(60, "metrics scrape", async {
        let before = Scrape::take(addr).await;
        let client = proxy
            .connect(ACME_USER, ACME_PASSWORD, DB)
            .await
            .expect("acme logs in");
        for _ in 0..5 {
            client.simple_query("SELECT 1").await.unwrap();
        }
        let rejected = client.simple_query("SELECT * FROM pg_stat_activity").await;
        assert_eq!(sqlstate(&rejected.unwrap_err()), Some("42501"));
        let app = [("database", DB)];
        // Server gauges are sampled every second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = Scrape::take(addr).await;
        for name in [
            "tenantgate_client_connections",
            "tenantgate_server_connections",
            "tenantgate_clients_waiting",
            "tenantgate_queries_total",
            "tenantgate_transactions_total",
            "tenantgate_query_duration_seconds_bucket",
            "tenantgate_query_duration_seconds_count",
            "tenantgate_client_received_bytes_total",
            "tenantgate_client_sent_bytes_total",
            "tenantgate_policy_decisions_total",
            "tenantgate_policy_cache_hits_total",
            "tenantgate_policy_cache_misses_total",
            "tenantgate_tenant_injections_total",
        ] {
            assert!(after.has(name), "{name} missing from /metrics");
        }
        let grew = |name: &str, labels: &[(&str, &str)]| {
            after.sum(name, labels) - before.sum(name, labels)
        };
        assert!(after.sum("tenantgate_client_connections", &app) >= 1.0);
        assert!(grew("tenantgate_queries_total", &app) >= 5.0);
        assert!(grew("tenantgate_transactions_total", &app) >= 5.0);
        assert!(grew("tenantgate_query_duration_seconds_count", &app) >= 5.0);
        assert!(grew("tenantgate_client_received_bytes_total", &app) > 0.0);
        assert!(grew("tenantgate_client_sent_bytes_total", &app) > 0.0);
        assert!(grew("tenantgate_tenant_injections_total", &app) >= 1.0);
        let allowed = [("verdict", "allow"), ("rule", "allowed")];
        assert!(grew("tenantgate_policy_decisions_total", &allowed) >= 5.0);
        let rejected = [("verdict", "reject"), ("rule", "catalog-view")];
        assert!(grew("tenantgate_policy_decisions_total", &rejected) >= 1.0);
        let servers = after.sum("tenantgate_server_connections", &app);
        assert!(servers >= 1.0, "no server connection reported for app");
        drop(client);
    })
    .await;
}

#[tokio::test]
async fn errors_are_counted_by_kind() {
    let mut config = base_config(PgServer::shared());
    let addr = with_metrics(&mut config);
    let proxy = TestProxy::start(config).await;
    within(60, "error metrics", async {
        let before = Scrape::take(addr).await;
        let bad = proxy.connect(ACME_USER, "wrong", pg::APP_DB).await;
        assert_eq!(sqlstate(&bad.unwrap_err()), Some("28P01"));
        let after = Scrape::take(addr).await;
        let kind = [("kind", "auth_failure")];
        assert!(
            after.sum("tenantgate_errors_total", &kind)
                - before.sum("tenantgate_errors_total", &kind)
                >= 1.0
        );
    })
    .await;
}

#[tokio::test]
async fn other_paths_are_not_found() {
    let mut config = base_config(PgServer::shared());
    let addr = with_metrics(&mut config);
    let _proxy = TestProxy::start(config).await;
    within(30, "404", async {
        let (status, _) = http_get(addr, "/nope").await;
        assert!(status.starts_with("HTTP/1.1 404"), "{status}");
        let (status, body) = http_get(addr, "/metrics?x=1").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(body.contains("# TYPE"), "no exposition format: {body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_labels_are_opt_in_and_bounded() {
    let mut config = base_config(PgServer::shared());
    config.proxy.metrics_tenant_labels = true;
    config.proxy.metrics_max_tenants = 1;
    // Tenants only this test uses, so the process-global series are this test's own.
    let mut first = config.users[0].clone();
    first.name = "metrics_t1".into();
    first.tenant = Some("metrics-tenant-1".into());
    let mut second = first.clone();
    second.name = "metrics_t2".into();
    second.tenant = Some("metrics-tenant-2".into());
    config.users.extend([first, second]);
    let addr = with_metrics(&mut config);
    let proxy = TestProxy::start(config).await;
    within(60, "tenant labels", async {
        let a = proxy
            .connect("metrics_t1", ACME_PASSWORD, pg::APP_DB)
            .await
            .unwrap();
        a.simple_query("SELECT 1").await.unwrap();
        let b = proxy
            .connect("metrics_t2", ACME_PASSWORD, pg::APP_DB)
            .await
            .unwrap();
        b.simple_query("SELECT 1").await.unwrap();
        b.simple_query("SELECT 1").await.unwrap();
        let s = Scrape::take(addr).await;
        let t1 = [("tenant", "metrics-tenant-1")];
        assert!(s.sum("tenantgate_tenant_queries_total", &t1) >= 1.0);
        assert!(s.sum("tenantgate_tenant_client_connections", &t1) >= 1.0);
        // Past metrics_max_tenants the tenant is counted as "other", never by name.
        assert_eq!(
            s.sum(
                "tenantgate_tenant_queries_total",
                &[("tenant", "metrics-tenant-2")]
            ),
            0.0
        );
        assert!(!s.0.keys().any(|k| k.contains("metrics-tenant-2")));
        assert!(s.sum("tenantgate_tenant_queries_total", &[("tenant", "other")]) >= 2.0);
    })
    .await;
}
