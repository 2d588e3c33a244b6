//! Session settings: what a client chose at startup or with SET, and how a pooled server is
//! brought to that state at checkout.
//!
//! A server's session-level settings are known exactly: they start empty (startup values are
//! source "client", not "session") and are re-read from `pg_settings` whenever a transaction
//! may have changed them. Checkout then sends only the difference.

use crate::app::App;
use crate::protocol::sqlstate;
use crate::protocol::PgError;

/// Startup parameters that are part of the protocol, not session settings.
const PROTOCOL_PARAMS: &[&str] = &[
    "user",
    "database",
    "client_encoding",
    "replication",
    "options",
];

/// The query that reads back a server's session-level settings. Custom (dotted) settings are
/// placeholders that `pg_settings` never shows, so those whose names the session has used are
/// read with `current_setting` (an empty value is a reset placeholder).
pub fn read_session_settings(custom: &[String]) -> String {
    // `role` is hidden from pg_settings (GUC_NO_SHOW_ALL) and survives RESET ALL: a `SET ROLE`
    // (by a user the policy does not restrict) must not stay for the next client.
    let base = "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
                UNION ALL SELECT 'role', pg_catalog.current_setting('role') \
                WHERE pg_catalog.current_setting('role') OPERATOR(pg_catalog.<>) 'none'";
    if custom.is_empty() {
        return base.to_string();
    }
    let names: Vec<String> = custom.iter().map(|n| quote_literal(n)).collect();
    format!(
        "{base} UNION ALL SELECT n, v FROM (SELECT n, pg_catalog.current_setting(n, true) AS v \
         FROM unnest(ARRAY[{}]::text[]) AS n) c WHERE v <> ''",
        names.join(", ")
    )
}

/// Settings a client may not choose: the proxy owns them.
pub fn reserved_setting(app: &App, name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == app.config().tenancy.setting.to_ascii_lowercase()
        || n.starts_with("tenantgate.")
        || matches!(
            n.as_str(),
            "role" | "session_authorization" | "is_superuser" | "row_security"
        )
}

/// The settings a client asked for in its startup packet (and `options`, if allowed).
pub fn startup_settings(
    app: &App,
    params: &[(String, String)],
    forward_options: bool,
) -> Result<Vec<(String, String)>, PgError> {
    let mut settings = Vec::new();
    let mut push = |name: &str, value: &str| -> Result<(), PgError> {
        if reserved_setting(app, name) {
            return Err(PgError::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("tenantgate: setting \"{name}\" is reserved and cannot be set at startup"),
            ));
        }
        settings.push((name.to_string(), value.to_string()));
        Ok(())
    };
    for (name, value) in params {
        if !PROTOCOL_PARAMS.contains(&name.as_str()) {
            push(name, value)?;
        }
    }
    if let Some((_, options)) = params.iter().find(|(k, _)| k == "options") {
        if !options.trim().is_empty() {
            if !forward_options {
                return Err(PgError::fatal(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "unsupported startup parameter: options",
                )
                .with_hint("set forward_options = true for this database to allow it"));
            }
            for (name, value) in parse_options(options)? {
                push(&name, &value)?;
            }
        }
    }
    Ok(settings)
}

/// Parses libpq `options`: `-c name=value` and `--name=value`, with backslash escapes.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let bad = || {
        PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "invalid options startup parameter",
        )
    };
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let pair = if w == "-c" {
            it.next().ok_or_else(bad)?
        } else if let Some(rest) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            rest.to_string()
        } else {
            return Err(bad());
        };
        let (k, v) = pair.split_once('=').ok_or_else(bad)?;
        out.push((k.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

/// Quotes a string as an escape-string literal, safe whatever standard_conforming_strings is.
pub fn quote_literal(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 4);
    q.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => q.push_str("''"),
            '\\' => q.push_str("\\\\"),
            c => q.push(c),
        }
    }
    q.push('\'');
    q
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `set_config('name', 'value', is_local)`, quoted.
pub fn set_config_call(name: &str, value: &str, local: bool) -> String {
    format!(
        "pg_catalog.set_config({}, {}, {local})",
        quote_literal(name),
        quote_literal(value)
    )
}

/// `SET` statements for `settings`, as one simple-query string (set_config, so that custom
/// settings with dots need no identifier quoting rules).
pub fn set_sql(settings: &[(String, String)]) -> String {
    if settings.is_empty() {
        return "SELECT 1".to_string();
    }
    let calls: Vec<String> = settings
        .iter()
        .map(|(k, v)| set_config_call(k, v, false))
        .collect();
    format!("SELECT {}", calls.join(", "))
}

/// The statement that turns a server with session settings `have` into one with `want`, or
/// None when they already agree.
pub fn diff_sql(have: &[(String, String)], want: &[(String, String)]) -> Option<String> {
    let mut parts = Vec::new();
    for (k, _) in have {
        if !want.iter().any(|(w, _)| w == k) {
            parts.push(format!("RESET {}", quote_ident(k)));
        }
    }
    let changed: Vec<(String, String)> = want
        .iter()
        .filter(|(k, v)| !have.iter().any(|(h, hv)| h == k && hv == v))
        .cloned()
        .collect();
    if !changed.is_empty() {
        parts.push(set_sql(&changed));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Runs the proxy's own settings statements in a transaction that is immune to the client's
/// `statement_timeout`/`lock_timeout` (a client's `SET statement_timeout = 1` must not make
/// the proxy lose track of its settings). Session-level SETs inside it persist at COMMIT.
pub fn guarded(sql: &str) -> String {
    format!("BEGIN; SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0; {sql}; COMMIT")
}

/// Rows of READ_SESSION_SETTINGS as (name, value).
pub fn from_rows(rows: Vec<Vec<Option<String>>>) -> Vec<(String, String)> {
    rows.into_iter()
        .filter_map(|mut r| {
            let v = r.pop()??;
            let k = r.pop()??;
            Some((k, v))
        })
        .collect()
}

/// Does turning `have` into `want` reset a setting (a statement of its own, besides the one
/// `set_config` call)?
pub fn diff_resets(have: &[(String, String)], want: &[(String, String)]) -> bool {
    have.iter().any(|(k, _)| !want.iter().any(|(w, _)| w == k))
}

/// What a server's setting is taken to be when it is not known (never a real value): the next
/// checkout sets or resets it whatever the client wants.
pub const UNKNOWN_VALUE: &str = "\u{0}unknown";

/// Settings that would limit the proxy's own statements: with any of them set on a server,
/// the proxy's settings statement runs guarded (see [`guarded`]).
pub fn limits_statements(settings: &[(String, String)]) -> bool {
    settings.iter().any(|(k, _)| {
        ["statement_timeout", "lock_timeout", "transaction_timeout"]
            .iter()
            .any(|n| k.eq_ignore_ascii_case(n))
    })
}

/// A statement that fails unless the server's `setting` is `value`. The proxy sends it after
/// its own settings statement and before a client's first request, in the client's implicit
/// transaction: should the settings statement have failed, this fails too and the server
/// skips the client's messages up to their Sync.
pub fn check_setting_sql(setting: &str, value: &str) -> String {
    format!(
        "SELECT CASE WHEN pg_catalog.current_setting({}, true) OPERATOR(pg_catalog.=) {} \
         THEN NULL ELSE pg_catalog.current_setting('tenantgate: session settings were not applied') END",
        quote_literal(setting),
        quote_literal(value)
    )
}

impl super::Session {
    /// A client's reset of a setting it gave at startup goes back to its startup value, as on
    /// Postgres, where startup values are the session's defaults. The proxy gave them to the
    /// server with `set_config`, so the server's own reset would go to the server's default:
    /// the reset is answered with the startup value set again (`RESET ALL` with all of them).
    /// Only a simple query of one statement is rewritten (see README, Limitations).
    pub(super) fn reset_to_startup(
        &mut self,
        kind: &tenantgate_policy::StatementKind,
    ) -> Option<super::enforce::Screen> {
        use tenantgate_policy::StatementKind;
        let (name, local, tag) = match kind {
            StatementKind::Reset { name: Some(name) } => (name, false, "RESET"),
            StatementKind::Set {
                name,
                local,
                to_default: true,
            } => (name, *local, "SET"),
            StatementKind::Reset { name: None } if self.tenant.is_none() => {
                if self.startup.is_empty() {
                    return None;
                }
                self.desired = self.with_tenant(self.startup.clone());
                return Some(super::enforce::Screen::Answer {
                    tag: "RESET",
                    sql: Some(format!("RESET ALL; {}", set_sql(&self.startup))),
                    hidden: None,
                });
            }
            _ => return None,
        };
        let (own, value) = self
            .startup
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))?
            .clone();
        if local && self.server.is_none() {
            // Outside a transaction block: no effect, and Postgres's warning says so.
            return None;
        }
        if !local {
            self.desired.retain(|(k, _)| !k.eq_ignore_ascii_case(&own));
            self.desired.push((own.clone(), value.clone()));
            self.desired.sort();
        }
        Some(super::enforce::Screen::Answer {
            tag,
            sql: Some(format!("SELECT {}", set_config_call(&own, &value, local))),
            hidden: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn resets_are_settings_the_client_does_not_want() {
        let v = |k: &str| (k.to_string(), "1".to_string());
        assert!(diff_resets(&[v("a"), v("b")], &[v("a")]));
        assert!(!diff_resets(&[v("a")], &[v("a"), v("b")]));
    }

    #[test]
    fn statement_limits_are_found_in_any_case() {
        let s = |k: &str| vec![(k.to_string(), "1".to_string())];
        assert!(limits_statements(&s("statement_timeout")));
        assert!(limits_statements(&s("Lock_Timeout")));
        assert!(limits_statements(&s("transaction_timeout")));
        assert!(!limits_statements(&s("app.current_tenant")));
        assert!(!limits_statements(&[]));
    }

    #[test]
    fn the_check_quotes_its_values() {
        let sql = check_setting_sql("app.current_tenant", "o'hara");
        assert!(
            sql.contains("current_setting(E'app.current_tenant', true)"),
            "{sql}"
        );
        assert!(sql.contains("OPERATOR(pg_catalog.=) E'o''hara'"), "{sql}");
    }

    #[test]
    fn options_are_parsed() {
        let o = parse_options("-c search_path=a,b --statement-timeout=5 -cwork_mem=64kB").unwrap();
        assert_eq!(
            o,
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5".into()),
                ("work_mem".into(), "64kB".into())
            ]
        );
        assert!(parse_options("garbage").is_err());
        assert_eq!(
            parse_options(r"-c x=a\ b").unwrap(),
            vec![("x".into(), "a b".into())]
        );
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal(r"a'b\c"), r"E'a''b\\c'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn diff_resets_and_sets_only_differences() {
        let have = vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ];
        let want = vec![("b".to_string(), "3".to_string())];
        assert_eq!(
            diff_sql(&have, &want).unwrap(),
            "RESET \"a\"; SELECT pg_catalog.set_config(E'b', E'3', false)"
        );
        assert_eq!(diff_sql(&want, &want), None);
    }
}
