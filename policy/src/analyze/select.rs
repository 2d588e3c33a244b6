//! SELECT (and VALUES, set operations, WITH, FROM items).

use super::edges::equality_edges;
use super::expr::{self, str_of, walk, walk_all, walk_opt, Ctx};
use super::scope::{CteInfo, Deriv, Edge, Entry, EntryKind, Env, OutCol, Scope, TenantValue, Term};
use super::{pos, reject, stmt, Cx, R};
// The FROM reading lives in `from`; UPDATE/DELETE/MERGE use it through this module.
pub(crate) use super::from::{finish_from, from_edges, from_item, FromItems};
use crate::catalog::RelKind;
use crate::config::{Isolation, UnknownRelations};
use crate::decision::Rule;
use crate::functions;
use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::{a_const, AConst, Node, RangeVar, SelectStmt, SetOperation, WithClause};

/// Output columns of a query; `None` when they cannot be listed (e.g. `SELECT *`).
pub(crate) type OutCols = Option<Vec<OutCol>>;

/// Analyse a SELECT (any form). `env` is the enclosing query level, if any.
pub(crate) fn select(cx: &mut Cx, s: &SelectStmt, env: Option<&Env>) -> R<OutCols> {
    cx.enter()?;
    let r = select_inner(cx, s, env);
    cx.leave();
    r
}

fn select_inner(cx: &mut Cx, s: &SelectStmt, env: Option<&Env>) -> R<OutCols> {
    if let Some(into) = &s.into_clause {
        let name = into
            .rel
            .as_ref()
            .map(|r| r.relname.clone())
            .unwrap_or_default();
        return reject(
            Rule::ForbiddenStatement,
            format!("SELECT INTO \"{name}\" creates a table and is not allowed"),
        );
    }
    let ctes = with_clause(cx, s.with_clause.as_ref(), env)?;
    let empty = Scope::default();
    let cte_env = Env {
        scope: &empty,
        ctes: &ctes,
        parent: env,
    };
    if s.op != SetOperation::SetopNone as i32 && s.op != SetOperation::Undefined as i32 {
        return set_operation(cx, s, &cte_env);
    }
    if !s.values_lists.is_empty() {
        let cols = values(cx, &s.values_lists, &cte_env)?;
        values_tail(cx, s, &cte_env)?;
        return Ok(cols);
    }
    simple_select(cx, s, &cte_env)
}

/// The ORDER BY, LIMIT and OFFSET of a VALUES query: they may hold subqueries too
/// (`VALUES (1) LIMIT (SELECT count(*) FROM orders WHERE …)` answers for every tenant's rows).
pub(crate) fn values_tail(cx: &mut Cx, s: &SelectStmt, env: &Env) -> R<()> {
    walk_all(cx, &s.sort_clause, Ctx::Order, env)?;
    walk_opt(cx, s.limit_count.as_deref(), Ctx::Limit, env)?;
    walk_opt(cx, s.limit_offset.as_deref(), Ctx::Limit, env)
}

/// A VALUES list (in FROM, a CTE, INSERT … SELECT): its rows, and per column whether every row
/// holds a tenant value. A column that holds the integers 0, 1, 2, … in row order is a row
/// counter (SQLAlchemy's insertmanyvalues sentinel `sen_counter`): its literals are the rows'
/// positions, part of the statement's shape, not data.
fn values(cx: &mut Cx, rows: &[Node], env: &Env) -> R<OutCols> {
    let mut lists = Vec::with_capacity(rows.len());
    for row in rows {
        match row.node.as_ref() {
            Some(N::List(l)) => lists.push(l.items.as_slice()),
            _ => return reject(Rule::TooComplex, "unsupported VALUES row"),
        }
    }
    // `x.*` in a row expands in place: the columns after it are not the ones written.
    let shifted = lists.iter().any(|l| l.iter().any(expr::expands_columns));
    let width = lists.first().map_or(0, |l| l.len());
    let is_counter = |j: usize| {
        lists.iter().enumerate().all(|(i, l)| {
            matches!(l.get(j).and_then(|n| n.node.as_ref()),
                Some(N::AConst(AConst { val: Some(a_const::Val::Ival(v)), .. }))
                    if usize::try_from(v.ival).ok() == Some(i))
        })
    };
    let counters: Vec<bool> = (0..width).map(is_counter).collect();
    for l in &lists {
        for (j, item) in l.iter().enumerate() {
            if !counters.get(j).copied().unwrap_or(false) {
                walk(cx, item, Ctx::Value, env)?;
            }
        }
    }
    if shifted {
        return Ok(None);
    }
    let cols = (0..width)
        .map(|j| {
            let mut params = Vec::new();
            let all =
                lists.iter().all(
                    |l| match l.get(j).and_then(|v| expr::tenant_value_term(cx, v)) {
                        Some(Term::Param(n)) => {
                            params.push(n);
                            true
                        }
                        Some(Term::Setting) => true,
                        _ => false,
                    },
                );
            OutCol {
                name: Some(format!("column{}", j + 1)),
                tenant: match (all, params.is_empty()) {
                    (false, _) => TenantValue::No,
                    (true, true) => TenantValue::Proven,
                    (true, false) => TenantValue::Params(params),
                },
                key: None,
            }
        })
        .collect();
    Ok(Some(cols))
}

fn set_operation(cx: &mut Cx, s: &SelectStmt, env: &Env) -> R<OutCols> {
    let (Some(l), Some(r)) = (s.larg.as_deref(), s.rarg.as_deref()) else {
        return reject(Rule::TooComplex, "set operation without two arms");
    };
    let left = select(cx, l, Some(env))?;
    let right = select(cx, r, Some(env))?;
    walk_all(cx, &s.sort_clause, Ctx::Order, env)?;
    walk_opt(cx, s.limit_count.as_deref(), Ctx::Limit, env)?;
    walk_opt(cx, s.limit_offset.as_deref(), Ctx::Limit, env)?;
    Ok(match (left, right) {
        (Some(l), Some(r)) if l.len() == r.len() => Some(
            l.into_iter()
                .zip(r)
                .map(|(a, b)| OutCol {
                    tenant: if a.tenant == b.tenant {
                        a.tenant
                    } else {
                        TenantValue::No
                    },
                    key: if a.key == b.key { a.key } else { None },
                    name: a.name,
                })
                .collect(),
        ),
        _ => None,
    })
}

/// Analyse the CTEs of a WITH clause in order; each sees the ones before it (and itself when
/// recursive).
pub(crate) fn with_clause(
    cx: &mut Cx,
    w: Option<&WithClause>,
    env: Option<&Env>,
) -> R<Vec<CteInfo>> {
    let mut ctes: Vec<CteInfo> = Vec::new();
    let Some(w) = w else { return Ok(ctes) };
    for (i, node) in w.ctes.iter().enumerate() {
        let Some(N::CommonTableExpr(cte)) = node.node.as_ref() else {
            return reject(Rule::TooComplex, "unsupported WITH item");
        };
        // WITH RECURSIVE: every name of the list is visible in every body, this one and later
        // ones included (a later one may shadow a table this body names). Their rows carry no
        // tenant proof here: each body must stand on its own.
        let visible: Vec<CteInfo>;
        let in_scope = if w.recursive {
            let later = w.ctes[i..].iter().filter_map(|n| match n.node.as_ref() {
                Some(N::CommonTableExpr(c)) => Some(CteInfo {
                    name: c.ctename.clone(),
                    cols: None,
                }),
                _ => None,
            });
            visible = ctes.iter().cloned().chain(later).collect();
            &visible
        } else {
            &ctes
        };
        let empty = Scope::default();
        let inner_env = Env {
            scope: &empty,
            ctes: in_scope,
            parent: env,
        };
        let cols = match cte.ctequery.as_deref().and_then(|n| n.node.as_ref()) {
            Some(N::SelectStmt(s)) => select(cx, s, Some(&inner_env))?,
            Some(other) => {
                stmt::data_modifying(cx, other, &inner_env)?;
                None
            }
            None => None,
        };
        let cols = rename_columns(cols, &cte.aliascolnames);
        ctes.push(CteInfo {
            name: cte.ctename.clone(),
            cols,
        });
    }
    Ok(ctes)
}

pub(crate) fn rename_columns(cols: OutCols, names: &[Node]) -> OutCols {
    let mut cols = cols?;
    for (c, n) in cols.iter_mut().zip(names) {
        c.name = str_of(n).map(str::to_owned);
    }
    if names.len() > cols.len() {
        return None;
    }
    Some(cols)
}

fn simple_select(cx: &mut Cx, s: &SelectStmt, env: &Env) -> R<OutCols> {
    let mut items = FromItems::default();
    for item in &s.from_clause {
        from_item(cx, item, &mut items, env)?;
    }
    items.scope.visible = Some(items.namespace.clone());
    let mut edges = from_edges(cx, &items, env);
    let scope_env = Env {
        scope: &items.scope,
        ctes: &[],
        parent: Some(env),
    };
    if let Some(w) = s.where_clause.as_deref() {
        equality_edges(cx, w, &scope_env, None, &Deriv::Any, &mut edges);
        expr::semijoin_edges(cx, w, &scope_env, &mut edges);
    }
    let scope = solve(cx, items.scope, &edges)?;
    let env2 = Env {
        scope: &scope,
        ctes: &[],
        parent: Some(env),
    };
    finish_from(cx, &items.quals, &items.deferred, &env2)?;
    walk_all(cx, &s.target_list, Ctx::Target, &env2)?;
    walk_opt(cx, s.where_clause.as_deref(), Ctx::Predicate, &env2)?;
    walk_opt(cx, s.having_clause.as_deref(), Ctx::Predicate, &env2)?;
    s.group_clause
        .iter()
        .try_for_each(|n| expr::order_item(cx, Some(n), &env2))?;
    s.distinct_clause
        .iter()
        .try_for_each(|n| expr::order_item(cx, Some(n), &env2))?;
    walk_all(cx, &s.sort_clause, Ctx::Order, &env2)?;
    for w in &s.window_clause {
        if let Some(N::WindowDef(w)) = w.node.as_ref() {
            expr::window(cx, w, &env2)?;
        }
    }
    walk_opt(cx, s.limit_count.as_deref(), Ctx::Limit, &env2)?;
    walk_opt(cx, s.limit_offset.as_deref(), Ctx::Limit, &env2)?;
    Ok(output_columns(cx, &s.target_list, &env2))
}

/// Solve the scope and require every tenant entry to be constrained.
pub(crate) fn solve(cx: &mut Cx, mut scope: Scope, edges: &[Edge]) -> R<Scope> {
    scope.solve(cx, edges);
    scope.require_constrained(cx, edges)?;
    scope.record_tenant_values(cx, edges);
    Ok(scope)
}

pub(crate) fn alias_name(a: Option<&pg_query::protobuf::Alias>) -> Option<String> {
    a.map(|a| a.aliasname.clone())
}

/// Classify a relation reference (CTE, catalog relation, system view) as a scope entry.
pub(crate) fn relation_entry(cx: &mut Cx, rv: &RangeVar, env: &Env) -> R<Entry> {
    let alias = alias_name(rv.alias.as_ref());
    let name = alias.clone().unwrap_or_else(|| rv.relname.clone());
    if rv.schemaname.is_empty() {
        if let Some(cte) = env.find_cte(&rv.relname) {
            let known_cols = cte
                .cols
                .iter()
                .flatten()
                .filter_map(|c| c.name.clone())
                .collect();
            return Ok(Entry {
                name,
                schema: None,
                kind: EntryKind::Derived {
                    cols: cte.cols.clone(),
                },
                location: rv.location,
                known_cols,
            });
        }
    }
    let (kind, resolved) = relation_kind(cx, rv)?;
    let renames = rv.alias.as_ref().is_some_and(|a| !a.colnames.is_empty());
    if renames && matches!(kind, RelKind::Tenant { .. }) {
        // `orders AS o(tenant_id, …)` renames columns positionally: o.tenant_id may not be the
        // tenant column any more.
        return reject(
            Rule::TooComplex,
            format!(
                "column aliases on tenant table \"{}\" (at position {}) are not supported",
                rv.relname,
                pos(rv.location)
            ),
        );
    }
    // The schema by which `schema.rel.col` may name this entry: the written one, else the one
    // the name resolved to (None for a tenant-schema relation found through search_path).
    let schema = match alias {
        Some(_) => None,
        None if !rv.schemaname.is_empty() => Some(rv.schemaname.clone()),
        None if kind == RelKind::Isolated || resolved.is_empty() => None,
        None => Some(resolved.clone()),
    };
    let (kind, known_cols) = match kind {
        RelKind::Tenant { column } => {
            cx.touches_tenant = true;
            let known = cx.cat.known_columns(&resolved, &rv.relname, &column);
            (
                EntryKind::Tenant {
                    schema: resolved,
                    table: rv.relname.clone(),
                    column,
                },
                known,
            )
        }
        RelKind::Isolated => (EntryKind::Isolated, Vec::new()),
        RelKind::Shared | RelKind::Known => (EntryKind::Plain, Vec::new()),
    };
    Ok(Entry {
        name,
        schema,
        kind,
        location: rv.location,
        known_cols,
    })
}

/// Row mode: unqualified names are looked up in `public`.
fn row_schema_of(rv: &RangeVar) -> String {
    if rv.schemaname.is_empty() {
        "public".to_owned()
    } else {
        rv.schemaname.clone()
    }
}

fn display_name(rv: &RangeVar) -> String {
    if rv.schemaname.is_empty() {
        rv.relname.clone()
    } else {
        format!("{}.{}", rv.schemaname, rv.relname)
    }
}

/// `unknown_relations = Allow` makes an unknown relation a readable one (in `schema`), unless
/// `allow` is false.
fn unknown_relation(cx: &Cx, rv: &RangeVar, allow: Option<String>) -> R<(RelKind, String)> {
    if let Some(schema) = allow {
        if cx.cfg.unknown_relations == UnknownRelations::Allow {
            return Ok((RelKind::Known, schema));
        }
    }
    reject(
        Rule::UnknownRelation,
        format!(
            "relation \"{}\" (at position {}) is not in the tenantgate catalog",
            display_name(rv),
            pos(rv.location)
        ),
    )
}

/// Catalog classification of a relation and the schema it resolves to, rejecting
/// session-exposing catalog views and unknown relations. Records tenant-schema references
/// (schema isolation) in `cx`.
pub(crate) fn relation_kind(cx: &mut Cx, rv: &RangeVar) -> R<(RelKind, String)> {
    let r = relation_kind_inner(cx, rv);
    match &r {
        Ok((RelKind::Known, s)) if s == "pg_catalog" || s == "information_schema" => {
            cx.reads_catalog = true;
        }
        _ => cx.reads_other = true,
    }
    r
}

fn relation_kind_inner(cx: &mut Cx, rv: &RangeVar) -> R<(RelKind, String)> {
    let display = display_name(rv);
    let system = rv.schemaname == "pg_catalog"
        || (rv.schemaname.is_empty() && rv.relname.starts_with("pg_"));
    if (system || rv.schemaname.is_empty()) && functions::is_denied_view(&rv.relname) {
        return reject(
            Rule::CatalogView,
            format!(
                "catalog relation \"{display}\" (at position {}) exposes other sessions or tenants",
                pos(rv.location)
            ),
        );
    }
    if !rv.catalogname.is_empty() {
        return reject(
            Rule::UnknownRelation,
            format!(
                "cross-database reference \"{}.{display}\" is not allowed",
                rv.catalogname
            ),
        );
    }
    if rv.schemaname == "pg_catalog" || rv.schemaname == "information_schema" {
        return Ok((RelKind::Known, rv.schemaname.clone()));
    }
    match cx.isolation() {
        Isolation::Row => row_relation(cx, rv, system),
        Isolation::Schema => schema_relation(cx, rv, system),
        Isolation::Database => {
            // Unqualified pg_* names resolve to pg_catalog first (read only); everything
            // else in the tenant's own database is the tenant's.
            if system {
                return Ok((RelKind::Known, "pg_catalog".to_owned()));
            }
            cx.note_isolated();
            Ok((RelKind::Isolated, rv.schemaname.clone()))
        }
    }
}

/// Row isolation: a name qualified with a tenant's private schema is never reachable, whatever
/// the catalog says about it (a tenant-schema table may well have a tenant column).
pub(crate) fn reject_private_schema<T>(what: &str) -> R<T> {
    super::reject_hint(
        Rule::CrossTenantSchema,
        format!("{what} is in a schema-isolated tenant's schema, which row-isolated tenants cannot reach"),
        "use the shared tables (unqualified names resolve to the shared schemas)",
    )
}

fn row_relation(cx: &Cx, rv: &RangeVar, system: bool) -> R<(RelKind, String)> {
    if cx.is_private_schema(&rv.schemaname) {
        return reject_private_schema(&format!(
            "relation \"{}\" (at position {})",
            display_name(rv),
            pos(rv.location)
        ));
    }
    let schema = row_schema_of(rv);
    if rv.schemaname.is_empty() {
        if let Some(found) = row_shared_relation(cx, rv)? {
            return Ok(found);
        }
    }
    // Unqualified pg_* names resolve to pg_catalog first (it is implicitly first in search_path).
    if system && !cx.cat.has_relation(&schema, &rv.relname) {
        return Ok((RelKind::Known, "pg_catalog".to_owned()));
    }
    if let Some(kind) = cx.cat.relation(&schema, &rv.relname) {
        return Ok((kind, schema));
    }
    unknown_relation(cx, rv, Some(schema))
}

/// Row isolation, unqualified name: a session may put the shared schemas in `search_path` in any
/// order (`SET search_path = ref, public`), and the decision is cached for every session, so the
/// name is the relation of whichever shared schema has it — all of them must agree. A name that
/// a tenant table has in more than one shared schema, or a tenant table in one and a read-only
/// relation in another, must be qualified. `None`: no shared schema beyond `public` has it.
fn row_shared_relation(cx: &Cx, rv: &RangeVar) -> R<Option<(RelKind, String)>> {
    let found: Vec<(&String, RelKind)> = cx
        .cfg
        .shared_schemas
        .iter()
        .filter(|s| cx.cat.has_relation(s, &rv.relname))
        .filter_map(|s| cx.cat.relation(s, &rv.relname).map(|k| (s, k)))
        .collect();
    let tenant = |k: &RelKind| matches!(k, RelKind::Tenant { .. });
    match found.as_slice() {
        [] => Ok(None),
        [(s, k)] => Ok(Some((k.clone(), (*s).clone()))),
        [(s, k), ..] if !found.iter().any(|(_, k)| tenant(k)) => {
            Ok(Some((k.clone(), (*s).clone())))
        }
        _ => {
            let schemas: Vec<&str> = found.iter().map(|(s, _)| s.as_str()).collect();
            super::reject_hint(
                Rule::UnknownRelation,
                format!(
                    "relation \"{}\" (at position {}) exists in several shared schemas ({}), as a tenant table in at least one; which one it names depends on search_path",
                    rv.relname,
                    pos(rv.location),
                    schemas.join(", ")
                ),
                format!(
                    "qualify the name: {}",
                    schemas
                        .iter()
                        .map(|s| format!("{s}.{}", rv.relname))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            )
        }
    }
}

/// Schema isolation: search_path is `<tenant schema>, <shared_schemas…>`.
fn schema_relation(cx: &mut Cx, rv: &RangeVar, system: bool) -> R<(RelKind, String)> {
    if rv.schemaname.is_empty() {
        if cx.cat.is_isolated_relation(&rv.relname) {
            cx.note_unqualified(&rv.relname, false, rv.location);
            return Ok((RelKind::Isolated, String::new()));
        }
        let shared = cx
            .cfg
            .shared_schemas
            .iter()
            .find(|s| cx.cat.has_relation(s, &rv.relname));
        if let Some(s) = shared {
            if let Some(kind) = cx.cat.relation(s, &rv.relname) {
                return Ok((kind, s.clone()));
            }
        }
        if system {
            return Ok((RelKind::Known, "pg_catalog".to_owned()));
        }
        if let Some(first) = cx.cfg.shared_schemas.first() {
            // Only with assume_unknown_are_tenant_tables (explain without a database).
            if let Some(kind) = cx.cat.relation(first, &rv.relname) {
                return Ok((kind, first.clone()));
            }
        }
        return unknown_relation(cx, rv, Some(String::new()));
    }
    if cx.is_shared_schema(&rv.schemaname) {
        if let Some(kind) = cx.cat.relation(&rv.schemaname, &rv.relname) {
            return Ok((kind, rv.schemaname.clone()));
        }
        return unknown_relation(cx, rv, Some(rv.schemaname.clone()));
    }
    if cx.is_private_schema(&rv.schemaname) || cx.cat.is_isolated_relation(&rv.relname) {
        cx.note_qualified(
            &rv.schemaname,
            Some(&rv.relname),
            Some(format!("relation \"{}\"", display_name(rv))),
            rv.location,
        );
        return Ok((RelKind::Isolated, rv.schemaname.clone()));
    }
    // A schema that is neither shared nor private nor holds a tenant relation of that name may
    // be another tenant's: never readable, whatever unknown_relations says.
    unknown_relation(cx, rv, None)
}

/// The `$n` a derived column stands for (a subquery's `$1 AS x`, a VALUES column of `$n`s).
fn derived_value(scope: &Scope, id: usize, col: &str) -> TenantValue {
    match scope.entries.get(id).map(|e| &e.kind) {
        Some(EntryKind::Derived { cols: Some(cols) }) => cols
            .iter()
            .find(|c| c.name.as_deref() == Some(col))
            .map(|c| c.tenant.clone())
            .filter(|t| matches!(t, TenantValue::Param(_) | TenantValue::Params(_)))
            .unwrap_or(TenantValue::No),
        _ => TenantValue::No,
    }
}

/// Output columns of a target list and which of them provably carry the tenant.
pub(crate) fn output_columns(cx: &Cx, targets: &[Node], env: &Env) -> OutCols {
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let Some(N::ResTarget(rt)) = t.node.as_ref() else {
            return None;
        };
        let val = rt.val.as_deref()?;
        if expr::expands_columns(val) {
            // Columns by position are unknown from here on.
            return None;
        }
        let mut name = (!rt.name.is_empty()).then(|| rt.name.clone());
        let mut key = None;
        // `p0::VARCHAR` (SQLAlchemy's INSERT … SELECT): a cast that keeps a tenant value intact.
        let val = expr::strip_safe_casts(val);
        let tenant = match val.node.as_ref() {
            Some(N::ColumnRef(c)) => {
                if c.fields
                    .iter()
                    .any(|f| matches!(f.node.as_ref(), Some(N::AStar(_))))
                {
                    return None;
                }
                if name.is_none() {
                    name = c.fields.last().and_then(str_of).map(str::to_owned);
                }
                match expr::term(cx, val, env, None) {
                    Some(Term::Col(id, col)) => {
                        key = env.scope.key_source(&Term::Col(id, col.clone()));
                        if env.scope.is_proven(id, &col) {
                            TenantValue::Proven
                        } else {
                            derived_value(env.scope, id, &col)
                        }
                    }
                    Some(Term::OuterTenant) => TenantValue::Proven,
                    _ => TenantValue::No,
                }
            }
            _ => match expr::tenant_value_term(cx, val) {
                Some(Term::Setting) => TenantValue::Proven,
                Some(Term::Param(n)) => TenantValue::Param(n),
                Some(Term::Literal(v)) => TenantValue::Literal(v),
                _ => TenantValue::No,
            },
        };
        out.push(OutCol { name, tenant, key });
    }
    Some(out)
}
