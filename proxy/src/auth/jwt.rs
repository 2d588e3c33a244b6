//! JWT logins (`tenant_from = "jwt"`): the password is a token, verified with jsonwebtoken
//! (signature, exp, nbf, iss, aud); the tenant is one of its claims.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use tenantgate_config::{JwtAlgorithm, JwtConfig};

pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    tenant_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtVerifier(..)")
    }
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
    }
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig) -> Result<JwtVerifier, String> {
        let alg = algorithm(config.algorithm);
        let key = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = config
                    .secret
                    .as_deref()
                    .ok_or("auth.jwt.secret is not set")?;
                DecodingKey::from_secret(secret.as_bytes())
            }
            _ => {
                let path = config
                    .public_key
                    .as_ref()
                    .ok_or("auth.jwt.public_key is not set")?;
                let pem = std::fs::read(path)
                    .map_err(|e| format!("auth.jwt.public_key {}: {e}", path.display()))?;
                let key = match alg {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                };
                key.map_err(|e| format!("auth.jwt.public_key {}: {e}", path.display()))?
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = config.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(JwtVerifier {
            key,
            validation,
            tenant_claim: config.tenant_claim.clone(),
        })
    }

    /// The tenant of a valid token. The error is for the log only (clients learn nothing).
    pub fn tenant(&self, token: &str) -> Result<String, String> {
        let data = jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| e.to_string())?;
        match data.claims.get(&self.tenant_claim) {
            // No control characters: a NUL could never be set on the server, and would
            // collide with the proxy's own "unknown tenant" marker.
            Some(serde_json::Value::String(s))
                if !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control) =>
            {
                Ok(s.clone())
            }
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            _ => Err(format!(
                "token has no usable \"{}\" claim",
                self.tenant_claim
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn config() -> JwtConfig {
        JwtConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: Some("s3cret".into()),
            secret_env: None,
            public_key: None,
            issuer: Some("issuer".into()),
            audience: Some("tenantgate".into()),
            tenant_claim: "tenant_id".into(),
            leeway: 0,
        }
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn valid_token_gives_tenant() {
        let v = JwtVerifier::new(&config()).unwrap();
        let t = token(
            serde_json::json!({"tenant_id": "acme", "exp": now() + 60, "iss": "issuer", "aud": "tenantgate"}),
            "s3cret",
        );
        assert_eq!(v.tenant(&t).unwrap(), "acme");
    }

    #[test]
    fn bad_tokens_are_refused() {
        let v = JwtVerifier::new(&config()).unwrap();
        let ok = serde_json::json!({"tenant_id": "acme", "exp": now() + 60, "iss": "issuer", "aud": "tenantgate"});
        assert!(
            v.tenant(&token(ok.clone(), "wrong")).is_err(),
            "bad signature"
        );
        let mut expired = ok.clone();
        expired["exp"] = serde_json::json!(now() - 120);
        assert!(v.tenant(&token(expired, "s3cret")).is_err(), "expired");
        let mut future = ok.clone();
        future["nbf"] = serde_json::json!(now() + 3600);
        assert!(v.tenant(&token(future, "s3cret")).is_err(), "not yet valid");
        let mut other_iss = ok.clone();
        other_iss["iss"] = serde_json::json!("evil");
        assert!(v.tenant(&token(other_iss, "s3cret")).is_err(), "issuer");
        let mut other_aud = ok.clone();
        other_aud["aud"] = serde_json::json!("other");
        assert!(v.tenant(&token(other_aud, "s3cret")).is_err(), "audience");
        let mut control = ok.clone();
        control["tenant_id"] = serde_json::json!("\u{0}unknown");
        assert!(
            v.tenant(&token(control, "s3cret")).is_err(),
            "NUL in the tenant"
        );
        let mut no_tenant = ok;
        no_tenant.as_object_mut().unwrap().remove("tenant_id");
        assert!(v.tenant(&token(no_tenant, "s3cret")).is_err(), "no claim");
        assert!(v.tenant("garbage").is_err());
    }
}
