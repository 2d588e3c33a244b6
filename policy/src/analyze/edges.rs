//! Equalities that hold in every branch of a disjunction.

use super::scope::{Deriv, Edge, Term};
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
