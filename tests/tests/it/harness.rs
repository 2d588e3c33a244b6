//! The harness itself, straight against PostgreSQL (no proxy): roles, auth methods, TLS, tools.

use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::{tools, within};
use tokio_postgres::NoTls;

async fn connect_direct(
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let pg = PgServer::shared();
    tenantgate_tests::proxy::connect(&pg.tcp_config(user, password, db)).await
}

#[tokio::test]
async fn server_roles_authenticate_with_their_methods() {
    within(60, "direct connections", async {
        for (user, password) in [
            (pg::SERVICE_USER, pg::SERVICE_PASSWORD),
            (pg::APP_RW_USER, pg::APP_RW_PASSWORD),
            (pg::SCRAM_USER, pg::SCRAM_PASSWORD),
            (pg::MD5_USER, pg::MD5_PASSWORD),
            (pg::TRUST_USER, ""),
        ] {
            let client = connect_direct(user, password, pg::APP_DB)
                .await
                .unwrap_or_else(|e| panic!("{user}: {e:?}"));
            let who: String = client
                .query_one("SELECT current_user::text", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(who, user);
        }
        let err = connect_direct(pg::SCRAM_USER, "wrong", pg::APP_DB)
            .await
            .unwrap_err();
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("28P01"));
        let err = connect_direct(pg::MD5_USER, "wrong", pg::APP_DB)
            .await
            .unwrap_err();
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("28P01"));
    })
    .await;
}

#[tokio::test]
async fn md5_role_has_an_md5_hash_and_scram_role_a_verifier() {
    within(30, "pg_authid", async {
        let pg = PgServer::shared();
        let su = pg.superuser_client("postgres").await.unwrap();
        let rows = su
            .query(
                "SELECT rolname::text, left(rolpassword, 6) FROM pg_authid \
                 WHERE rolname IN ('md5_user', 'scram_user', 'app_rw') ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["app_rw", "md5_user", "scram_user"]);
        assert!(got[0].1.starts_with("SCRAM-"), "{got:?}");
        assert!(got[1].1.starts_with("md5"), "{got:?}");
        assert!(got[2].1.starts_with("SCRAM-"), "{got:?}");
        let bypass: bool = su
            .query_one(
                "SELECT rolbypassrls FROM pg_roles WHERE rolname = 'app_rw'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!bypass);
    })
    .await;
}

#[tokio::test]
async fn server_tls_verify_full_with_the_test_ca() {
    within(30, "direct TLS", async {
        let pg = PgServer::shared();
        let connector = pg.ca().connector().unwrap();
        let mut config = pg.tcp_config(pg::SERVICE_USER, pg::SERVICE_PASSWORD, pg::APP_DB);
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        let (client, conn) = config.connect(connector).await.expect("TLS to postgres");
        tokio::spawn(conn);
        let ssl: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl);
        // And the CA file on disk is the same CA.
        let der = tenantgate_tests::tls::load_cert(&pg.ca_cert_path()).unwrap();
        assert!(!der.is_empty());
        // Plain connections still work (host lines match non-TLS too).
        let (plain, conn) = pg
            .tcp_config(pg::SERVICE_USER, pg::SERVICE_PASSWORD, pg::APP_DB)
            .connect(NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        plain.simple_query("SELECT 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn psql_runs_against_the_server() {
    within(60, "psql direct", async {
        let pg = PgServer::shared();
        let conninfo = format!(
            "host={} port={} user={} dbname={} sslmode=require",
            pg.host(),
            pg.port(),
            pg::SCRAM_USER,
            pg::APP_DB
        );
        let out = tools::psql(&conninfo, Some(pg::SCRAM_PASSWORD), "select 40 + 2")
            .await
            .unwrap();
        assert!(out.success, "psql failed: {}", out.stderr);
        assert_eq!(out.stdout.trim(), "42");
    })
    .await;
}

#[tokio::test]
async fn private_server_restarts_on_the_same_port() {
    within(120, "private restart", async {
        let pg = tokio::task::spawn_blocking(PgServer::start_private)
            .await
            .unwrap()
            .unwrap();
        let port = pg.port();
        let client = tenantgate_tests::proxy::connect(&pg.tcp_config(
            pg::SERVICE_USER,
            pg::SERVICE_PASSWORD,
            pg::APP_DB,
        ))
        .await
        .unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        let pg = tokio::task::spawn_blocking(move || {
            pg.restart().unwrap();
            pg
        })
        .await
        .unwrap();
        assert_eq!(pg.port(), port);
        assert!(
            client.simple_query("SELECT 1").await.is_err(),
            "old session survived a restart"
        );
        let client = tenantgate_tests::proxy::connect(&pg.tcp_config(
            pg::SERVICE_USER,
            pg::SERVICE_PASSWORD,
            pg::APP_DB,
        ))
        .await
        .unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        let dir = pg.socket_dir().to_path_buf();
        tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
        assert!(
            !dir.exists(),
            "server directory left behind: {}",
            dir.display()
        );
    })
    .await;
}
