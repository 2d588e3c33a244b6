//! FROM items: their scope entries, the joins' ON and USING equalities, and what each part of
//! a FROM clause sees by name (see `names`): an ON clause its join's two inputs, a LATERAL item
//! or a function the items to its left, the rest of the query all but what join aliases hide.

use super::edges::equality_edges;
use super::expr::{self, str_of, walk, walk_all, walk_opt, Ctx};
use super::scope::{Deriv, Edge, Entry, EntryKind, Env, Scope, Term};
use super::select::{alias_name, relation_entry, rename_columns, select};
use super::{reject, Cx, R};
use crate::decision::Rule;
use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::{JoinType, Node};

/// Pending work collected while reading FROM.
#[derive(Default)]
pub(crate) struct FromItems<'n> {
    pub scope: Scope,
    /// ON clauses: (predicate, entries visible in that join (its two inputs), derivation rule).
    pub quals: Vec<(&'n Node, Vec<usize>, Deriv)>,
    /// USING columns of joins: (column, left ids, right ids, derivation rule).
    pub using: Vec<(String, Vec<usize>, Vec<usize>, Deriv)>,
    /// LATERAL subqueries, FROM functions and TABLESAMPLE arguments analysed once the scope is
    /// solved, with the entries they see (those to their left; none for TABLESAMPLE).
    pub deferred: Vec<(&'n Node, Vec<usize>)>,
    /// The entries of the FROM items read so far that are visible by name (not hidden by a
    /// join alias): what the rest of the query, and a LATERAL item further right, sees.
    pub namespace: Vec<usize>,
}

/// One FROM item read: all its entries, and those visible by name outside it.
struct Item {
    ids: Vec<usize>,
    visible: Vec<usize>,
}

/// Equalities from ON and USING clauses.
pub(crate) fn from_edges(cx: &Cx, items: &FromItems, env: &Env) -> Vec<Edge> {
    let scope_env = Env {
        scope: &items.scope,
        ctes: &[],
        parent: Some(env),
    };
    let mut edges = Vec::new();
    for (q, visible, deriv) in &items.quals {
        equality_edges(cx, q, &scope_env, Some(visible), deriv, &mut edges);
    }
    for (col, left, right, deriv) in &items.using {
        let find = |ids: &[usize]| -> Option<usize> {
            let hits: Vec<usize> = ids
                .iter()
                .copied()
                .filter(|i| items.scope.entries[*i].known_cols.iter().any(|k| k == col))
                .collect();
            (hits.len() == 1).then(|| hits[0])
        };
        if let (Some(l), Some(r)) = (find(left), find(right)) {
            edges.push(Edge {
                a: Term::Col(l, col.clone()),
                b: Term::Col(r, col.clone()),
                deriv: deriv.clone(),
            });
        }
    }
    edges
}

/// Walk ON clauses, LATERAL subqueries and FROM functions once the scope is known, each with
/// its level restricted to the entries it sees (`names`).
pub(crate) fn finish_from(
    cx: &mut Cx,
    quals: &[(&Node, Vec<usize>, Deriv)],
    deferred: &[(&Node, Vec<usize>)],
    env: &Env,
) -> R<()> {
    for (q, visible, _) in quals {
        let scope = env.scope.restricted(visible);
        let env = Env {
            scope: &scope,
            ctes: env.ctes,
            parent: env.parent,
        };
        walk(cx, q, Ctx::Predicate, &env)?;
    }
    for (node, visible) in deferred {
        let scope = env.scope.restricted(visible);
        let env = &Env {
            scope: &scope,
            ctes: env.ctes,
            parent: env.parent,
        };
        match node.node.as_ref() {
            Some(N::RangeSubselect(rs)) => {
                match rs.subquery.as_deref().and_then(|n| n.node.as_ref()) {
                    Some(N::SelectStmt(s)) => {
                        select(cx, s, Some(env))?;
                    }
                    _ => return reject(Rule::TooComplex, "unsupported LATERAL subquery"),
                }
            }
            Some(N::RangeFunction(rf)) => range_function(cx, rf, env)?,
            Some(N::RangeTableSample(ts)) => {
                walk_all(cx, &ts.args, Ctx::Predicate, env)?;
                walk_opt(cx, ts.repeatable.as_deref(), Ctx::Predicate, env)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn range_function(cx: &mut Cx, rf: &pg_query::protobuf::RangeFunction, env: &Env) -> R<()> {
    column_definitions(cx, &rf.coldeflist)?;
    for f in &rf.functions {
        let items: &[Node] = match f.node.as_ref() {
            Some(N::List(l)) => &l.items,
            _ => std::slice::from_ref(f),
        };
        for item in items {
            match item.node.as_ref() {
                Some(N::FuncCall(_)) => walk(cx, item, Ctx::Predicate, env)?,
                // `ROWS FROM (f() AS (col type, …))`
                Some(N::List(l)) => column_definitions(cx, &l.items)?,
                None => {}
                Some(_) => return reject(Rule::TooComplex, "unsupported function in FROM"),
            }
        }
    }
    Ok(())
}

/// The types of a column definition list (`f() AS t(col type, …)`) are type references.
fn column_definitions(cx: &mut Cx, defs: &[Node]) -> R<()> {
    for d in defs {
        if let Some(N::ColumnDef(c)) = d.node.as_ref() {
            expr::type_name_ref(cx, c.type_name.as_ref())?;
        }
    }
    Ok(())
}

/// Add one FROM item (and, for joins, its children) to the scope; returns the entry ids.
pub(crate) fn from_item<'n>(
    cx: &mut Cx,
    node: &'n Node,
    items: &mut FromItems<'n>,
    env: &Env,
) -> R<Vec<usize>> {
    let left = items.namespace.clone();
    let item = item(cx, node, items, env, &left)?;
    items.namespace.extend(item.visible);
    Ok(item.ids)
}

/// Read one FROM item; `left` are the entries a LATERAL item here sees (the visible entries
/// of the FROM items to its left).
fn item<'n>(
    cx: &mut Cx,
    node: &'n Node,
    items: &mut FromItems<'n>,
    env: &Env,
    left: &[usize],
) -> R<Item> {
    cx.enter()?;
    let r = from_item_inner(cx, node, items, env, left);
    cx.leave();
    r
}

fn push(items: &mut FromItems, e: Entry) -> Item {
    items.scope.entries.push(e);
    let id = items.scope.entries.len() - 1;
    Item {
        ids: vec![id],
        visible: vec![id],
    }
}

fn from_item_inner<'n>(
    cx: &mut Cx,
    node: &'n Node,
    items: &mut FromItems<'n>,
    env: &Env,
    left: &[usize],
) -> R<Item> {
    match node.node.as_ref() {
        Some(N::RangeVar(rv)) => Ok(push(items, relation_entry(cx, rv, env)?)),
        Some(N::RangeSubselect(rs)) => {
            let name = alias_name(rs.alias.as_ref()).unwrap_or_default();
            let cols = if rs.lateral {
                items.deferred.push((node, left.to_vec()));
                None
            } else {
                match rs.subquery.as_deref().and_then(|n| n.node.as_ref()) {
                    Some(N::SelectStmt(s)) => select(cx, s, Some(env))?,
                    _ => return reject(Rule::TooComplex, "unsupported subquery in FROM"),
                }
            };
            let cols = rename_columns(
                cols,
                rs.alias
                    .as_ref()
                    .map(|a| a.colnames.as_slice())
                    .unwrap_or(&[]),
            );
            let known_cols = cols
                .iter()
                .flatten()
                .filter_map(|c| c.name.clone())
                .collect();
            Ok(push(
                items,
                Entry {
                    name,
                    schema: None,
                    kind: EntryKind::Derived { cols },
                    location: 0,
                    known_cols,
                },
            ))
        }
        Some(N::RangeFunction(rf)) => {
            // Functions in FROM are implicitly LATERAL.
            items.deferred.push((node, left.to_vec()));
            let name = alias_name(rf.alias.as_ref()).unwrap_or_else(|| function_rte_name(rf));
            Ok(push(
                items,
                Entry {
                    name,
                    schema: None,
                    kind: EntryKind::Derived { cols: None },
                    location: 0,
                    known_cols: Vec::new(),
                },
            ))
        }
        Some(N::RangeTableSample(ts)) => {
            // Not LATERAL: its arguments see no entry of this level.
            items.deferred.push((node, Vec::new()));
            match ts.relation.as_deref() {
                Some(rel) => item(cx, rel, items, env, left),
                None => reject(Rule::TooComplex, "TABLESAMPLE without relation"),
            }
        }
        Some(N::JoinExpr(j)) => join(cx, j, items, env, left),
        Some(other) => reject(
            Rule::TooComplex,
            format!("unsupported FROM item ({})", expr::node_name(other)),
        ),
        None => reject(Rule::TooComplex, "empty FROM item"),
    }
}

/// Postgres names an unaliased function in FROM after its (first) function: `unnest($1)` is
/// `unnest`, and its column `unnest.unnest`.
fn function_rte_name(rf: &pg_query::protobuf::RangeFunction) -> String {
    let first = rf.functions.first().and_then(|f| match f.node.as_ref() {
        Some(N::List(l)) => l.items.first(),
        _ => Some(f),
    });
    match first.and_then(|n| n.node.as_ref()) {
        Some(N::FuncCall(fc)) => fc
            .funcname
            .last()
            .and_then(str_of)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

/// A join: its ON clause sees only its two inputs; the right input, if LATERAL, also sees the
/// left one. A join alias (`(a JOIN b ON …) AS j`) hides the inputs' names and exposes their
/// columns as `j.col`; `USING (…) AS u` adds the name `u` for the merged columns only.
fn join<'n>(
    cx: &mut Cx,
    j: &'n pg_query::protobuf::JoinExpr,
    items: &mut FromItems<'n>,
    env: &Env,
    lateral: &[usize],
) -> R<Item> {
    let (Some(l), Some(r)) = (j.larg.as_deref(), j.rarg.as_deref()) else {
        return reject(Rule::TooComplex, "join without two sides");
    };
    let left = item(cx, l, items, env, lateral)?;
    let right_sees: Vec<usize> = lateral.iter().chain(&left.visible).copied().collect();
    let right = item(cx, r, items, env, &right_sees)?;
    let deriv = match j.jointype {
        t if t == JoinType::JoinInner as i32 => Deriv::Any,
        t if t == JoinType::JoinLeft as i32 => Deriv::Only(right.ids.clone()),
        t if t == JoinType::JoinRight as i32 => Deriv::Only(left.ids.clone()),
        _ => Deriv::Never,
    };
    let mut ids: Vec<usize> = left.ids.iter().chain(&right.ids).copied().collect();
    let mut visible: Vec<usize> = left.visible.iter().chain(&right.visible).copied().collect();
    if let Some(q) = j.quals.as_deref() {
        items.quals.push((q, visible.clone(), deriv.clone()));
    }
    items.scope.natural |= j.is_natural;
    for u in &j.using_clause {
        if let Some(col) = str_of(u) {
            items.scope.merged.push(col.to_owned());
            items.using.push((
                col.to_owned(),
                left.ids.clone(),
                right.ids.clone(),
                deriv.clone(),
            ));
        }
    }
    if let Some(a) = &j.join_using_alias {
        // `u.col` is a merged USING column: opaque, it proves no input through an equality.
        let id = push(items, join_entry(&a.aliasname)).ids;
        ids.extend(&id);
        visible.extend(id);
    }
    if let Some(a) = &j.alias {
        if !a.colnames.is_empty() {
            // `AS j(x, y)` renames the join's columns by position: j.x may be a tenant column.
            return reject(
                Rule::TooComplex,
                format!(
                    "column aliases on join alias \"{}\" are not supported; alias the columns in the select list instead",
                    a.aliasname
                ),
            );
        }
        let id = push(items, join_entry(&a.aliasname)).ids;
        ids.extend(&id);
        items
            .scope
            .joins
            .extend(id.iter().map(|j| (*j, visible.clone())));
        visible = id;
    }
    Ok(Item { ids, visible })
}

/// The entry of a join alias or USING alias: its own columns are never tenant-constrained.
fn join_entry(name: &str) -> Entry {
    Entry {
        name: name.to_owned(),
        schema: None,
        kind: EntryKind::Derived { cols: None },
        location: 0,
        known_cols: Vec::new(),
    }
}
