//! Column-reference resolution as Postgres's parser does it (parse_relation.c): which FROM
//! entries a name can see at each query level, and when it must look outward instead.
//!
//! A qualified `rel.col` is looked up among the entries *visible* at the innermost level; only
//! when none of them is named `rel` does the lookup move to the enclosing level. What is
//! visible depends on where the reference sits:
//! - WHERE, the select list, …: every FROM item, except the relations inside a parenthesized
//!   join with an alias (`(a JOIN b ON …) AS j`), which only `j` names;
//! - an ON clause: only the two inputs of its join;
//! - a LATERAL subquery or a function in FROM: only the FROM items to its left;
//! - a non-LATERAL subquery in FROM and TABLESAMPLE arguments: nothing of their own level.
//!
//! Binding a name to an entry Postgres does not see would let a tenant filter "prove" a
//! relation with a column that constrains nothing.

use super::scope::{Entry, Env, Scope, Term};
use std::borrow::Cow;

/// Resolve a column reference, or give up (None = unknown: proves nothing). `visible` restricts
/// the innermost level to these entries (an ON clause); otherwise the scope's own namespace.
pub(crate) fn resolve_column(
    fields: &[&str],
    env: &Env,
    visible: Option<&[usize]>,
) -> Option<Term> {
    let scope = env.scope;
    let ns = visible.map_or_else(|| namespace(scope), Cow::Borrowed);
    match fields {
        // Unqualified names are only resolved at the innermost level (None when not there).
        // A merged USING/NATURAL column is no input's column (see `Scope::merges`).
        [col] if scope.merges(col) => None,
        [col] => unqualified(scope, &ns, col).map(|id| Term::Col(id, (*col).to_owned())),
        [rel, col] | [_, rel, col] => {
            let schema = (fields.len() == 3).then(|| fields[0]);
            let matches =
                |e: &Entry| e.name == *rel && schema.is_none_or(|s| e.schema.as_deref() == Some(s));
            match named(scope, &ns, &matches).as_slice() {
                [id] => Some(column_of(scope, *id, col)),
                [] => outer_column(env.parent, &matches, col),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A qualified reference that found no entry at the innermost level: the first enclosing level
/// with a visible entry of that name decides, and only a column proven there is a tenant value.
fn outer_column(
    mut env: Option<&Env>,
    matches: &dyn Fn(&Entry) -> bool,
    col: &str,
) -> Option<Term> {
    while let Some(e) = env {
        match named(e.scope, &namespace(e.scope), matches).as_slice() {
            [id] => {
                return match column_of(e.scope, *id, col) {
                    Term::Col(id, c) if e.scope.is_proven(id, &c) => Some(Term::OuterTenant),
                    _ => None,
                }
            }
            [] => env = e.parent,
            _ => return None,
        }
    }
    None
}

/// The entries of a level visible by name: its namespace, or every entry when the scope was
/// built without one (the target level of UPDATE/DELETE/MERGE, INSERT … ON CONFLICT). Those
/// are top-level statements: where a name hidden by a join alias is bound here, Postgres finds
/// no enclosing entry and errors, so nothing is proven that Postgres would read differently.
fn namespace(scope: &Scope) -> Cow<'_, [usize]> {
    match &scope.visible {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned((0..scope.entries.len()).collect()),
    }
}

fn named(scope: &Scope, ns: &[usize], matches: &dyn Fn(&Entry) -> bool) -> Vec<usize> {
    ns.iter()
        .copied()
        .filter(|id| scope.entries.get(*id).is_some_and(matches))
        .collect()
}

/// `rel.col` where `rel` is entry `id`. A join alias exposes its inputs' columns: the column
/// is the input's when exactly one input is known to have it; otherwise (a USING column, a
/// column not known) the join's own column, a value no equality proves a relation through.
fn column_of(scope: &Scope, id: usize, col: &str) -> Term {
    let inner = scope
        .join_inputs(id)
        .filter(|_| !scope.merges(col))
        .and_then(|ns| unqualified(scope, ns, col));
    Term::Col(inner.unwrap_or(id), col.to_owned())
}

/// The one entry among `ns` (join aliases opened up) known to have column `col`.
fn unqualified(scope: &Scope, ns: &[usize], col: &str) -> Option<usize> {
    let mut hits = Vec::new();
    column_hits(scope, ns, col, &mut hits);
    hits.sort_unstable();
    hits.dedup();
    match hits.as_slice() {
        [id] => Some(*id),
        _ => None,
    }
}

fn column_hits(scope: &Scope, ns: &[usize], col: &str, out: &mut Vec<usize>) {
    for &id in ns {
        if let Some(inputs) = scope.join_inputs(id) {
            column_hits(scope, inputs, col, out);
        } else if scope
            .entries
            .get(id)
            .is_some_and(|e| e.known_cols.iter().any(|k| k == col))
        {
            out.push(id);
        }
    }
}
