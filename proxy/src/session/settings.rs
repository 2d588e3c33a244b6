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
    let base = "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session'";
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

/// Could this statement text change session settings or server-side prepared statements?
/// Looks at the first keyword of each statement (outside comments, strings and quoted
/// identifiers) and for set_config calls anywhere. Conservative: a false positive costs one
/// extra query when the server is released.
pub fn scan_session_effects(sql: &str) -> SessionEffects {
    let b = sql.as_bytes();
    let mut fx = SessionEffects::default();
    // Every word the scan acts on (set, reset, set_config, discard, deallocate) contains one
    // of these: most statements are done after one cheap pass.
    const WORDS: Keywords = Keywords::new(&[b"set", b"discard", b"deallocate"]);
    if WORDS.hits(b) == 0 {
        return fx;
    }
    visit_words(b, |word, at_start, end| {
        if at_start {
            if word.eq_ignore_ascii_case(b"set") || word.eq_ignore_ascii_case(b"reset") {
                fx.settings = true;
                fx.custom.extend(custom_name_after(b, end));
            }
            if word.eq_ignore_ascii_case(b"discard") {
                fx.settings = true;
                fx.statements = true;
            }
            if word.eq_ignore_ascii_case(b"deallocate") {
                fx.statements = true;
            }
        }
        if word.eq_ignore_ascii_case(b"set_config") {
            fx.settings = true;
            fx.custom.extend(custom_name_in_call(b, end));
        }
    });
    fx
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionEffects {
    pub settings: bool,
    pub statements: bool,
    /// Custom (dotted) setting names named by SET/RESET or a set_config literal.
    pub custom: Vec<String>,
}

/// Calls `f(word, first_in_statement, end)` for every keyword or identifier outside comments,
/// string literals, dollar quotes and quoted identifiers.
fn visit_words(b: &[u8], mut f: impl FnMut(&[u8], bool, usize)) {
    let mut i = 0;
    let mut at_start = true;
    while i < b.len() {
        let c = b[i];
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = find_from(b, i, b"\n").map_or(b.len(), |e| e + 1);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = find_from(b, i + 2, b"*/").map_or(b.len(), |e| e + 2);
                continue;
            }
            b'\'' | b'"' => {
                i = skip_quoted(b, i, c);
                at_start = false;
                continue;
            }
            b'$' => {
                if let Some(end) = dollar_tag(b, i) {
                    let tag = &b[i..end];
                    i = find_from(b, end, tag).map_or(b.len(), |e| e + tag.len());
                    at_start = false;
                    continue;
                }
            }
            b';' => at_start = true,
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let s = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                f(&b[s..i], at_start, i);
                at_start = false;
                continue;
            }
            c if c.is_ascii_whitespace() || c == b'(' => {}
            _ => at_start = false,
        }
        i += 1;
    }
}

/// Does every statement in `sql` start with a keyword of an ordinary query or of transaction
/// control? Such statements behave the same when the proxy runs a statement of its own just
/// before them in the same implicit transaction (utility commands like VACUUM or CREATE
/// INDEX CONCURRENTLY may refuse to run in a pipeline). Some(true) when one of them is
/// transaction control (BEGIN, COMMIT, ROLLBACK, …: it can end or extend the implicit
/// transaction); None when one is not plain, or there is none.
///
/// Conservative, None when unsure: also for text with a backslash (escape strings) or a
/// nested block comment, which the word scan does not follow as Postgres does.
pub fn plain_statements(sql: &str) -> Option<bool> {
    const PLAIN: &[&[u8]] = &[
        b"select", b"insert", b"update", b"delete", b"merge", b"with", b"values", b"table",
        b"show", b"declare", b"fetch", b"move", b"close", b"lock",
    ];
    const CONTROL: &[&[u8]] = &[
        b"begin",
        b"start",
        b"commit",
        b"end",
        b"rollback",
        b"abort",
        b"savepoint",
        b"release",
    ];
    let b = sql.as_bytes();
    if misreadable(b) {
        return None;
    }
    let mut plain = true;
    let mut any = false;
    let mut control = false;
    visit_words(b, |word, at_start, _| {
        if at_start {
            any = true;
            let is = |list: &[&[u8]]| list.iter().any(|k| word.eq_ignore_ascii_case(k));
            let c = is(CONTROL);
            control |= c;
            plain &= c || is(PLAIN);
        }
    });
    (plain && any).then_some(control)
}

/// Text where the word scan might not see the statements Postgres' lexer sees: a backslash
/// (escape strings), a control character other than tab and newline (Postgres ends a `--`
/// comment at a carriage return; newer versions take a vertical tab for white space), a `$`
/// before a non-ASCII byte (dollar-quote tags may be non-ASCII), or a nested block comment.
fn misreadable(b: &[u8]) -> bool {
    b.iter()
        .any(|&c| c == b'\\' || (c < 0x20 && c != b'\t' && c != b'\n') || c == 0x7f)
        || b.windows(2).any(|w| w[0] == b'$' && w[1] >= 0x80)
        || nested_comment(b)
}

/// Is a block comment opened inside another one (a `/*` before the first `*/` that follows an
/// opening `/*`)?
fn nested_comment(b: &[u8]) -> bool {
    let mut i = 0;
    while let Some(start) = find_from(b, i, b"/*") {
        let end = find_from(b, start + 2, b"*/").unwrap_or(b.len());
        if find_from(b, start + 2, b"/*").is_some_and(|n| n < end) {
            return true;
        }
        i = end;
    }
    false
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

/// The setting name after `SET [SESSION|LOCAL]` / `RESET` at `i`, if it is a dotted one.
fn custom_name_after(b: &[u8], mut i: usize) -> Option<String> {
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let word = |i: &mut usize| -> Option<String> {
        if b.get(*i) == Some(&b'"') {
            let end = skip_quoted(b, *i, b'"');
            let inner = b.get(*i + 1..end.saturating_sub(1))?;
            *i = end;
            return Some(String::from_utf8_lossy(inner).replace("\"\"", "\""));
        }
        let s = *i;
        while *i < b.len() && (b[*i].is_ascii_alphanumeric() || b[*i] == b'_' || b[*i] == b'$') {
            *i += 1;
        }
        (s < *i).then(|| String::from_utf8_lossy(&b[s..*i]).to_ascii_lowercase())
    };
    skip_ws(&mut i);
    let mut first = word(&mut i)?;
    if first == "session" || first == "local" {
        skip_ws(&mut i);
        first = word(&mut i)?;
    }
    let mut name = first;
    while b.get(i) == Some(&b'.') {
        i += 1;
        name.push('.');
        name.push_str(&word(&mut i)?);
    }
    name.contains('.').then_some(name)
}

/// The string literal that is the first argument of a set_config call at `i` (after the name).
fn custom_name_in_call(b: &[u8], mut i: usize) -> Option<String> {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    if b.get(i) != Some(&b'(') {
        return None;
    }
    i += 1;
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    if b.get(i) != Some(&b'\'') {
        return None;
    }
    let end = skip_quoted(b, i, b'\'');
    let inner = b.get(i + 1..end.saturating_sub(1))?;
    let name = String::from_utf8_lossy(inner)
        .replace("''", "'")
        .to_ascii_lowercase();
    name.contains('.').then_some(name)
}

fn find_from(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| p + from)
}

/// Index just past a quoted string or identifier starting at `i` (doubled quotes escape;
/// backslashes too, which only over-skips inside standard strings: harmless here).
fn skip_quoted(b: &[u8], mut i: usize, q: u8) -> usize {
    i += 1;
    while i < b.len() {
        if b[i] == b'\\' && q == b'\'' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// End of a dollar-quote tag (`$$` or `$name$`) starting at `i`, if it is one.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && is_ident(b[i - 1]) {
        return None;
    }
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    (b.get(j) == Some(&b'$') && !b.get(i + 1).is_some_and(u8::is_ascii_digit)).then_some(j + 1)
}

/// Up to 32 lower-case ASCII words (two letters or longer) to look for anywhere in a text,
/// ignoring ASCII case: a cheap filter before a real scan. One pass, two table lookups per
/// byte, and a comparison only where a word's first two letters are found; no allocation.
pub struct Keywords {
    /// Bit `i` is set for the bytes (either case) `words[i]` starts with.
    first: [u32; 256],
    /// Bit `i` is set for the bytes (either case) that are `words[i]`'s second.
    second: [u32; 256],
    words: &'static [&'static [u8]],
}

impl Keywords {
    pub const fn new(words: &'static [&'static [u8]]) -> Self {
        assert!(words.len() <= 32);
        let mut first = [0u32; 256];
        let mut second = [0u32; 256];
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            assert!(w.len() >= 2);
            first[w[0] as usize] |= 1 << i;
            first[w[0].to_ascii_uppercase() as usize] |= 1 << i;
            second[w[1] as usize] |= 1 << i;
            second[w[1].to_ascii_uppercase() as usize] |= 1 << i;
            i += 1;
        }
        Keywords {
            first,
            second,
            words,
        }
    }

    /// Bit `i` is set if `words[i]` occurs in `hay`.
    pub fn hits(&self, hay: &[u8]) -> u32 {
        let mut hits = 0u32;
        for (i, pair) in hay.windows(2).enumerate() {
            let mut candidates =
                self.first[pair[0] as usize] & self.second[pair[1] as usize] & !hits;
            while candidates != 0 {
                let w = candidates.trailing_zeros() as usize;
                candidates &= candidates - 1;
                if starts_with_ignore_case(&hay[i..], self.words[w]) {
                    hits |= 1 << w;
                }
            }
        }
        hits
    }
}

/// `word` is lower case; compares byte by byte, stopping at the first difference.
fn starts_with_ignore_case(hay: &[u8], word: &[u8]) -> bool {
    hay.len() >= word.len()
        && hay
            .iter()
            .zip(word)
            .all(|(a, b)| a.to_ascii_lowercase() == *b)
}

/// An identifier byte as Postgres' lexer sees it: letters, digits, `_`, `$`, and any non-ASCII
/// byte (so `é$a$` is one identifier, not `é` and a dollar quote).
fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plain_statements_are_queries_and_transaction_control_only() {
        for sql in [
            "SELECT 1",
            "  select * from t where x = $1",
            "WITH q AS (SELECT 1) SELECT * FROM q",
            "(SELECT 1) UNION (SELECT 2)",
            "INSERT INTO t VALUES ($1); UPDATE t SET a = 1; DELETE FROM t",
            "BEGIN; SELECT 1; COMMIT",
            "/* vacuum */ SELECT 'vacuum; create' -- drop\n, $$; vacuum$$",
        ] {
            assert!(plain_statements(sql).is_some(), "{sql}");
        }
        for sql in [
            "",
            "  ;",
            "VACUUM t",
            "SELECT 1; VACUUM t",
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            "COPY t FROM STDIN",
            "CALL p()",
            "DO $$ BEGIN COMMIT; END $$",
            "SET search_path = x",
            "\"select\" 1",
        ] {
            assert!(plain_statements(sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn transaction_control_is_told_apart() {
        for sql in [
            "BEGIN",
            "start transaction isolation level serializable",
            "SELECT 1; begin",
            "ROLLBACK; SELECT 1",
            "abort",
            "COMMIT",
            "end",
            "/* c */ rollback",
            "savepoint a",
        ] {
            assert_eq!(plain_statements(sql), Some(true), "{sql}");
        }
        assert_eq!(plain_statements("SELECT 'begin' AS begin"), Some(false));
        assert_eq!(
            plain_statements("SELECT CASE WHEN x THEN 1 END"),
            Some(false)
        );
    }

    #[test]
    fn text_the_scan_may_misread_is_not_plain() {
        for sql in [
            r"SELECT '\' AS a; ROLLBACK; SELECT 1 --'",
            r"SELECT E'\''; ROLLBACK; SELECT '",
            "SELECT 1 /* a /* b */ ; ROLLBACK; SELECT 1 */",
            "SELECT 1; --x\rROLLBACK; SELECT 1",
            "SELECT 1;\x0bROLLBACK; SELECT 1",
            "SELECT $é$ ' $é$; ROLLBACK; SELECT ' x",
        ] {
            assert_eq!(plain_statements(sql), None, "{sql}");
        }
        // `$` continues an identifier, also after a non-ASCII letter: no dollar quote here.
        for sql in [
            "SELECT 1 AS a$b$; ROLLBACK; SELECT 1 AS c$b$",
            "SELECT 1 AS é$b$; ROLLBACK; SELECT 1 AS é$b$",
        ] {
            assert_eq!(plain_statements(sql), Some(true), "{sql}");
        }
        assert_eq!(plain_statements("SELECT $x$; ROLLBACK; $x$"), Some(false));
        assert_eq!(plain_statements("SELECT 1 /* a */ /* b */"), Some(false));
    }

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
    fn keywords_ignore_ascii_case_only() {
        let k = Keywords::new(&[b"set", b"qq", b"lastval", b"last"]);
        assert_eq!(k.hits(b"select 1 OFFSET 2"), 0b0001);
        assert_eq!(k.hits(b"SeT x = 1"), 0b0001);
        assert_eq!(k.hits(b"Qq"), 0b0010);
        assert_eq!(k.hits(b"Q"), 0);
        assert_eq!(k.hits(b"select LASTVAL()"), 0b1100);
        assert_eq!(k.hits(b"offSET"), 0b0001);
        assert_eq!(k.hits(b"last set qq"), 0b1011);
        assert_eq!(k.hits(b"xx se"), 0);
        assert_eq!(k.hits(b"lastva"), 0b1000);
        assert_eq!(k.hits(b""), 0);
        assert_eq!(k.hits("ſet".as_bytes()), 0);
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

    #[test]
    fn detects_setting_changes() {
        let settings = |s: &str| scan_session_effects(s).settings;
        assert!(settings("SET statement_timeout = 1"));
        assert!(settings("  /* x */ set search_path = a"));
        assert!(settings("begin; reset all"));
        assert!(settings("select set_config('a','b',false)"));
        assert!(settings("select pg_catalog.SET_CONFIG('a','b',false)"));
        assert!(settings("DISCARD ALL"));
        assert!(!settings("UPDATE t SET a = 1 WHERE b = 'x; set y'"));
        assert!(!settings("select offset_x, settings from t -- ; set x"));
        assert!(!settings("select $$; set x$$, $t$;reset$t$"));
        assert!(!settings(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        ));
        assert!(scan_session_effects("deallocate all").statements);
        assert!(scan_session_effects("DeAllocate all").statements);
        assert!(scan_session_effects("DISCARD ALL").settings);
        assert!(scan_session_effects("ReSeT ALL").settings);
        assert!(scan_session_effects("select SET_CONFIG('a', 'b', false)").settings);
        assert_eq!(
            scan_session_effects("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
            SessionEffects::default()
        );
        assert_eq!(
            scan_session_effects("SET app.user_id = 5").custom,
            vec!["app.user_id"]
        );
        assert_eq!(
            scan_session_effects("set local App.X to 1").custom,
            vec!["app.x"]
        );
        assert_eq!(
            scan_session_effects("RESET \"my.Name\"").custom,
            vec!["my.Name"]
        );
        assert_eq!(
            scan_session_effects("select set_config( 'a.b', $1, false)").custom,
            vec!["a.b"]
        );
        assert!(scan_session_effects("SET search_path = x")
            .custom
            .is_empty());
        assert!(scan_session_effects("DISCARD ALL").statements);
    }
}
