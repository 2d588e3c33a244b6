//! Statement analysis: parse with pg_query, walk the tree, produce a tenant-independent
//! [`Analysis`] that the cache stores.

mod edges;
mod expr;
mod from;
mod names;
mod scope;
mod select;
mod stmt;
mod unnest;
mod write;

use crate::catalog::Catalog;
use crate::config::{Isolation, PolicyConfig};
use crate::decision::{Decision, Rule, StatementKind, Verdict};
use pg_query::protobuf::RawStmt;
use std::collections::BTreeSet;

/// Maximum nesting of queries/expressions the walker follows (pg_query's protobuf decoder
/// already caps the tree depth at ~100 messages; this is a second, explicit bound).
const MAX_DEPTH: usize = 256;

/// A rejection found while walking.
#[derive(Debug)]
pub(crate) struct Reject {
    pub rule: Rule,
    pub reason: String,
    pub hint: Option<String>,
}

pub(crate) type R<T> = Result<T, Reject>;

pub(crate) fn reject<T>(rule: Rule, reason: impl Into<String>) -> R<T> {
    Err(Reject {
        rule,
        reason: reason.into(),
        hint: None,
    })
}

pub(crate) fn reject_hint<T>(
    rule: Rule,
    reason: impl Into<String>,
    hint: impl Into<String>,
) -> R<T> {
    Err(Reject {
        rule,
        reason: reason.into(),
        hint: Some(hint.into()),
    })
}

/// 1-based position as Postgres reports it in errors (`location` is a 0-based byte offset).
pub(crate) fn pos(location: i32) -> i64 {
    i64::from(location) + 1
}

/// Tenant-independent result of analysing one SQL text; what the cache stores.
#[derive(Debug)]
pub(crate) struct Analysis {
    pub decision: std::sync::Arc<Decision>,
    /// The statement reads or writes a tenant table (rejected while the tenant is unknown).
    pub touches_tenant: bool,
    /// Literals compared with a tenant column (only with `require_parameters = false`);
    /// each must equal the session tenant.
    pub tenant_literals: Vec<String>,
    /// Schema isolation: relations referenced with an explicit non-shared schema; each schema
    /// must be the session tenant's (checked after the cache).
    pub qualified_schemas: Vec<SchemaRef>,
    /// Schema isolation: the statement resolves a tenant-schema relation through `search_path`,
    /// so the session's schema must be known.
    pub needs_schema: bool,
    /// Schema isolation: unqualified isolated names the statement uses; each must exist in the
    /// session's own schema (checked after the cache).
    pub isolated_names: Vec<IsolatedName>,
}

/// An unqualified reference to a tenant-schema relation name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IsolatedName {
    pub name: String,
    /// From a string literal (a `regclass` cast or function argument): never echoed.
    pub literal: bool,
    pub location: i32,
}

/// A reference to a tenant-schema relation through an explicit schema name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaRef {
    pub schema: String,
    /// The relation name, checked against the session schema's relations after the cache.
    pub relation: Option<String>,
    /// `relation "schema.name"` / `type "schema.name"` when the name is an identifier of the
    /// statement; `None` when it comes from a string literal (a `regclass` cast or a function
    /// argument), whose text is never echoed.
    pub display: Option<String>,
    pub location: i32,
}

/// Walk state shared by all analysis functions.
pub(crate) struct Cx<'c> {
    pub cfg: &'c PolicyConfig,
    pub cat: &'c Catalog,
    pub tenant_params: BTreeSet<usize>,
    /// Array parameters every element of which must be the tenant (see
    /// [`crate::Decision::tenant_array_params`]).
    pub tenant_array_params: Vec<crate::TenantArray>,
    pub tenant_literals: Vec<String>,
    pub touches_tenant: bool,
    pub qualified_schemas: Vec<SchemaRef>,
    pub isolated_names: Vec<IsolatedName>,
    /// A relation of the tenant's schema/database was referenced (isolated kind).
    pub touches_isolated: bool,
    /// Relations named so far: some in `pg_catalog`/`information_schema`, some elsewhere.
    pub reads_catalog: bool,
    pub reads_other: bool,
    /// Second pass over a statement whose first pass found only a literal: literals pass, and
    /// the result counts only if the statement reads nothing but system catalogs.
    pub catalog_literals: bool,
    /// Analysing an `IN (SELECT …)` subquery on a trial basis (no nested trials: linear cost).
    pub trial: bool,
    depth: usize,
}

impl<'c> Cx<'c> {
    pub fn new(cfg: &'c PolicyConfig, cat: &'c Catalog) -> Self {
        Self {
            cfg,
            cat,
            tenant_params: BTreeSet::new(),
            tenant_array_params: Default::default(),
            tenant_literals: Vec::new(),
            touches_tenant: false,
            qualified_schemas: Vec::new(),
            isolated_names: Vec::new(),
            touches_isolated: false,
            reads_catalog: false,
            reads_other: false,
            catalog_literals: false,
            trial: false,
            depth: 0,
        }
    }

    /// A relation of the tenant's own schema/database is read or written.
    pub fn note_isolated(&mut self) {
        self.touches_tenant = true;
        self.touches_isolated = true;
    }

    /// A tenant-schema relation named without a schema (must exist in the session's schema).
    pub fn note_unqualified(&mut self, name: &str, literal: bool, location: i32) {
        self.note_isolated();
        if !self
            .isolated_names
            .iter()
            .any(|n| n.name == name && n.literal == literal)
        {
            self.isolated_names.push(IsolatedName {
                name: name.to_owned(),
                literal,
                location,
            });
        }
    }

    /// A tenant-schema relation named with an explicit schema (checked after the cache).
    pub fn note_qualified(
        &mut self,
        schema: &str,
        relation: Option<&str>,
        display: Option<String>,
        location: i32,
    ) {
        self.note_isolated();
        let r = SchemaRef {
            schema: schema.to_owned(),
            relation: relation.map(str::to_owned),
            display,
            location,
        };
        if !self.qualified_schemas.contains(&r) {
            self.qualified_schemas.push(r);
        }
    }

    pub fn isolation(&self) -> Isolation {
        self.cfg.isolation
    }

    pub fn is_shared_schema(&self, schema: &str) -> bool {
        self.cfg.shared_schemas.iter().any(|s| s == schema)
    }

    /// A schema of a schema-isolated tenant (from the catalog). The shared schemas and the
    /// system schemas never are, whatever the configured patterns say.
    pub fn is_private_schema(&self, schema: &str) -> bool {
        !matches!(schema, "pg_catalog" | "information_schema")
            && !self.is_shared_schema(schema)
            && self.cat.is_private_schema(schema)
    }

    /// Enter one nesting level; rejects `too-complex` past [`MAX_DEPTH`].
    pub fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return reject(
                Rule::TooComplex,
                format!("statement nesting exceeds {MAX_DEPTH} levels"),
            );
        }
        Ok(())
    }

    pub fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    pub fn is_tenant_setting(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.cfg.tenant_setting)
    }
}

/// Analyse one SQL text. Never panics; every failure is a rejecting [`Analysis`].
pub(crate) fn analyze(sql: &str, cfg: &PolicyConfig, cat: &Catalog) -> Analysis {
    if sql.len() > cfg.max_query_length {
        let reason = format!(
            "statement is {} bytes, longer than max_query_length ({})",
            sql.len(),
            cfg.max_query_length
        );
        return early(Rule::TooComplex, reason);
    }
    if sql.contains('\0') {
        return early(Rule::SyntaxError, "statement contains a NUL byte".into());
    }
    let parsed = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(p) => p,
        Err(e) => return parse_failure(&e.to_string()),
    };
    let mut cx = Cx::new(cfg, cat);
    let mut result = walk_statements(&mut cx, &parsed.protobuf.stmts);
    if matches!(&result, Err((r, _)) if r.rule == Rule::LiteralNotParameter) {
        // Driver and ORM introspection (Rails' type map, pgjdbc metadata, asyncpg, Npgsql)
        // inlines type names and kinds: a statement that reads only system catalogs carries
        // no tenant data in its literals.
        let mut second = Cx::new(cfg, cat);
        second.catalog_literals = true;
        let again = walk_statements(&mut second, &parsed.protobuf.stmts);
        if again.is_ok() && second.reads_catalog && !second.reads_other {
            (cx, result) = (second, again);
        }
    }
    let fingerprint = pg_query::fingerprint(
        sql,
        pg_query::ParserOptions::DEFAULT,
        pg_query::FingerprintOptions::DEFAULT,
    )
    .map(|f| f.hex)
    .unwrap_or_default();
    let normalized = pg_query::normalize(sql).unwrap_or_default();
    let decision = match result {
        Ok(statements) => Decision {
            verdict: Verdict::Allow,
            rule: Rule::Allowed,
            reason: "allowed".into(),
            hint: None,
            sqlstate: Rule::Allowed.sqlstate(),
            fingerprint,
            normalized,
            tenant_params: cx.tenant_params.iter().copied().collect(),
            tenant_array_params: cx.tenant_array_params.clone(),
            statements,
        },
        Err((r, statements)) => Decision {
            fingerprint,
            normalized,
            statements,
            ..Decision::reject(r.rule, r.reason, r.hint)
        },
    };
    Analysis {
        decision: std::sync::Arc::new(decision),
        touches_tenant: cx.touches_tenant,
        tenant_literals: cx.tenant_literals,
        qualified_schemas: cx.qualified_schemas,
        needs_schema: cfg.isolation == Isolation::Schema && cx.touches_isolated,
        isolated_names: cx.isolated_names,
    }
}

fn early(rule: Rule, reason: String) -> Analysis {
    Analysis {
        decision: std::sync::Arc::new(Decision::reject(rule, reason, None)),
        touches_tenant: false,
        tenant_literals: Vec::new(),
        qualified_schemas: Vec::new(),
        needs_schema: false,
        isolated_names: Vec::new(),
    }
}

/// Map a parser error to `too-complex` (depth/size limits) or `syntax-error`. The message is
/// cut before `at or near "…"` so that no query text (and no literal) reaches the client/audit.
fn parse_failure(msg: &str) -> Analysis {
    let lower = msg.to_ascii_lowercase();
    let deep = [
        "stack depth",
        "nested too deeply",
        "memory exhausted",
        "recursion limit",
        "too many",
    ];
    if deep.iter().any(|d| lower.contains(d)) {
        return early(
            Rule::TooComplex,
            "statement is nested too deeply to analyze".into(),
        );
    }
    let msg = msg.strip_prefix("Invalid statement: ").unwrap_or(msg);
    let msg = msg.split(" at or near").next().unwrap_or(msg);
    let msg = if lower.contains("decod") {
        "parse tree could not be decoded"
    } else {
        msg
    };
    let msg: String = msg.chars().take(120).collect();
    early(Rule::SyntaxError, format!("syntax error: {msg}"))
}

type StmtErr = (Reject, Vec<StatementKind>);

fn walk_statements(cx: &mut Cx, stmts: &[RawStmt]) -> Result<Vec<StatementKind>, StmtErr> {
    if stmts.len() > 1 && !cx.cfg.allow_multi_statement {
        let kinds = stmts
            .iter()
            .map(|s| stmt::kind_of(s.stmt.as_deref()))
            .collect();
        let reason = format!(
            "{} statements in one query string; send one statement per query",
            stmts.len()
        );
        return Err((
            Reject {
                rule: Rule::MultiStatement,
                reason,
                hint: Some("use the extended protocol or separate queries".into()),
            },
            kinds,
        ));
    }
    let mut kinds = Vec::with_capacity(stmts.len());
    for raw in stmts {
        match stmt::statement(cx, raw.stmt.as_deref()) {
            Ok(k) => kinds.push(k),
            Err(r) => {
                kinds.push(stmt::kind_of(raw.stmt.as_deref()));
                return Err((r, kinds));
            }
        }
    }
    Ok(kinds)
}
