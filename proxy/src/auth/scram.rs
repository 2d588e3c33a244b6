//! Server side of SCRAM-SHA-256 (RFC 5802/7677) without channel binding, as Postgres does it.
//!
//! The key derivation comes from postgres-protocol (`password::scram_sha_256`), the primitives
//! from RustCrypto (`hmac`, `sha2`); this module only arranges the messages and compares.

use super::{constant_time_eq, AuthError};
use crate::conn::Framed;
use crate::protocol::backend;
use crate::protocol::frame::BodyReader;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

const MECHANISM: &str = "SCRAM-SHA-256";

/// A parsed `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier.
#[derive(Clone)]
pub struct ScramVerifier {
    iterations: u32,
    salt_b64: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

impl ScramVerifier {
    pub fn parse(v: &str) -> Option<ScramVerifier> {
        let rest = v.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations = iter.parse().ok().filter(|&n| n > 0)?;
        B64.decode(salt).ok()?;
        Some(ScramVerifier {
            iterations,
            salt_b64: salt.to_string(),
            stored_key: B64.decode(stored).ok().filter(|k| k.len() == 32)?,
            server_key: B64.decode(server).ok().filter(|k| k.len() == 32)?,
        })
    }

    /// Derives a verifier from a plaintext password (random salt, 4096 iterations).
    pub fn derive(password: &str) -> ScramVerifier {
        let v = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // The crate's own output always parses; fall back to a decoy that matches nothing.
        Self::parse(&v).unwrap_or_else(|| Self::decoy(""))
    }

    /// A verifier no password matches, with a salt stable per user name, so a probe cannot
    /// tell an unknown user from a wrong password by the salt changing between attempts.
    pub fn decoy(user: &str) -> ScramVerifier {
        static KEY: OnceLock<[u8; 32]> = OnceLock::new();
        let key = KEY.get_or_init(rand::random);
        let salt = hmac(key, user.as_bytes());
        ScramVerifier {
            iterations: 4096,
            salt_b64: B64.encode(&salt[..16]),
            stored_key: rand::random::<[u8; 32]>().to_vec(),
            server_key: rand::random::<[u8; 32]>().to_vec(),
        }
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn protocol(msg: &'static str) -> AuthError {
    AuthError::Protocol(msg)
}

/// Reads a SASL message ('p') and returns its payload.
async fn read_sasl(conn: &mut Framed, initial: bool) -> Result<Vec<u8>, AuthError> {
    let frame = conn.read_password_message().await?;
    if frame.tag != b'p' {
        return Err(protocol("expected a SASL response"));
    }
    let mut r = BodyReader::new(frame.body());
    if initial {
        let mech = r
            .cstr()
            .map_err(|_| protocol("malformed SASLInitialResponse"))?;
        if mech != MECHANISM {
            return Err(protocol(
                "client selected an invalid SASL authentication mechanism",
            ));
        }
        let len = r
            .i32()
            .map_err(|_| protocol("malformed SASLInitialResponse"))?;
        if len < 0 || len as usize != r.remaining() {
            return Err(protocol("malformed SASLInitialResponse"));
        }
    }
    Ok(r.rest().to_vec())
}

struct ClientFirst {
    bare: String,
    nonce: String,
    /// base64 of the GS2 header, which the final message must echo as `c=`.
    cbind_b64: String,
}

fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, AuthError> {
    let msg = std::str::from_utf8(msg).map_err(|_| protocol("SCRAM message is not UTF-8"))?;
    // gs2-header: ("n" | "y" | "p=...") "," [authzid] ","
    let (flag, rest) = msg
        .split_once(',')
        .ok_or_else(|| protocol("malformed SCRAM client-first"))?;
    if flag.starts_with("p=") {
        return Err(protocol(
            "channel binding is not supported; use SCRAM-SHA-256",
        ));
    }
    if flag != "n" && flag != "y" {
        return Err(protocol("malformed SCRAM GS2 header"));
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or_else(|| protocol("malformed SCRAM client-first"))?;
    if !authzid.is_empty() {
        return Err(protocol("SCRAM authorization identities are not supported"));
    }
    let nonce = bare
        .split(',')
        .find_map(|attr| attr.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
        .ok_or_else(|| protocol("SCRAM client-first has no valid nonce"))?;
    Ok(ClientFirst {
        bare: bare.to_string(),
        nonce: nonce.to_string(),
        cbind_b64: B64.encode(format!("{flag},,")),
    })
}

pub(super) async fn exchange(conn: &mut Framed, v: &ScramVerifier) -> Result<(), AuthError> {
    let mut out = BytesMut::new();
    backend::auth_sasl(&[MECHANISM], &mut out);
    conn.write_all(&out).await?;

    let first = parse_client_first(&read_sasl(conn, true).await?)?;
    let server_nonce = B64.encode(rand::random::<[u8; 18]>());
    let server_first = format!(
        "r={}{},s={},i={}",
        first.nonce, server_nonce, v.salt_b64, v.iterations
    );
    out.clear();
    backend::auth_sasl_continue(server_first.as_bytes(), &mut out);
    conn.write_all(&out).await?;

    let final_msg = read_sasl(conn, false).await?;
    let final_msg =
        std::str::from_utf8(&final_msg).map_err(|_| protocol("SCRAM message is not UTF-8"))?;
    let (without_proof, proof_b64) = final_msg
        .rsplit_once(",p=")
        .ok_or_else(|| protocol("SCRAM client-final has no proof"))?;
    let mut attrs = without_proof.split(',');
    let cbind = attrs.next().and_then(|a| a.strip_prefix("c="));
    let nonce = attrs.next().and_then(|a| a.strip_prefix("r="));
    if cbind != Some(first.cbind_b64.as_str()) {
        return Err(protocol("SCRAM channel binding check failed"));
    }
    if nonce != Some(format!("{}{}", first.nonce, server_nonce).as_str()) {
        return Err(protocol("SCRAM nonce mismatch"));
    }
    let proof = B64
        .decode(proof_b64)
        .map_err(|_| protocol("malformed SCRAM proof"))?;

    let auth_message = format!("{},{},{}", first.bare, server_first, without_proof);
    let client_signature = hmac(&v.stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return Err(AuthError::Failed);
    }
    let client_key: Vec<u8> = proof
        .iter()
        .zip(&client_signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let stored = Sha256::digest(&client_key);
    if !constant_time_eq(&stored, &v.stored_key) {
        return Err(AuthError::Failed);
    }
    let server_signature = hmac(&v.server_key, auth_message.as_bytes());
    out.clear();
    backend::auth_sasl_final(
        format!("v={}", B64.encode(server_signature)).as_bytes(),
        &mut out,
    );
    conn.write_all(&out).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_postgres_verifiers() {
        let v = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(ScramVerifier::parse(&v).is_some());
        assert!(ScramVerifier::parse("SCRAM-SHA-256$0:abc$x:y").is_none());
        assert!(ScramVerifier::parse("SCRAM-SHA-256$4096:!!$x:y").is_none());
    }

    #[test]
    fn client_first_rules() {
        assert!(parse_client_first(b"n,,n=,r=abc").is_ok());
        assert!(parse_client_first(b"p=tls-server-end-point,,n=,r=abc").is_err());
        assert!(parse_client_first(b"n,a=x,n=,r=abc").is_err());
        assert!(parse_client_first(b"n,,n=").is_err());
        assert!(parse_client_first(b"garbage").is_err());
    }
}
