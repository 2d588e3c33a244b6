//! Messages the proxy itself writes to clients, encoded with pgwire's message types.

use bytes::BytesMut;
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::Message;

/// Severity of an error the proxy reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error to send to a client: everything in it is safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Error,
            ..Self::fatal(code, message)
        }
    }

    /// Postgres' answer to a Bind, Describe or DEALLOCATE of a prepared statement it does not
    /// have (`""` = the unnamed statement).
    pub fn no_such_statement(name: &str) -> Self {
        let message = if name.is_empty() {
            "unnamed prepared statement does not exist".to_string()
        } else {
            format!("prepared statement \"{name}\" does not exist")
        };
        Self::error(super::sqlstate::INVALID_SQL_STATEMENT_NAME, message)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let mut fields = vec![
            (b'S', self.severity.as_str().to_string()),
            (b'V', self.severity.as_str().to_string()),
            (b'C', self.code.to_string()),
            (b'M', self.message.clone()),
        ];
        if let Some(d) = &self.detail {
            fields.push((b'D', d.clone()));
        }
        if let Some(h) = &self.hint {
            fields.push((b'H', h.clone()));
        }
        encode(&ErrorResponse::new(fields), out);
    }
}

/// Encodes a pgwire message. Encoding into a BytesMut cannot fail for the messages we build
/// (they carry no user-chosen length fields), so an error is only logged.
fn encode<M: Message>(m: &M, out: &mut BytesMut) {
    if let Err(e) = m.encode(out) {
        tracing::error!(error = %e, "failed to encode a backend message");
    }
}

pub fn notice(message: &str, out: &mut BytesMut) {
    let fields = vec![
        (b'S', "NOTICE".to_string()),
        (b'V', "NOTICE".to_string()),
        (b'C', "00000".to_string()),
        (b'M', message.to_string()),
    ];
    encode(&NoticeResponse::new(fields), out);
}

pub fn ready_for_query(status: u8, out: &mut BytesMut) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status), out);
}

pub fn command_complete(tag: &str, out: &mut BytesMut) {
    encode(
        &pgwire::messages::response::CommandComplete::new(tag.to_string()),
        out,
    );
}

pub fn auth_ok(out: &mut BytesMut) {
    encode(&Authentication::Ok, out);
}

pub fn auth_md5(salt: [u8; 4], out: &mut BytesMut) {
    encode(&Authentication::MD5Password(salt.to_vec()), out);
}

pub fn auth_cleartext(out: &mut BytesMut) {
    encode(&Authentication::CleartextPassword, out);
}

pub fn auth_sasl(mechanisms: &[&str], out: &mut BytesMut) {
    let m = mechanisms.iter().map(|s| s.to_string()).collect();
    encode(&Authentication::SASL(m), out);
}

pub fn auth_sasl_continue(data: &[u8], out: &mut BytesMut) {
    encode(&Authentication::SASLContinue(data.to_vec().into()), out);
}

pub fn auth_sasl_final(data: &[u8], out: &mut BytesMut) {
    encode(&Authentication::SASLFinal(data.to_vec().into()), out);
}

pub fn parameter_status(name: &str, value: &str, out: &mut BytesMut) {
    encode(
        &ParameterStatus::new(name.to_string(), value.to_string()),
        out,
    );
}

pub fn backend_key_data(pid: i32, secret: i32, out: &mut BytesMut) {
    encode(&BackendKeyData::new(pid, SecretKey::I32(secret)), out);
}

/// Tells a 3.x client (x > 0) that we speak 3.0, and which `_pq_.` options we ignored.
pub fn negotiate_protocol_version(unsupported: Vec<String>, out: &mut BytesMut) {
    encode(&NegotiateProtocolVersion::new(0, unsupported), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let mut out = BytesMut::new();
        PgError::fatal("28P01", "nope").encode(&mut out);
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        assert!(out.windows(6).any(|w| w == b"C28P01"));
    }

    #[test]
    fn ready_for_query_layout() {
        let mut out = BytesMut::new();
        ready_for_query(b'T', &mut out);
        assert_eq!(&out[..], b"Z\0\0\0\x05T");
    }
}
