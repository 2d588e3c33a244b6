//! TLS between client and proxy (`tls_mode`) and between proxy and Postgres (`server_tls`).

use tenantgate_config::{Config, ServerTlsMode, TlsMode};
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::*;
use tenantgate_tests::tls::{CertFiles, TestCa};
use tenantgate_tests::wire::{self, RawConn};
use tenantgate_tests::{tools, within};
use tokio_postgres::config::SslMode;

/// A proxy config with client TLS in `mode`; the returned dir holds the cert files.
fn tls_config(mode: TlsMode) -> (Config, TestCa, CertFiles, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let files = ca.write_server_files(dir.path()).unwrap();
    let mut config = base_config(PgServer::shared());
    config.proxy.tls_mode = mode;
    config.proxy.tls_cert = Some(files.cert.clone());
    config.proxy.tls_key = Some(files.key.clone());
    (config, ca, files, dir)
}

async fn ssl_in_use(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn tls_required_tokio_postgres_rustls_connects() {
    let (config, ca, _files, _dir) = tls_config(TlsMode::Require);
    let proxy = TestProxy::start(config).await;
    within(30, "TLS client", async {
        for (user, password) in [
            (ACME_USER, ACME_PASSWORD),
            (SCRAM_CLIENT, SCRAM_CLIENT_PASSWORD),
            (MD5_CLIENT, MD5_CLIENT_PASSWORD),
        ] {
            let mut c = proxy.client_config(user, password, pg::APP_DB);
            c.ssl_mode(SslMode::Require);
            let (client, conn) = c
                .connect(ca.connector().unwrap())
                .await
                .unwrap_or_else(|e| panic!("{user} over TLS: {e:?}"));
            tokio::spawn(conn);
            let rows = client.simple_query("SELECT 1").await.unwrap();
            assert!(!rows.is_empty());
        }
    })
    .await;
}

#[tokio::test]
async fn tls_required_refuses_plaintext_client_clearly() {
    let (config, _ca, _files, _dir) = tls_config(TlsMode::Require);
    let proxy = TestProxy::start(config).await;
    within(30, "plaintext refused", async {
        let err = proxy
            .connect(ACME_USER, ACME_PASSWORD, pg::APP_DB)
            .await
            .expect_err("a plaintext client must be refused when tls_mode = require");
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"));
        let text = format!("{} {}", db.message(), db.hint().unwrap_or("")).to_lowercase();
        assert!(
            text.contains("ssl") || text.contains("tls") || text.contains("encrypt"),
            "error should say TLS is required: {db:?}"
        );
        assert!(
            db.code().code().starts_with("28") || db.code().code() == "08P01",
            "{db:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn tls_required_psql_sslmode_require_and_verify_full() {
    let (config, _ca, files, _dir) = tls_config(TlsMode::Require);
    let proxy = TestProxy::start(config).await;
    within(60, "psql over TLS", async {
        let base = proxy.conninfo(ACME_USER, pg::APP_DB);
        let out = tools::psql(
            &format!("{base} sslmode=require"),
            Some(ACME_PASSWORD),
            "select 1",
        )
        .await
        .unwrap();
        assert!(out.success, "psql sslmode=require: {}", out.stderr);
        assert_eq!(out.stdout.trim(), "1");
        let verify = format!(
            "{base} sslmode=verify-full sslrootcert={}",
            files.ca.display()
        );
        let out = tools::psql(&verify, Some(ACME_PASSWORD), "select 2")
            .await
            .unwrap();
        assert!(out.success, "psql sslmode=verify-full: {}", out.stderr);
        assert_eq!(out.stdout.trim(), "2");
        let out = tools::psql(
            &format!("{base} sslmode=disable"),
            Some(ACME_PASSWORD),
            "select 3",
        )
        .await
        .unwrap();
        assert!(!out.success, "psql sslmode=disable must be refused");
    })
    .await;
}

#[tokio::test]
async fn tls_allow_accepts_both() {
    let (config, ca, _files, _dir) = tls_config(TlsMode::Allow);
    let proxy = TestProxy::start(config).await;
    within(30, "tls allow", async {
        let plain = proxy
            .connect(ACME_USER, ACME_PASSWORD, pg::APP_DB)
            .await
            .unwrap();
        plain.simple_query("SELECT 1").await.unwrap();
        let mut c = proxy.client_config(ACME_USER, ACME_PASSWORD, pg::APP_DB);
        c.ssl_mode(SslMode::Require);
        let (tls, conn) = c.connect(ca.connector().unwrap()).await.unwrap();
        tokio::spawn(conn);
        tls.simple_query("SELECT 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn tls_disabled_answers_ssl_request_with_n() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "SSLRequest on a plaintext proxy", async {
        let mut raw = RawConn::connect(proxy.addr).await.unwrap();
        assert_eq!(
            raw.encryption_request(wire::SSL_REQUEST_CODE)
                .await
                .unwrap(),
            Some(b'N')
        );
        raw.startup(ACME_USER, pg::APP_DB, Some(ACME_PASSWORD))
            .await
            .unwrap();
        let msgs = raw.simple_query("SELECT 1").await.unwrap();
        assert_eq!(wire::data_rows(&msgs), vec![Some("1".to_string())]);
        // tokio-postgres with sslmode=prefer falls back to plaintext the same way.
        let mut c = proxy.client_config(ACME_USER, ACME_PASSWORD, pg::APP_DB);
        c.ssl_mode(SslMode::Prefer);
        let ca = TestCa::new().unwrap();
        let (client, conn) = c.connect(ca.connector().unwrap()).await.unwrap();
        tokio::spawn(conn);
        client.simple_query("SELECT 1").await.unwrap();
    })
    .await;
}

fn server_tls_config(mode: ServerTlsMode, ca: Option<std::path::PathBuf>) -> Config {
    let mut config = base_config(PgServer::shared());
    for db in &mut config.databases {
        db.server_tls = mode;
        db.server_tls_ca = ca.clone();
    }
    config
}

#[tokio::test]
async fn server_tls_require_uses_tls_to_postgres() {
    let proxy = TestProxy::start(server_tls_config(ServerTlsMode::Require, None)).await;
    within(30, "server_tls require", async {
        let client = proxy.connect_service().await;
        assert!(
            ssl_in_use(&client).await,
            "proxy -> postgres connection is not TLS"
        );
    })
    .await;
}

#[tokio::test]
async fn server_tls_disable_uses_plaintext_to_postgres() {
    let proxy = TestProxy::start(server_tls_config(ServerTlsMode::Disable, None)).await;
    within(30, "server_tls disable", async {
        let client = proxy.connect_service().await;
        assert!(!ssl_in_use(&client).await);
    })
    .await;
}

#[tokio::test]
async fn server_tls_verify_full_with_test_ca() {
    let pg = PgServer::shared();
    let proxy = TestProxy::start(server_tls_config(
        ServerTlsMode::VerifyFull,
        Some(pg.ca_cert_path()),
    ))
    .await;
    within(30, "server_tls verify-full", async {
        let client = proxy.connect_service().await;
        assert!(ssl_in_use(&client).await);
    })
    .await;
}

#[tokio::test]
async fn server_tls_verify_full_rejects_unknown_ca() {
    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new()
        .unwrap()
        .write_server_files(dir.path())
        .unwrap();
    let proxy =
        TestProxy::start(server_tls_config(ServerTlsMode::VerifyFull, Some(other.ca))).await;
    within(30, "server_tls verify-full, wrong CA", async {
        let result = async {
            let client = proxy
                .connect(SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, pg::APP_DB)
                .await?;
            client.simple_query("SELECT 1").await
        }
        .await;
        assert!(
            result.is_err(),
            "a server certificate from an unknown CA was accepted"
        );
    })
    .await;
}
