//! The equalities a predicate proves: its top-level conjuncts `a = b`, and those that hold in
//! every branch of a disjunction.

use super::expr::{conjuncts, expands_columns, is_eq_operator, term};
use super::scope::{Deriv, Edge, Env, Term};
use super::Cx;
use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::{AExprKind, BoolExprType, Node};
use std::collections::HashSet;

/// A value a tenant column may be proven equal to: a parameter (checked at Bind), the tenant
/// setting, a literal (checked against the session's tenant), or an enclosing query's proven
/// tenant column.
fn is_value(t: &Term) -> bool {
    matches!(
        t,
        Term::Param(_) | Term::Setting | Term::Literal(_) | Term::OuterTenant
    )
}

/// The columns `edges` equate with a value.
fn valued_columns(edges: &[Edge]) -> HashSet<&Term> {
    edges
        .iter()
        .flat_map(|e| [(&e.a, &e.b), (&e.b, &e.a)])
        .filter(|(x, v)| matches!(x, Term::Col(..)) && is_value(v))
        .map(|(x, _)| x)
        .collect()
}

/// A row satisfies a disjunction through one of its branches. A column that every branch
/// equates with a value (`t.tenant_id = $1 AND t.id = $2 OR t.tenant_id = $3 AND t.id = $4`)
/// equals one of those values in every row: the equalities of that column with each branch's
/// value are returned, so that the column is proven like one compared with a single value, and
/// every one of the values (`$1` and `$3`) is tied to the tenant column and checked at Bind.
/// Other equalities of a branch (`t.id = $2`, column to column) hold only in that branch and
/// are dropped.
pub(crate) fn common_value_edges(branches: Vec<Vec<Edge>>) -> Vec<Edge> {
    let Some((first, rest)) = branches.split_first() else {
        return Vec::new();
    };
    let mut common = valued_columns(first);
    for b in rest {
        let cols = valued_columns(b);
        common.retain(|c| cols.contains(c));
    }
    let keep = |e: &Edge| {
        (common.contains(&e.a) && is_value(&e.b)) || (common.contains(&e.b) && is_value(&e.a))
    };
    branches
        .iter()
        .flatten()
        .filter(|e| keep(e))
        .cloned()
        .collect()
}

/// `col IN (v1, v2, …)`: [`common_value_edges`] for branches that are each one equality of the
/// same column, without building them: the column's equality with every item if every item is
/// a value, else none.
pub(crate) fn list_value_edges(
    col: Option<Term>,
    items: impl Iterator<Item = Option<Term>>,
    deriv: &Deriv,
) -> Vec<Edge> {
    let Some(col @ Term::Col(..)) = col else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Some(v) if is_value(&v) => out.push(Edge {
                a: col.clone(),
                b: v,
                deriv: deriv.clone(),
            }),
            _ => return Vec::new(),
        }
    }
    out
}

/// Equalities `a = b` (or `a IN (b)`) among the top-level conjuncts of `pred`; and, from a
/// conjunct that is a disjunction (`… OR …`, `a IN (b, c)`, `(a, b) IN ((x, y), (z, w))`), the
/// equalities of a column with a tenant value that every branch has (see
/// [`common_value_edges`]).
pub(crate) fn equality_edges(
    cx: &Cx,
    pred: &Node,
    env: &Env,
    visible: Option<&[usize]>,
    deriv: &Deriv,
    out: &mut Vec<Edge>,
) {
    edges_at(cx, pred, env, visible, deriv, out, 0);
}

fn edges_at(
    cx: &Cx,
    pred: &Node,
    env: &Env,
    visible: Option<&[usize]>,
    deriv: &Deriv,
    out: &mut Vec<Edge>,
    depth: usize,
) {
    let mut cs = Vec::new();
    conjuncts(pred, &mut cs);
    for c in cs {
        if let Some(N::BoolExpr(b)) = c.node.as_ref() {
            if b.boolop == BoolExprType::OrExpr as i32 && depth < MAX_DISJUNCTION_DEPTH {
                let branches = b.args.iter().map(|arg| {
                    let mut e = Vec::new();
                    edges_at(cx, arg, env, visible, deriv, &mut e, depth + 1);
                    e
                });
                out.extend(common_value_edges(branches.collect()));
            }
            continue;
        }
        let Some(N::AExpr(a)) = c.node.as_ref() else {
            continue;
        };
        if !is_eq_operator(&a.name) {
            continue;
        }
        let (Some(l), Some(r)) = (a.lexpr.as_deref(), a.rexpr.as_deref()) else {
            continue;
        };
        let lhs = l;
        let pairs = |r: &Node| {
            let mut e = Vec::new();
            for (l, r) in row_pairs(l, r) {
                if let (Some(ta), Some(tb)) = (term(cx, l, env, visible), term(cx, r, env, visible))
                {
                    e.push(Edge {
                        a: ta,
                        b: tb,
                        deriv: deriv.clone(),
                    });
                }
            }
            e
        };
        if a.kind == AExprKind::AexprIn as i32 {
            match r.node.as_ref() {
                Some(N::List(l)) if l.items.len() == 1 => out.extend(pairs(&l.items[0])),
                // `col IN ($1, $2, …)`: the column once, each item a value (an ORM's list of
                // thousands stays cheap); row constructors branch by branch.
                Some(N::List(l)) if !matches!(lhs.node, Some(N::RowExpr(_))) => {
                    out.extend(list_value_edges(
                        term(cx, lhs, env, visible),
                        l.items.iter().map(|i| term(cx, i, env, visible)),
                        deriv,
                    ))
                }
                Some(N::List(l)) => {
                    out.extend(common_value_edges(l.items.iter().map(pairs).collect()))
                }
                _ => {}
            }
        } else if a.kind == AExprKind::AexprOp as i32 {
            out.extend(pairs(r));
        }
    }
}

/// Disjunctions nested in disjunctions deeper than this prove nothing (bounded recursion).
const MAX_DISJUNCTION_DEPTH: usize = 8;

/// `(a, b) = (x, y)` compares element-wise; anything else is one pair. An element that
/// expands to several columns (`x.*`, `(row).*`) shifts every element after it by a number of
/// columns the parse tree does not tell, so only the elements before the first expansion (on
/// either side) are paired: `(x.*, o.tenant_id, y.*) = (z.*, $1, w.*)` may compare
/// `o.tenant_id` with a column of `w`.
fn row_pairs<'n>(l: &'n Node, r: &'n Node) -> Vec<(&'n Node, &'n Node)> {
    match (l.node.as_ref(), r.node.as_ref()) {
        (Some(N::RowExpr(a)), Some(N::RowExpr(b))) if a.args.len() == b.args.len() => a
            .args
            .iter()
            .zip(&b.args)
            .take_while(|(x, y)| !expands_columns(x) && !expands_columns(y))
            .collect(),
        _ => vec![(l, r)],
    }
}
