//! Client authentication at the proxy: SCRAM (verifier and plaintext), md5, trust, and failures
//! that do not reveal which of user or database was wrong.

use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::*;
use tenantgate_tests::within;

/// Connects, runs `SELECT 1`, returns the error's (SQLSTATE, message) on failure.
async fn try_login(
    proxy: &TestProxy,
    user: &str,
    password: &str,
    db: &str,
) -> Result<(), (String, String)> {
    match proxy.connect(user, password, db).await {
        Ok(client) => {
            let rows = client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| (format!("{e:?}"), String::new()))?;
            assert!(!rows.is_empty());
            Ok(())
        }
        Err(e) => match e.as_db_error() {
            Some(db) => Err((db.code().code().to_string(), db.message().to_string())),
            None => Err((format!("no ErrorResponse: {e:?}"), String::new())),
        },
    }
}

/// The first message the proxy answers a StartupMessage for `user` with (its auth request).
async fn first_auth_request(
    proxy: &TestProxy,
    user: &str,
) -> tenantgate_tests::wire::BackendMessage {
    let mut raw = tenantgate_tests::wire::RawConn::connect(proxy.addr)
        .await
        .unwrap();
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", user), ("database", pg::APP_DB)],
        &mut buf,
    )
    .unwrap();
    raw.send(&buf).await.unwrap();
    raw.read_message()
        .await
        .unwrap()
        .expect("an authentication request")
}

fn assert_fatal_auth_failure(result: Result<(), (String, String)>, what: &str) -> (String, String) {
    let (code, message) = match result {
        Ok(()) => panic!("{what}: login succeeded but must fail"),
        Err(e) => e,
    };
    assert!(
        code == "28P01" || code == "28000",
        "{what}: expected SQLSTATE 28P01/28000, got {code} {message}"
    );
    (code, message)
}

#[tokio::test]
async fn scram_verifier_user_logs_in_and_wrong_password_fails() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "scram verifier user", async {
        try_login(&proxy, SCRAM_CLIENT, SCRAM_CLIENT_PASSWORD, pg::APP_DB)
            .await
            .unwrap();
        let (code, _) = assert_fatal_auth_failure(
            try_login(&proxy, SCRAM_CLIENT, "not-the-password", pg::APP_DB).await,
            "scram_client wrong password",
        );
        assert_eq!(code, "28P01");
    })
    .await;
}

#[tokio::test]
async fn plaintext_user_logs_in_with_scram_and_wrong_password_fails() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "plaintext user", async {
        try_login(&proxy, ACME_USER, ACME_PASSWORD, pg::APP_DB)
            .await
            .unwrap();
        let (code, _) = assert_fatal_auth_failure(
            try_login(&proxy, ACME_USER, "acme_pw_wrong", pg::APP_DB).await,
            "acme_app wrong password",
        );
        assert_eq!(code, "28P01");
        // The proxy asks for SCRAM (the default auth_type), not cleartext or md5.
        let msg = first_auth_request(&proxy, ACME_USER).await;
        assert_eq!(msg.tag, b'R');
        assert_eq!(
            &msg.body[..4],
            &10i32.to_be_bytes(),
            "expected AuthenticationSASL"
        );
        assert!(String::from_utf8_lossy(&msg.body[4..]).contains("SCRAM-SHA-256"));
    })
    .await;
}

#[tokio::test]
async fn md5_user_logs_in_and_wrong_password_fails() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "md5 user", async {
        try_login(&proxy, MD5_CLIENT, MD5_CLIENT_PASSWORD, pg::APP_DB)
            .await
            .unwrap();
        let (code, _) = assert_fatal_auth_failure(
            try_login(&proxy, MD5_CLIENT, "wrong", pg::APP_DB).await,
            "md5_client wrong password",
        );
        assert_eq!(code, "28P01");
        // Also with a byte-level client that insists on md5 being what it was asked for.
        let msg = first_auth_request(&proxy, MD5_CLIENT).await;
        assert_eq!(msg.tag, b'R');
        assert_eq!(
            &msg.body[..4],
            &5i32.to_be_bytes(),
            "expected AuthenticationMD5Password"
        );
    })
    .await;
}

#[tokio::test]
async fn trust_user_logs_in_without_password() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "trust user", async {
        try_login(&proxy, TRUST_CLIENT, "", pg::APP_DB)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn unknown_user_and_unknown_database_fail_alike() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(30, "unknown user/database", async {
        let unknown_user = assert_fatal_auth_failure(
            try_login(&proxy, "no_such_user", "whatever", pg::APP_DB).await,
            "unknown user",
        );
        let unknown_db = assert_fatal_auth_failure(
            try_login(&proxy, ACME_USER, ACME_PASSWORD, "no_such_database").await,
            "unknown database",
        );
        // Echoing the user name the client sent reveals nothing (Postgres does it too).
        let normalize =
            |(code, message): (String, String), user: &str| (code, message.replace(user, "<user>"));
        let unknown_user = normalize(unknown_user, "no_such_user");
        let unknown_db = normalize(unknown_db, ACME_USER);
        assert_eq!(
            unknown_user, unknown_db,
            "an unknown user and an unknown database must be indistinguishable"
        );
        assert!(
            !unknown_db.1.contains("no_such_database"),
            "message reveals the database: {}",
            unknown_db.1
        );
    })
    .await;
}

#[tokio::test]
async fn server_side_auth_methods_md5_trust_scram() {
    // The proxy logs in to Postgres as roles that pg_hba.conf authenticates with md5, trust and
    // SCRAM respectively.
    let pg = PgServer::shared();
    let mut config = base_config(pg);
    let template = config.databases[0].clone();
    for (name, user, password) in [
        ("app_md5", pg::MD5_USER, Some(pg::MD5_PASSWORD)),
        ("app_trust", pg::TRUST_USER, None),
        ("app_scram", pg::SCRAM_USER, Some(pg::SCRAM_PASSWORD)),
    ] {
        let mut db = template.clone();
        db.name = name.into();
        db.dbname = Some(pg::APP_DB.into());
        db.user = user.into();
        db.password = password.map(Into::into);
        config.databases.push(db);
    }
    let proxy = TestProxy::start(config).await;
    within(30, "server-side auth", async {
        for (db, role) in [
            ("app_md5", pg::MD5_USER),
            ("app_trust", pg::TRUST_USER),
            ("app_scram", pg::SCRAM_USER),
        ] {
            let client = proxy
                .connect(SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, db)
                .await
                .unwrap_or_else(|e| panic!("{db}: {e:?}"));
            let who: String = client
                .query_one("SELECT current_user::text", &[])
                .await
                .unwrap_or_else(|e| panic!("{db}: {e:?}"))
                .get(0);
            assert_eq!(who, role);
        }
    })
    .await;
}
