//! Real client programs through the proxy: psql and pgbench.

use std::time::Duration;
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::*;
use tenantgate_tests::{tools, within};

#[tokio::test]
async fn psql_select_1() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(60, "psql", async {
        let out = tools::psql(
            &proxy.conninfo(ACME_USER, pg::APP_DB),
            Some(ACME_PASSWORD),
            "select 1",
        )
        .await
        .unwrap();
        assert!(out.success, "psql failed: {}", out.stderr);
        assert_eq!(out.stdout.trim(), "1");
        // A URL works the same, and a wrong password fails with psql's exit code 2.
        let out = tools::psql(&proxy.url(ACME_USER, "wrong", pg::APP_DB), None, "select 1")
            .await
            .unwrap();
        assert_eq!(
            out.code,
            Some(2),
            "stdout {} stderr {}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr.contains("password authentication failed")
                || out.stderr.contains("28P01")
                || out.stderr.to_lowercase().contains("authentication"),
            "{}",
            out.stderr
        );
    })
    .await;
}

/// The only test that writes to database `bench` (pgbench -i drops and creates pgbench_*).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_init_and_select_only_extended() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    let host = proxy.host();
    let port = proxy.port().to_string();
    within(420, "pgbench", async {
        let init = tools::pgbench(
            &[
                "-i",
                "-s",
                "1",
                "-h",
                &host,
                "-p",
                &port,
                "-U",
                SERVICE_CLIENT,
                pg::BENCH_DB,
            ],
            Some(SERVICE_CLIENT_PASSWORD),
            Duration::from_secs(300),
        )
        .await
        .unwrap();
        assert!(
            init.success,
            "pgbench -i failed:\n{}\n{}",
            init.stdout, init.stderr
        );

        let run = tools::pgbench(
            &[
                "-S",
                "-M",
                "extended",
                "-c",
                "16",
                "-j",
                "2",
                "-T",
                "5",
                "-h",
                &host,
                "-p",
                &port,
                "-U",
                SERVICE_CLIENT,
                pg::BENCH_DB,
            ],
            Some(SERVICE_CLIENT_PASSWORD),
            Duration::from_secs(120),
        )
        .await
        .unwrap();
        assert!(
            run.success,
            "pgbench run failed:\n{}\n{}",
            run.stdout, run.stderr
        );
        if let Some(failed) = tools::pgbench_failed_transactions(&run.stdout) {
            assert_eq!(
                failed, 0,
                "pgbench reported failed transactions:\n{}",
                run.stdout
            );
        }
        let processed = tools::pgbench_processed_transactions(&run.stdout)
            .unwrap_or_else(|| panic!("no transaction count in pgbench output:\n{}", run.stdout));
        assert!(processed > 0, "{}", run.stdout);
        assert!(!run.stderr.contains("ERROR"), "{}", run.stderr);
    })
    .await;
}

#[test]
fn pgbench_output_parsing() {
    let out = "number of transactions actually processed: 12345/12345\n\
               number of failed transactions: 0 (0.000%)\n";
    assert_eq!(tools::pgbench_processed_transactions(out), Some(12345));
    assert_eq!(tools::pgbench_failed_transactions(out), Some(0));
    assert_eq!(tools::pgbench_failed_transactions("nothing"), None);
}
