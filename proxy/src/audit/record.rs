//! One audit line: its fields in their fixed order, its canonical bytes and its chain hash.

use super::{AuditEvent, AuditKind};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// `prev_hash` of the first record of a log.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"hash":"` + 64 hex digits + `"}`: the end of every line (before its newline).
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// A record as written. The field order is the key order of the line and so part of the
/// canonical bytes the hash covers: never reorder, only append before `prev_hash`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Record<'a> {
    pub ts: String,
    pub seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'a str>,
    /// Present (possibly null) on session events only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Option<&'a str>>,
    pub event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_file: Option<&'a str>,
    /// The tenant's isolation strategy (row, schema, database), on session events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<&'a str>,
    pub prev_hash: String,
}

impl<'a> Record<'a> {
    /// The record of a session event; `seq` and `prev_hash` are the writer's to fill in.
    pub fn from_event(at: SystemTime, e: &'a AuditEvent) -> Record<'a> {
        let mut r = Record {
            ts: rfc3339_micros(at),
            conn: Some(e.conn),
            client_addr: Some(e.client_addr.to_string()),
            user: Some(&e.user),
            database: Some(&e.database),
            tenant: Some(e.tenant.as_deref()),
            isolation: e.isolation,
            ..Record::default()
        };
        match &e.kind {
            AuditKind::Statement {
                decision,
                rule,
                reason,
                fingerprint,
                query,
                sqlstate,
            } => {
                r.event = "statement";
                r.decision = Some(decision);
                r.rule = Some(rule);
                r.reason = Some(reason);
                r.fingerprint = Some(fingerprint);
                r.query = Some(query);
                r.sqlstate = Some(sqlstate);
            }
            AuditKind::Bind {
                decision,
                rule,
                reason,
                fingerprint,
                query,
            } => {
                r.event = "bind";
                r.decision = Some(decision);
                r.rule = Some(rule);
                r.reason = Some(reason);
                r.fingerprint = Some(fingerprint);
                r.query = Some(query);
            }
            AuditKind::Connect => r.event = "connect",
            AuditKind::AuthFailure => r.event = "auth_failure",
            AuditKind::TenantSwitch { from, to } => {
                r.event = "tenant_switch";
                r.from = Some(from.as_deref());
                r.to = Some(to.as_deref());
            }
            AuditKind::Disconnect => r.event = "disconnect",
        }
        r
    }

    /// A record the log writes about itself (`header`, `dropped`).
    pub fn system(event: &'a str) -> Record<'a> {
        Record {
            ts: rfc3339_micros(SystemTime::now()),
            event,
            ..Record::default()
        }
    }

    /// The complete line (with its newline) and its hash.
    pub fn seal(&self) -> Result<(String, String), serde_json::Error> {
        let canonical = serde_json::to_string(self)?;
        let hash = chain_hash(&self.prev_hash, canonical.as_bytes());
        let mut line = canonical;
        line.pop(); // the closing brace
        line.push_str(",\"hash\":\"");
        line.push_str(&hash);
        line.push_str("\"}\n");
        Ok((line, hash))
    }
}

/// `hex(SHA-256(prev_hash || canonical))`, `prev_hash` as its ASCII hex digits.
pub(super) fn chain_hash(prev_hash: &str, canonical: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical);
    hex::encode(h.finalize())
}

/// Splits a line (without its newline) into its canonical bytes and its hash, or None when it
/// does not end with a `hash` member.
pub(super) fn split_line(line: &str) -> Option<(String, &str)> {
    let cut = line.len().checked_sub(HASH_SUFFIX_LEN)?;
    let (body, tail) = line.split_at_checked(cut)?;
    let hash = tail.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    if !is_hash(hash) || !body.starts_with('{') {
        return None;
    }
    Some((format!("{body}}}"), hash))
}

/// 64 lowercase hex digits.
pub(super) fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `2024-02-29T12:34:56.123456Z`. Times before 1970 print as the epoch.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let tod = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60,
        d.subsec_micros()
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, micros: u32) -> String {
        rfc3339_micros(UNIX_EPOCH + Duration::new(secs, micros * 1000))
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_709_210_096, 123_456), "2024-02-29T12:34:56.123456Z");
        assert_eq!(at(4_107_542_400, 1), "2100-03-01T00:00:00.000001Z");
        assert_eq!(at(253_402_300_799, 999_999), "9999-12-31T23:59:59.999999Z");
        assert_eq!(
            rfc3339_micros(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        // Walk day by day from 1970 to 2370, checking the calendar advances by exactly one.
        let mut prev = civil_from_days(0);
        for d in 1..146_097 {
            let cur = civil_from_days(d);
            let next_month = (prev.0, prev.1 + 1, 1);
            let next_year = (prev.0 + 1, 1, 1);
            assert!(
                cur == (prev.0, prev.1, prev.2 + 1) || cur == next_month || cur == next_year,
                "{prev:?} -> {cur:?}"
            );
            prev = cur;
        }
        assert_eq!(prev, (2369, 12, 31));
    }

    #[test]
    fn seal_puts_the_hash_last_and_split_line_recovers_the_canonical_bytes() {
        let mut r = Record::system("dropped");
        r.seq = 7;
        r.count = Some(3);
        r.prev_hash = ZERO_HASH.into();
        let canonical = serde_json::to_string(&r).unwrap();
        let (line, hash) = r.seal().unwrap();
        assert!(line.ends_with(&format!(",\"hash\":\"{hash}\"}}\n")));
        let (back, h) = split_line(line.trim_end_matches('\n')).unwrap();
        assert_eq!((back.as_str(), h), (canonical.as_str(), hash.as_str()));
        assert_eq!(hash, chain_hash(ZERO_HASH, canonical.as_bytes()));
        assert!(canonical.starts_with("{\"ts\":\""));
        assert!(canonical.contains("\"seq\":7,\"event\":\"dropped\",\"count\":3,\"prev_hash\":"));
    }
}
