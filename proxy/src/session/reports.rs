//! ParameterStatus towards the client.
//!
//! Postgres (14 and later) reports a `GUC_REPORT` setting whose value changed since it last
//! reported it, just before ReadyForQuery. A pooled server's "last reported" values are those
//! it reported to the proxy, not to this client: the proxy's own statements (settings at
//! checkout, a `DISCARD ALL` answered in two steps) change them, and a client logged in without
//! a server was told values as it wrote them, not as Postgres spells them. So the server's
//! ParameterStatus messages are not relayed. The session remembers what the client has been
//! told and, before each ReadyForQuery it sends, reports the values that differ from the
//! server's current ones (or, when the proxy answers without a server, from the values the
//! client's settings give on a server of the pool): the same messages, at the same place, as
//! on a direct connection.

use super::Session;
use crate::pool::ServerParams;
use crate::protocol::backend;
use bytes::BytesMut;

/// The ParameterStatus values a client has been told: the pool's values (shared by its
/// clients) and those that differ for this client. Kept per idle client, so the shared part
/// is not copied: with 10,000 idle clients a full copy each cost about 1.5 KiB per client.
#[derive(Default)]
pub(super) struct Reported {
    base: ServerParams,
    own: Vec<(String, String)>,
}

impl Reported {
    /// `told`: what the client was told at login; `base`: the pool's values, if known.
    pub fn new(base: Option<ServerParams>, told: &[(String, String)]) -> Reported {
        let mut r = Reported {
            base: base.unwrap_or_default(),
            own: Vec::new(),
        };
        for (name, value) in told {
            r.set(name, value);
        }
        r
    }

    fn told(&self, name: &str) -> Option<&str> {
        self.own
            .iter()
            .chain(self.base.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, name: &str, value: &str) {
        self.own.retain(|(k, _)| k != name);
        let in_base = self.base.iter().any(|(k, v)| k == name && v == value);
        if !in_base {
            self.own.push((name.to_string(), value.to_string()));
        }
    }
}

/// Writes a ParameterStatus for each value in `now` that differs from what the client was
/// told, and remembers it.
pub(super) fn report_changes(
    reported: &mut Reported,
    now: &[(String, String)],
    out: &mut BytesMut,
) {
    for (name, value) in now {
        if reported.told(name) != Some(value.as_str()) {
            backend::parameter_status(name, value, out);
            reported.set(name, value);
        }
    }
}

/// The pool's ParameterStatus values with a client's own settings over them: what a server
/// of the pool reports once it has the client's settings.
pub(super) fn with_settings(
    defaults: &[(String, String)],
    settings: &[(String, String)],
) -> Vec<(String, String)> {
    defaults
        .iter()
        .map(|(k, v)| {
            let own = settings.iter().find(|(s, _)| s.eq_ignore_ascii_case(k));
            (k.clone(), own.map_or(v, |(_, sv)| sv).clone())
        })
        .collect()
}

impl Session {
    /// Before a ReadyForQuery the proxy answers alone (no server attached) after changing the
    /// client's settings: reports the values they give on a server of the pool, which the
    /// next checkout brings about.
    pub(super) fn report_desired_changes(&mut self) {
        let Some(defaults) = self.id.pool.server_params() else {
            return;
        };
        let now = with_settings(&defaults, &self.desired);
        report_changes(&mut self.reported, &now, &mut self.to_client);
        self.reported_digest = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_changed_values_are_reported_once() {
        let base = std::sync::Arc::new(pairs(&[("TimeZone", "UTC"), ("DateStyle", "ISO, MDY")]));
        let mut reported = Reported::new(Some(base.clone()), &base);
        assert!(reported.own.is_empty(), "the pool's values are not copied");
        let mut out = BytesMut::new();
        report_changes(
            &mut reported,
            &pairs(&[("TimeZone", "UTC"), ("DateStyle", "German, DMY")]),
            &mut out,
        );
        let mut want = BytesMut::new();
        backend::parameter_status("DateStyle", "German, DMY", &mut want);
        assert_eq!(out, want);
        out.clear();
        report_changes(
            &mut reported,
            &pairs(&[("DateStyle", "German, DMY")]),
            &mut out,
        );
        assert!(out.is_empty());
    }
}
