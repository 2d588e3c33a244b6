//! Client authentication: SCRAM-SHA-256, md5 and trust, against the users in the config.

mod jwt;
mod scram;

pub use jwt::JwtVerifier;
pub use scram::ScramVerifier;

use crate::conn::{ConnError, Framed};
use crate::protocol::backend;
use crate::protocol::frame::BodyReader;
use bytes::BytesMut;
use md5::{Digest, Md5};
use tenantgate_config::{AuthType, StoredPassword, UserConfig};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, unknown user or database: the client learns only this.
    #[error("password authentication failed")]
    Failed,
    #[error("authentication protocol violation: {0}")]
    Protocol(&'static str),
    #[error(transparent)]
    Conn(#[from] ConnError),
}

/// How a user is checked, prepared once per config load (SCRAM verifiers are derived up front
/// so that a login costs no PBKDF2).
#[derive(Debug, Clone)]
pub enum Credential {
    Scram(ScramVerifier),
    /// md5(password || username) as 32 hex digits.
    Md5Hash(String),
    Trust,
    /// The password is a JWT; its claim names the tenant.
    Jwt(std::sync::Arc<JwtVerifier>),
}

impl Credential {
    /// Chooses the method for a user: the stored format decides when it allows only one.
    pub fn for_user(
        user: &UserConfig,
        default_auth: AuthType,
        jwt: Option<&std::sync::Arc<JwtVerifier>>,
    ) -> Result<Credential, String> {
        if user.tenant_from == Some(tenantgate_config::TenantSource::Jwt) {
            let v =
                jwt.ok_or_else(|| format!("user {:?}: [auth.jwt] is not configured", user.name))?;
            return Ok(Credential::Jwt(v.clone()));
        }
        let auth = user.auth_type.unwrap_or(default_auth);
        if auth == AuthType::Trust {
            return Ok(Credential::Trust);
        }
        let stored = user
            .stored_password()
            .ok_or_else(|| format!("user {:?} has no password", user.name))?;
        match (stored, auth) {
            (StoredPassword::Scram(v), _) => ScramVerifier::parse(v)
                .map(Credential::Scram)
                .ok_or_else(|| format!("user {:?}: malformed SCRAM verifier", user.name)),
            (StoredPassword::Md5(h), _) => Ok(Credential::Md5Hash(h[3..].to_string())),
            (StoredPassword::Plain(p), AuthType::Md5) => Ok(Credential::Md5Hash(md5_hex(&[
                p.as_bytes(),
                user.name.as_bytes(),
            ]))),
            (StoredPassword::Plain(p), _) => Ok(Credential::Scram(ScramVerifier::derive(p))),
        }
    }
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Runs the exchange for `credential` (or a decoy exchange when the user or database is
/// unknown, so the client cannot tell) and returns Ok only for a correct password; for a JWT
/// login, Ok carries the token's tenant.
pub async fn authenticate(
    conn: &mut Framed,
    user: &str,
    credential: Option<&Credential>,
) -> Result<Option<String>, AuthError> {
    match credential {
        Some(Credential::Trust) => Ok(None),
        Some(Credential::Md5Hash(hash)) => md5_exchange(conn, hash).await.map(|_| None),
        Some(Credential::Scram(v)) => scram::exchange(conn, v).await.map(|_| None),
        Some(Credential::Jwt(v)) => jwt_exchange(conn, v).await.map(Some),
        None => {
            scram::exchange(conn, &ScramVerifier::decoy(user)).await?;
            Err(AuthError::Failed)
        }
    }
}

/// Asks for the password in clear (the token cannot go through SCRAM) and verifies it.
async fn jwt_exchange(conn: &mut Framed, verifier: &JwtVerifier) -> Result<String, AuthError> {
    let mut out = BytesMut::new();
    backend::auth_cleartext(&mut out);
    conn.write_all(&out).await?;
    let frame = conn.read_password_message().await?;
    if frame.tag != b'p' {
        return Err(AuthError::Protocol("expected a password message"));
    }
    let token = BodyReader::new(frame.body())
        .cstr()
        .map_err(|_| AuthError::Protocol("malformed password message"))?;
    verifier.tenant(token).map_err(|e| {
        tracing::info!(error = %e, "JWT rejected");
        AuthError::Failed
    })
}

async fn md5_exchange(conn: &mut Framed, hash: &str) -> Result<(), AuthError> {
    let salt: [u8; 4] = rand::random();
    let mut out = BytesMut::new();
    backend::auth_md5(salt, &mut out);
    conn.write_all(&out).await?;
    let frame = conn.read_password_message().await?;
    if frame.tag != b'p' {
        return Err(AuthError::Protocol("expected a password message"));
    }
    let sent = BodyReader::new(frame.body())
        .cstr()
        .map_err(|_| AuthError::Protocol("malformed password message"))?;
    let expected = format!("md5{}", md5_hex(&[hash.as_bytes(), &salt]));
    if constant_time_eq(sent.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Failed)
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
