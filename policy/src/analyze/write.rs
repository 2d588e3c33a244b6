//! INSERT / UPDATE / DELETE / MERGE.

use super::edges::equality_edges;
use super::expr::{self, walk, walk_all, walk_opt, Ctx};
use super::scope::{Deriv, Edge, Entry, EntryKind, Env, Scope, TenantValue, Term};
use super::select::{
    finish_from, from_edges, from_item, relation_entry, select, solve, values_tail, with_clause,
    FromItems,
};
use super::{pos, reject, reject_hint, Cx, R};
use crate::decision::Rule;
use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::{
    DeleteStmt, InsertStmt, MergeMatchKind, MergeStmt, Node, OnConflictAction, OnConflictClause,
    RangeVar, ReturningClause, UpdateStmt,
};

/// The written relation must be a tenant table (returns its entry and tenant column) or, in
/// schema/database isolation, a relation of the tenant's own schema/database (no tenant column).
fn target_entry(
    cx: &mut Cx,
    rv: Option<&RangeVar>,
    env: &Env,
    verb: &str,
) -> R<(Entry, Option<String>)> {
    let Some(rv) = rv else {
        return reject(Rule::TooComplex, format!("{verb} without target relation"));
    };
    let entry = relation_entry(cx, rv, env)?;
    match &entry.kind {
        EntryKind::Tenant { column, .. } => {
            let col = column.clone();
            Ok((entry, Some(col)))
        }
        EntryKind::Isolated => Ok((entry, None)),
        _ => reject(
            Rule::SharedTableWrite,
            format!(
                "{verb} on \"{}\" (at position {}) writes a relation that is not a tenant table",
                rv.relname,
                pos(rv.location)
            ),
        ),
    }
}

fn returning(cx: &mut Cx, r: Option<&ReturningClause>, env: &Env) -> R<()> {
    match r {
        Some(r) => walk_all(cx, &r.exprs, Ctx::Target, env),
        None => Ok(()),
    }
}

/// SET list of UPDATE / ON CONFLICT DO UPDATE / MERGE UPDATE: never the tenant column.
fn assignments(cx: &mut Cx, targets: &[Node], tenant_col: Option<&str>, env: &Env) -> R<()> {
    for t in targets {
        let Some(N::ResTarget(rt)) = t.node.as_ref() else {
            continue;
        };
        if let Some(tenant_col) = tenant_col.filter(|c| rt.name == *c) {
            return reject_hint(
                Rule::TenantColumnWrite,
                format!(
                    "assignment to tenant column \"{tenant_col}\" (at position {}) is not allowed",
                    pos(rt.location)
                ),
                "rows cannot be moved between tenants; remove the column from SET",
            );
        }
        // `SET data[(SELECT …)] = …`: subscripts are expressions too.
        walk_all(cx, &rt.indirection, Ctx::Value, env)?;
        walk_opt(cx, rt.val.as_deref(), Ctx::Value, env)?;
    }
    Ok(())
}

fn with_env<'a>(ctes: &'a [super::scope::CteInfo], empty: &'a Scope, env: &'a Env<'a>) -> Env<'a> {
    Env {
        scope: empty,
        ctes,
        parent: Some(env),
    }
}

pub(crate) fn insert(cx: &mut Cx, i: &InsertStmt, env: &Env) -> R<()> {
    let ctes = with_clause(cx, i.with_clause.as_ref(), Some(env))?;
    let empty = Scope::default();
    let env = with_env(&ctes, &empty, env);
    let (entry, col) = target_entry(cx, i.relation.as_ref(), &env, "INSERT")?;
    let mut cols = Vec::new();
    for c in &i.cols {
        match c.node.as_ref() {
            Some(N::ResTarget(rt)) if rt.indirection.is_empty() => cols.push(rt.name.clone()),
            _ => {
                return reject(
                    Rule::TooComplex,
                    "INSERT column list with subscripts cannot be analyzed",
                )
            }
        }
    }
    let Some(col) = col else {
        return insert_isolated(cx, i, entry, &env);
    };
    let Some(idx) = cols.iter().position(|c| *c == col) else {
        let reason = format!(
            "INSERT into \"{}\" (at position {}) does not set tenant column \"{col}\"",
            entry.name,
            pos(entry.location)
        );
        return reject_hint(
            Rule::TenantFilterMissing,
            reason,
            format!("list {col} in the column list and bind it as $n"),
        );
    };
    match i.select_stmt.as_deref().and_then(|n| n.node.as_ref()) {
        Some(N::SelectStmt(s)) if !s.values_lists.is_empty() && s.from_clause.is_empty() => {
            // `INSERT … WITH x AS (…) VALUES …`: the rows see the VALUES query's CTEs.
            let vctes = with_clause(cx, s.with_clause.as_ref(), Some(&env))?;
            let vempty = Scope::default();
            let env = with_env(&vctes, &vempty, &env);
            values_tail(cx, s, &env)?;
            for (row_no, row) in s.values_lists.iter().enumerate() {
                let Some(N::List(items)) = row.node.as_ref() else {
                    return reject(Rule::TooComplex, "unsupported VALUES row");
                };
                reject_expansion(&items.items, "INSERT … VALUES")?;
                let value = items
                    .items
                    .get(idx)
                    .and_then(|v| expr::tenant_value_term(cx, v));
                if !record_value(cx, value) {
                    let reason = format!("row {} of INSERT into \"{}\" does not set {col} to $n or current_setting('{}')", row_no + 1, entry.name, cx.cfg.tenant_setting);
                    return reject(Rule::TenantFilterMissing, reason);
                }
                walk_all(cx, &items.items, Ctx::Value, &env)?;
            }
        }
        Some(N::SelectStmt(s)) if super::unnest::unnest_call(s).is_some() => {
            if let Some((call, args)) = super::unnest::unnest_call(s) {
                super::unnest::insert_unnest(cx, call, args, cols.len(), idx, &env)?;
            }
        }
        Some(N::SelectStmt(s)) => {
            let out = select(cx, s, Some(&env))?;
            let tenant = out
                .as_ref()
                .and_then(|o| o.get(idx))
                .map(|c| c.tenant.clone())
                .unwrap_or(TenantValue::No);
            let ok = match tenant {
                TenantValue::Proven => true,
                TenantValue::Param(n) => record_value(cx, Some(Term::Param(n))),
                TenantValue::Params(ns) => ns
                    .into_iter()
                    .all(|n| record_value(cx, Some(Term::Param(n)))),
                TenantValue::Literal(v) => record_value(cx, Some(Term::Literal(v))),
                TenantValue::No => false,
            };
            if !ok {
                let reason = format!("INSERT … SELECT into \"{}\" does not provably set {col} to the tenant (list columns explicitly, no *)", entry.name);
                return reject(Rule::TenantFilterMissing, reason);
            }
        }
        _ => {
            return reject(
                Rule::TenantFilterMissing,
                format!(
                    "INSERT into \"{}\" without values does not set {col}",
                    entry.name
                ),
            )
        }
    }
    let mut scope = Scope {
        entries: vec![entry],
        ..Scope::default()
    };
    scope.proven.insert((0, col.clone()));
    if let Some(oc) = i.on_conflict_clause.as_deref() {
        let env2 = Env {
            scope: &scope,
            ctes: &[],
            parent: Some(&env),
        };
        returning(cx, i.returning_clause.as_ref(), &env2)?;
        return on_conflict(cx, oc, scope, Some(&col), &env);
    }
    let env2 = Env {
        scope: &scope,
        ctes: &[],
        parent: Some(&env),
    };
    returning(cx, i.returning_clause.as_ref(), &env2)
}

/// INSERT into a relation of the tenant's own schema/database: no tenant column to set.
fn insert_isolated(cx: &mut Cx, i: &InsertStmt, entry: Entry, env: &Env) -> R<()> {
    match i.select_stmt.as_deref().and_then(|n| n.node.as_ref()) {
        Some(N::SelectStmt(s)) if !s.values_lists.is_empty() && s.from_clause.is_empty() => {
            let vctes = with_clause(cx, s.with_clause.as_ref(), Some(env))?;
            let vempty = Scope::default();
            let env = with_env(&vctes, &vempty, env);
            values_tail(cx, s, &env)?;
            for row in &s.values_lists {
                walk(cx, row, Ctx::Value, &env)?;
            }
        }
        Some(N::SelectStmt(s)) => {
            select(cx, s, Some(env))?;
        }
        Some(_) => return reject(Rule::TooComplex, "unsupported INSERT source"),
        None => {} // DEFAULT VALUES
    }
    let scope = Scope {
        entries: vec![entry],
        ..Scope::default()
    };
    if let Some(oc) = i.on_conflict_clause.as_deref() {
        let env2 = Env {
            scope: &scope,
            ctes: &[],
            parent: Some(env),
        };
        returning(cx, i.returning_clause.as_ref(), &env2)?;
        return on_conflict(cx, oc, scope, None, env);
    }
    let env2 = Env {
        scope: &scope,
        ctes: &[],
        parent: Some(env),
    };
    returning(cx, i.returning_clause.as_ref(), &env2)
}

/// Record a tenant value of an INSERT row; false when it is not a tenant value.
fn record_value(cx: &mut Cx, t: Option<Term>) -> bool {
    match t {
        Some(Term::Param(n)) => {
            cx.tenant_params.insert(n);
            true
        }
        Some(Term::Literal(v)) => {
            cx.tenant_literals.push(v);
            true
        }
        Some(Term::Setting | Term::OuterTenant) => true,
        _ => false,
    }
}

/// DO UPDATE may hit an existing row of another tenant unless the conflict target includes the
/// tenant column or the DO UPDATE WHERE restricts the target to the tenant.
fn on_conflict(
    cx: &mut Cx,
    oc: &OnConflictClause,
    scope: Scope,
    col: Option<&str>,
    env: &Env,
) -> R<()> {
    let mut scope = scope;
    scope.entries.push(Entry {
        name: "excluded".into(),
        schema: None,
        kind: EntryKind::Derived { cols: None },
        location: 0,
        known_cols: vec![],
    });
    if oc.action == OnConflictAction::OnconflictUpdate as i32 {
        if let Some(col) = col {
            on_conflict_keyed(cx, oc, &scope, col, env)?;
        }
        let env2 = Env {
            scope: &scope,
            ctes: &[],
            parent: Some(env),
        };
        assignments(cx, &oc.target_list, col, &env2)?;
        walk_opt(cx, oc.where_clause.as_deref(), Ctx::Predicate, &env2)?;
    }
    Ok(())
}

/// Row isolation: DO UPDATE must be restricted to the tenant's rows.
fn on_conflict_keyed(
    cx: &mut Cx,
    oc: &OnConflictClause,
    scope: &Scope,
    col: &str,
    env: &Env,
) -> R<()> {
    let keyed = oc.infer.as_ref().is_some_and(|inf| {
        inf.index_elems
            .iter()
            .any(|e| matches!(e.node.as_ref(), Some(N::IndexElem(ie)) if ie.name == col))
    });
    if !keyed {
        let mut check = Scope {
            entries: scope.entries.clone(),
            ..Scope::default()
        };
        let mut edges = Vec::new();
        if let Some(w) = oc.where_clause.as_deref() {
            let e = Env {
                scope: &check,
                ctes: &[],
                parent: Some(env),
            };
            equality_edges(cx, w, &e, None, &Deriv::Any, &mut edges);
        }
        check.solve(cx, &edges);
        // The `$n` that proves it is a tenant value: the Bind check must see it.
        check.record_tenant_values(cx, &edges);
        if !check.entry_constrained(0) {
            return reject_hint(
                Rule::TenantFilterMissing,
                format!(
                    "ON CONFLICT DO UPDATE (at position {}) could update another tenant's row",
                    pos(oc.location)
                ),
                format!("include {col} in the conflict target, e.g. ON CONFLICT ({col}, id)"),
            );
        }
    }
    Ok(())
}

pub(crate) fn update(cx: &mut Cx, u: &UpdateStmt, env: &Env) -> R<()> {
    let ctes = with_clause(cx, u.with_clause.as_ref(), Some(env))?;
    let empty = Scope::default();
    let env = with_env(&ctes, &empty, env);
    let (entry, col) = target_entry(cx, u.relation.as_ref(), &env, "UPDATE")?;
    let mut items = FromItems::default();
    items.scope.entries.push(entry);
    for f in &u.from_clause {
        from_item(cx, f, &mut items, &env)?;
    }
    let scope = solve_with_where(cx, &items, u.where_clause.as_deref(), &env)?;
    let env2 = Env {
        scope: &scope,
        ctes: &[],
        parent: Some(&env),
    };
    finish_from(cx, &items.quals, &items.deferred, &env2)?;
    assignments(cx, &u.target_list, col.as_deref(), &env2)?;
    walk_opt(cx, u.where_clause.as_deref(), Ctx::Predicate, &env2)?;
    returning(cx, u.returning_clause.as_ref(), &env2)
}

pub(crate) fn delete(cx: &mut Cx, d: &DeleteStmt, env: &Env) -> R<()> {
    let ctes = with_clause(cx, d.with_clause.as_ref(), Some(env))?;
    let empty = Scope::default();
    let env = with_env(&ctes, &empty, env);
    let (entry, _) = target_entry(cx, d.relation.as_ref(), &env, "DELETE")?;
    let mut items = FromItems::default();
    items.scope.entries.push(entry);
    for f in &d.using_clause {
        from_item(cx, f, &mut items, &env)?;
    }
    let scope = solve_with_where(cx, &items, d.where_clause.as_deref(), &env)?;
    let env2 = Env {
        scope: &scope,
        ctes: &[],
        parent: Some(&env),
    };
    finish_from(cx, &items.quals, &items.deferred, &env2)?;
    walk_opt(cx, d.where_clause.as_deref(), Ctx::Predicate, &env2)?;
    returning(cx, d.returning_clause.as_ref(), &env2)
}

fn solve_with_where(cx: &mut Cx, items: &FromItems, pred: Option<&Node>, env: &Env) -> R<Scope> {
    let mut edges = from_edges(cx, items, env);
    let scope_env = Env {
        scope: &items.scope,
        ctes: &[],
        parent: Some(env),
    };
    if let Some(w) = pred {
        equality_edges(cx, w, &scope_env, None, &Deriv::Any, &mut edges);
        expr::semijoin_edges(cx, w, &scope_env, &mut edges);
    }
    let scope = Scope::with_entries_of(&items.scope);
    solve(cx, scope, &edges)
}

pub(crate) fn merge(cx: &mut Cx, m: &MergeStmt, env: &Env) -> R<()> {
    let ctes = with_clause(cx, m.with_clause.as_ref(), Some(env))?;
    let empty = Scope::default();
    let env = with_env(&ctes, &empty, env);
    let (entry, col) = target_entry(cx, m.relation.as_ref(), &env, "MERGE")?;
    let clauses: Vec<&pg_query::protobuf::MergeWhenClause> = m
        .merge_when_clauses
        .iter()
        .filter_map(|c| {
            if let Some(N::MergeWhenClause(w)) = c.node.as_ref() {
                Some(w.as_ref())
            } else {
                None
            }
        })
        .collect();
    if clauses
        .iter()
        .any(|c| c.match_kind == MergeMatchKind::MergeWhenNotMatchedBySource as i32)
    {
        return reject(Rule::TooComplex, "MERGE … WHEN NOT MATCHED BY SOURCE acts on target rows outside the join and cannot be verified");
    }
    let inserts = clauses
        .iter()
        .any(|c| c.match_kind == MergeMatchKind::MergeWhenNotMatchedByTarget as i32);
    let mut items = FromItems::default();
    items.scope.entries.push(entry);
    let Some(src) = m.source_relation.as_deref() else {
        return reject(Rule::TooComplex, "MERGE without source");
    };
    let source_ids = from_item(cx, src, &mut items, &env)?;
    let mut edges: Vec<Edge> = from_edges(cx, &items, &env);
    if let Some(on) = m.join_condition.as_deref() {
        // Unmatched source rows are inserted, so with WHEN NOT MATCHED the ON clause proves
        // nothing about the source.
        let deriv = if inserts {
            Deriv::Only(vec![0])
        } else {
            Deriv::Any
        };
        let scope_env = Env {
            scope: &items.scope,
            ctes: &[],
            parent: Some(&env),
        };
        equality_edges(cx, on, &scope_env, None, &deriv, &mut edges);
    }
    let scope = Scope::with_entries_of(&items.scope);
    let scope = solve(cx, scope, &edges)?;
    let env2 = Env {
        scope: &scope,
        ctes: &[],
        parent: Some(&env),
    };
    finish_from(cx, &items.quals, &items.deferred, &env2)?;
    walk_opt(cx, m.join_condition.as_deref(), Ctx::Predicate, &env2)?;
    for c in clauses {
        walk_opt(cx, c.condition.as_deref(), Ctx::Predicate, &env2)?;
        if c.match_kind == MergeMatchKind::MergeWhenNotMatchedByTarget as i32 {
            merge_insert(cx, c, col.as_deref(), &env2, &source_ids)?;
        } else {
            assignments(cx, &c.target_list, col.as_deref(), &env2)?;
        }
    }
    returning(cx, m.returning_clause.as_ref(), &env2)
}

fn merge_insert(
    cx: &mut Cx,
    c: &pg_query::protobuf::MergeWhenClause,
    col: Option<&str>,
    env: &Env,
    source_ids: &[usize],
) -> R<()> {
    // `INSERT (data[(SELECT …)], …)`: subscripts are expressions too.
    for t in &c.target_list {
        if let Some(N::ResTarget(rt)) = t.node.as_ref() {
            walk_all(cx, &rt.indirection, Ctx::Value, env)?;
        }
    }
    let Some(col) = col else {
        // The tenant's own relation: nothing to prove about the inserted row.
        return walk_all(cx, &c.values, Ctx::Value, env);
    };
    let names: Vec<&str> = c
        .target_list
        .iter()
        .filter_map(|t| {
            if let Some(N::ResTarget(rt)) = t.node.as_ref() {
                Some(rt.name.as_str())
            } else {
                None
            }
        })
        .collect();
    let Some(idx) = names.iter().position(|n| *n == col) else {
        return reject(
            Rule::TenantFilterMissing,
            format!("MERGE … INSERT does not set tenant column \"{col}\""),
        );
    };
    reject_expansion(&c.values, "MERGE … INSERT")?;
    let value = c.values.get(idx);
    let ok = match value.and_then(|v| expr::term(cx, v, env, Some(source_ids))) {
        Some(Term::Col(id, cname)) => env.scope.is_proven(id, &cname),
        other => record_value(cx, other),
    };
    if !ok {
        return reject(Rule::TenantFilterMissing, format!("MERGE … INSERT does not set \"{col}\" to $n, current_setting or a constrained source column"));
    }
    walk_all(cx, &c.values, Ctx::Value, env)?;
    Ok(())
}

/// Values paired with columns by position must be one per column: a `(…).*` among them shifts
/// the rest, and the value checked for the tenant column would not be the one stored there.
fn reject_expansion(values: &[Node], what: &str) -> R<()> {
    match values.iter().find(|v| expr::expands_columns(v)) {
        Some(_) => reject_hint(
            Rule::TooComplex,
            format!("{what} expands a row with .* among its values"),
            "list the values one by one",
        ),
        None => Ok(()),
    }
}
