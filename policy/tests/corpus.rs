//! Table-driven policy corpus: `tests/corpus/*.corpus`.
//!
//! Line format: `<expectation> [flags…] | <sql>` (split at the first `|`), where expectation is `allow` or
//! `reject <rule-id>`. Flags: `tenant=none` (tenant not known), `tenant=<v>` (default
//! `t1`), `params=off` (require_parameters = false), `multi=on`, `listen=on`,
//! `unknown=allow`, `tp=1,2` (exact tenant_params), `schema=<s>|none` (the session's schema).
//! `#` starts a comment line; a line `# isolation: row|schema|database` selects the isolation
//! for the rest of the file:
//! * row (default): `common::catalog()`, tenant `t1`;
//! * schema: `common::schema_catalog()`, shared schemas `public, ref`, tenant `acme` with
//!   schema `tenant_acme`;
//! * database: `common::catalog()`, tenant `acme`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use tenantgate_policy::{Isolation, PolicyConfig, SessionCtx, UnknownRelations, Verdict};

struct Case {
    file: String,
    line: usize,
    expect: String,
    flags: Vec<String>,
    sql: String,
    isolation: Isolation,
}

fn load() -> Vec<Case> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "corpus"))
    {
        let text = fs::read_to_string(f).unwrap();
        let mut isolation = Isolation::Row;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if let Some(mode) = line.trim().strip_prefix("# isolation:") {
                isolation = match mode.trim() {
                    "row" => Isolation::Row,
                    "schema" => Isolation::Schema,
                    "database" => Isolation::Database,
                    other => panic!("{}:{}: unknown isolation {other}", f.display(), i + 1),
                };
                continue;
            }
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (head, sql) = line
                .split_once('|')
                .unwrap_or_else(|| panic!("{}:{}: missing '|'", f.display(), i + 1));
            let sql = sql.strip_prefix(' ').unwrap_or(sql);
            let mut words = head.split_whitespace();
            let verdict = words.next().unwrap();
            let mut expect = verdict.to_owned();
            if verdict == "reject" {
                expect = format!("reject {}", words.next().unwrap());
            }
            cases.push(Case {
                file: f.file_name().unwrap().to_string_lossy().into_owned(),
                line: i + 1,
                expect,
                flags: words.map(str::to_owned).collect(),
                sql: sql.to_owned(),
                isolation,
            });
        }
    }
    cases
}

fn config_for(flags: &[String], isolation: Isolation) -> PolicyConfig {
    let mut cfg = PolicyConfig {
        isolation,
        ..PolicyConfig::default()
    };
    if isolation == Isolation::Schema {
        cfg.shared_schemas = vec!["public".into(), "ref".into()];
    }
    for f in flags {
        match f.as_str() {
            "params=off" => cfg.require_parameters = false,
            "multi=on" => cfg.allow_multi_statement = true,
            "listen=on" => cfg.allow_listen = true,
            "unknown=allow" => cfg.unknown_relations = UnknownRelations::Allow,
            _ => {}
        }
    }
    cfg.allowed_procedures = vec!["refresh_totals".into()];
    cfg
}

#[test]
fn corpus() {
    let cases = load();
    let mut failures = Vec::new();
    for c in &cases {
        let catalog = match c.isolation {
            Isolation::Schema => common::schema_catalog(),
            _ => common::catalog(),
        };
        let policy = tenantgate_policy::Policy::new(config_for(&c.flags, c.isolation), catalog);
        let tenant_flag = c.flags.iter().find_map(|f| f.strip_prefix("tenant="));
        let default_tenant = match c.isolation {
            Isolation::Row => "t1",
            _ => "acme",
        };
        let tenant = match tenant_flag {
            Some("none") => None,
            Some(t) => Some(t),
            None => Some(default_tenant),
        };
        let schema = match c.flags.iter().find_map(|f| f.strip_prefix("schema=")) {
            Some("none") => None,
            Some(s) => Some(s),
            None if c.isolation == Isolation::Schema => Some("tenant_acme"),
            None => None,
        };
        let ctx = SessionCtx { tenant, schema };
        let d = policy.check(&c.sql, &ctx);
        let got = match d.verdict {
            Verdict::Allow => "allow".to_owned(),
            Verdict::Reject => format!("reject {}", d.rule),
        };
        let mut ok = got == c.expect;
        if let Some(tp) = c.flags.iter().find_map(|f| f.strip_prefix("tp=")) {
            let want: Vec<usize> = tp
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            ok &= d.tenant_params == want;
        }
        // A cached second lookup must give the same answer.
        let again = policy.check(&c.sql, &ctx);
        ok &= again.verdict == d.verdict && again.rule == d.rule;
        if d.verdict == Verdict::Reject {
            ok &= !d.reason.is_empty() && d.sqlstate != "00000";
        }
        if !ok {
            failures.push(format!(
                "{}:{}: expected `{}` got `{}` tp={:?}\n    sql: {}\n    reason: {}\n    hint: {:?}",
                c.file, c.line, c.expect, got, d.tenant_params, c.sql, d.reason, d.hint
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 300, "corpus has only {} cases", cases.len());
    eprintln!("corpus: {} cases passed", cases.len());
}
