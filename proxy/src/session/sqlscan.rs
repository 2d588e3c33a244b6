//! Cheap scans of statement text, without parsing: what a statement may do to the server's
//! session (settings, prepared statements, temporary objects), and whether it is a plain query.
//! They skip comments, string literals, dollar quotes and quoted identifiers, and err on the
//! side of "it may": a false positive costs one query at release.

/// Could this statement text change session settings, server-side prepared statements or
/// temporary objects? Looks at the first keyword of each statement (outside comments, strings
/// and quoted identifiers), and for `set_config`, `pg_settings` and `pg_temp` anywhere, quoted
/// or not. Conservative: a false positive costs one extra query when the server is released.
/// What it cannot see: settings changed by server-side code (functions, triggers) that the
/// text does not name.
pub fn scan_session_effects(sql: &str) -> SessionEffects {
    let b = sql.as_bytes();
    let mut fx = SessionEffects::default();
    // Every word the scan acts on contains one of these (`&"` starts a Unicode-escaped
    // identifier, U&"…", which can spell any name): most statements are done after one cheap
    // pass. The words after it draw sequence values: `nextval`/`setval` themselves, and the
    // statements that may fill a column default (serial, identity) with `nextval`; then
    // `currval`, which reads one.
    const WORDS: Keywords = Keywords::new(EFFECT_WORDS);
    const STATE_WORDS: u32 = (1 << 5) - 1;
    const UNICODE_IDENT: u32 = 1 << 4;
    const SEQUENCE_WORDS: u32 = ((1 << 11) - 1) & !STATE_WORDS;
    const CURRVAL: u32 = 1 << 11;
    let hits = WORDS.hits(b);
    // Anywhere, quoted or in a comment too: a false positive costs a `DISCARD SEQUENCES` sent
    // ahead of a later `currval`.
    fx.sequences = hits & SEQUENCE_WORDS != 0;
    fx.reads_sequences = hits & CURRVAL != 0;
    fx.draws = fx.sequences && names_a_draw(b);
    if hits & STATE_WORDS == 0 {
        return fx;
    }
    // (`setval` contains `set`.)
    if !fx.sequences && find_all_ignore_case(b, b"setval").next().is_some() {
        fx.sequences = true;
        fx.draws = names_a_draw(b);
    }
    if hits & UNICODE_IDENT != 0 && unicode_identifier(b) {
        fx.settings = true;
        fx.temp = true;
        fx.reseeds = true;
        fx.sequences = true;
        fx.reads_sequences = true;
        fx.draws = names_a_draw(b);
    }
    // Anywhere, even quoted ("set_config"(…)) or in a comment: a call cannot hide from this.
    for at in find_all_ignore_case(b, b"set_config") {
        fx.settings = true;
        let after = at + b"set_config".len();
        let after = if b.get(after) == Some(&b'"') {
            after + 1
        } else {
            after
        };
        fx.custom.extend(custom_name_in_call(b, after));
    }
    if find_all_ignore_case(b, b"pg_settings").next().is_some() {
        // UPDATE pg_settings SET … calls set_config through the view's rule.
        fx.settings = true;
    }
    if find_all_ignore_case(b, b"pg_temp").next().is_some() {
        fx.temp = true;
    }
    // setseed(…), quoted or not, or `seed` in a statement that changes settings (SET seed,
    // set_config('seed', …), pg_settings, a Unicode-escaped name): a false positive costs one
    // server connection.
    fx.reseeds |= find_all_ignore_case(b, b"setseed").next().is_some();
    let mut previous: &[u8] = b"";
    visit_words(b, |word, at_start, end| {
        if at_start {
            if word.eq_ignore_ascii_case(b"set") || word.eq_ignore_ascii_case(b"reset") {
                fx.settings = true;
                fx.custom.extend(custom_name_after(b, end));
            }
            if word.eq_ignore_ascii_case(b"discard") {
                fx.settings = true;
                fx.statements = true;
                fx.temp = true;
            }
            if word.eq_ignore_ascii_case(b"deallocate") {
                fx.statements = true;
            }
        }
        // CREATE [LOCAL|GLOBAL] TEMP[ORARY] …, CREATE OR REPLACE TEMP VIEW, SELECT … INTO TEMP.
        if (word.eq_ignore_ascii_case(b"temp") || word.eq_ignore_ascii_case(b"temporary"))
            && [&b"create"[..], b"local", b"global", b"replace", b"into"]
                .iter()
                .any(|w| previous.eq_ignore_ascii_case(w))
        {
            fx.temp = true;
        }
        previous = word;
    });
    fx.reseeds |= fx.settings && find_all_ignore_case(b, b"seed").next().is_some();
    fx
}

/// The words [`scan_session_effects`] looks for first: text without any of them has no
/// effect. (The session's screening looks for them in the same pass as its own words.)
pub(crate) const EFFECT_WORDS: &[&[u8]] = &[
    b"set",
    b"discard",
    b"deallocate",
    b"temp",
    b"&\"",
    b"nextval",
    b"insert",
    b"merge",
    b"copy",
    b"default",
    b"alter",
    b"currval",
];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionEffects {
    pub settings: bool,
    pub statements: bool,
    /// It may create temporary tables, views or sequences (the server must drop them before
    /// another client uses it).
    pub temp: bool,
    /// Custom (dotted) setting names named by SET/RESET or a set_config literal.
    pub custom: Vec<String>,
    /// It may reseed `random()` (`setseed`, `SET seed`): the backend's sequence is then
    /// predictable, and only a new backend makes it unknown again.
    pub reseeds: bool,
    /// It may draw a sequence value (`nextval`, `setval`, a serial or identity default):
    /// `currval` on that server would then answer another client with it.
    pub sequences: bool,
    /// It may read one (`currval`; see [`may_read_sequences`]).
    pub reads_sequences: bool,
    /// It may draw one, and names the statement or function that does as a word of its own
    /// (not inside another name such as `inserted_at`, a literal or a comment): a `currval`
    /// after it may read the client's own value (see [`names_a_draw`]).
    pub draws: bool,
}

/// Does `b` name `nextval`, `setval`, `INSERT`, `MERGE`, `COPY`, `DEFAULT` or `ALTER` as a
/// keyword or name outside comments and literals? Text the word scan may misread counts as
/// naming one. (A quoted `"nextval"` does not: its `currval` then fails with 55000 in a later
/// segment, rather than a mere mention letting another client's value through.)
fn names_a_draw(b: &[u8]) -> bool {
    const DRAWS: &[&[u8]] = &[
        b"nextval", b"setval", b"insert", b"merge", b"copy", b"default", b"alter",
    ];
    // Most draws are a statement that starts with its keyword: no need to walk the text.
    let start = b.trim_ascii_start();
    let first_word = start
        .iter()
        .position(|&c| !is_ident(c))
        .map_or(start, |e| &start[..e]);
    if [&b"insert"[..], b"merge", b"copy"]
        .iter()
        .any(|w| first_word.eq_ignore_ascii_case(w))
    {
        return true;
    }
    if misreadable(b) {
        return true;
    }
    let mut found = false;
    visit_words(b, |word, _, _| {
        found |= DRAWS.iter().any(|d| word.eq_ignore_ascii_case(d));
    });
    found
}

/// Could this statement text (or message body) read a sequence value drawn earlier in the
/// server's session: does it name `currval`, quoted, commented or not, or hold a
/// Unicode-escaped identifier? (`lastval` is refused in transaction mode.)
pub fn may_read_sequences(b: &[u8]) -> bool {
    find_all_ignore_case(b, b"currval").next().is_some() || unicode_identifier(b)
}

/// What running a statement may leave on the server's session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lasting {
    pub settings: bool,
    pub temp: bool,
    pub reseeds: bool,
    pub sequences: bool,
    pub reads_sequences: bool,
    pub draws: bool,
}

/// Positions of `pat` (ASCII, lower case) in `b`, ignoring ASCII case.
fn find_all_ignore_case<'a>(b: &'a [u8], pat: &'static [u8]) -> impl Iterator<Item = usize> + 'a {
    b.windows(pat.len())
        .enumerate()
        .filter(move |(_, w)| w.eq_ignore_ascii_case(pat))
        .map(|(i, _)| i)
}

/// Does `b` contain a Unicode-escaped identifier (`U&"…"`)?
fn unicode_identifier(b: &[u8]) -> bool {
    find_all_ignore_case(b, b"u&\"").next().is_some()
}

/// Calls `f(word, first_in_statement, end)` for every keyword or identifier outside comments,
/// string literals, dollar quotes and quoted identifiers.
fn visit_words<'a>(b: &'a [u8], mut f: impl FnMut(&'a [u8], bool, usize)) {
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

    /// Forms that reach set_config or create temporary objects without the plain keywords.
    #[test]
    fn detects_disguised_setting_changes_and_temporary_objects() {
        let settings = |s: &str| scan_session_effects(s).settings;
        assert!(settings("SELECT \"set_config\"('app.t', 'x', false)"));
        assert!(settings("SELECT pg_catalog.\"set_config\"('a','b',false)"));
        assert!(settings("SELECT U&\"\\0073et_config\"('a','b',false)"));
        assert!(settings(
            "UPDATE pg_settings SET setting = '1' WHERE name = 'statement_timeout'"
        ));
        assert_eq!(
            scan_session_effects("SELECT \"set_config\"('App.T', 'x', false)").custom,
            vec!["app.t"]
        );
        let temp = |s: &str| scan_session_effects(s).temp;
        assert!(temp("CREATE TEMP TABLE t (a int)"));
        assert!(temp("create local temporary table t (a int)"));
        assert!(temp("CREATE OR REPLACE TEMP VIEW v AS SELECT 1"));
        assert!(temp("SELECT * INTO TEMP t FROM x"));
        assert!(temp("CREATE TABLE pg_temp.t (a int)"));
        assert!(temp("CREATE TABLE \"pg_temp\".t (a int)"));
        assert!(temp("DISCARD TEMP"));
        assert!(!temp("SELECT temp FROM readings WHERE temp > $1"));
        assert!(!temp("INSERT INTO readings (temp) VALUES ($1)"));
        assert!(!settings("SELECT temp FROM readings WHERE temp > $1"));
    }

    #[test]
    fn detects_reseeding() {
        let sequences = |s: &str| scan_session_effects(s).sequences;
        assert!(sequences("SELECT nextval('orders_id_seq')"));
        assert!(sequences("SELECT \"setval\"('s', 1)"));
        assert!(sequences("insert into orders (tenant_id) values ($1)"));
        assert!(sequences("WITH x AS (SELECT 1) MERGE INTO t USING x ON true WHEN NOT MATCHED THEN INSERT DEFAULT VALUES"));
        assert!(sequences("COPY orders (tenant_id) FROM STDIN"));
        assert!(sequences("UPDATE t SET id = DEFAULT"));
        assert!(sequences("ALTER TABLE t ADD COLUMN id serial"));
        assert!(sequences("SELECT U&\"\\006Eextval\"('s')"));
        assert!(!sequences(
            "SELECT currval('s'), id FROM orders WHERE tenant_id = $1"
        ));
        assert!(!sequences("UPDATE orders SET note = $1 WHERE id = $2"));
        let draws = |s: &str| scan_session_effects(s).draws;
        assert!(draws("insert into orders (tenant_id) values ($1)"));
        assert!(draws("SELECT setval('reuse_seq', 41)"));
        assert!(draws("UPDATE t SET id = DEFAULT"));
        assert!(!draws("SELECT now() AS inserted_at, 1 AS default_rank"));
        assert!(!draws("SELECT 'insert' /* nextval */ -- copy"));
        assert!(sequences("SELECT now() AS inserted_at"));
        let reads = |s: &str| scan_session_effects(s).reads_sequences;
        assert!(reads("SELECT currval('s')"));
        assert!(reads("SELECT \"CURRVAL\"('s')"));
        assert!(reads("SELECT U&\"\\0063urrval\"('s')"));
        assert!(!reads("SELECT nextval('s')"));
        assert!(may_read_sequences(b"SELECT pg_catalog.currval($1)"));
        assert!(!may_read_sequences(b"SELECT nextval($1)"));
        let reseeds = |s: &str| scan_session_effects(s).reseeds;
        assert!(reseeds("SELECT setseed(0.5)"));
        assert!(reseeds("SELECT \"setseed\"(0.5)"));
        assert!(reseeds("SELECT pg_catalog.SETSEED($1)"));
        assert!(reseeds("SET seed = 0.5"));
        assert!(reseeds("set session seed to 0.5"));
        assert!(reseeds("SELECT set_config('seed', '0.5', false)"));
        assert!(reseeds("SELECT U&\"\\0073etseed\"(0.5)"));
        assert!(!reseeds("SELECT seed FROM plants WHERE id = $1"));
        assert!(!reseeds("SET statement_timeout = 0"));
    }
}
