//! JWT logins: the password is a token; its claim is the session's tenant.

use jsonwebtoken::{encode, EncodingKey, Header};
use tenantgate_config::{JwtAlgorithm, JwtConfig, TenantSource, UserConfig};
use tenantgate_tests::pg::PgServer;
use tenantgate_tests::proxy::*;
use tenantgate_tests::within;

pub(crate) const SECRET: &str = "jwt-test-secret";

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn token(tenant: &str, exp: u64, secret: &str) -> String {
    let claims =
        serde_json::json!({"sub": "svc", "tenant_id": tenant, "exp": exp, "aud": "tenantgate"});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// HS256 with [`SECRET`], audience `tenantgate`, tenant from the `tenant_id` claim.
pub(crate) fn hs256_config() -> JwtConfig {
    JwtConfig {
        algorithm: JwtAlgorithm::HS256,
        secret: Some(SECRET.into()),
        secret_env: None,
        public_key: None,
        issuer: None,
        audience: Some("tenantgate".into()),
        tenant_claim: "tenant_id".into(),
        leeway: 0,
    }
}

async fn proxy() -> TestProxy {
    let pg = PgServer::shared();
    let mut config = base_config(pg);
    config.auth.jwt = Some(hs256_config());
    config.users.push(UserConfig {
        name: "jwt_app".into(),
        password: None,
        password_env: None,
        auth_type: None,
        tenant: None,
        tenant_from: Some(TenantSource::Jwt),
        allowed_tenants: vec![],
        max_tenant_connections: None,
        databases: vec![],
        bypass_policy: false,
    });
    TestProxy::start(config).await
}

#[tokio::test]
async fn jwt_claim_is_the_tenant() {
    let proxy = proxy().await;
    within(30, "jwt login", async {
        for tenant in ["acme", "globex"] {
            let client = proxy
                .connect("jwt_app", &token(tenant, now() + 300, SECRET), "app")
                .await
                .expect("valid token logs in");
            let row = client
                .query_one("SELECT current_setting('app.current_tenant')", &[])
                .await
                .expect("query");
            assert_eq!(row.get::<_, String>(0), tenant);
        }
    })
    .await;
}

#[tokio::test]
async fn bad_tokens_fail_like_wrong_passwords() {
    let proxy = proxy().await;
    within(30, "jwt failures", async {
        for (what, tok) in [
            (
                "wrong signature",
                token("acme", now() + 300, "not-the-secret"),
            ),
            ("expired", token("acme", now() - 600, SECRET)),
            ("garbage", "not.a.token".to_string()),
        ] {
            let err = match proxy.connect("jwt_app", &tok, "app").await {
                Ok(_) => panic!("{what}: login must fail"),
                Err(e) => e,
            };
            assert_eq!(sqlstate(&err), Some("28P01"), "{what}: {err:?}");
        }
    })
    .await;
}
