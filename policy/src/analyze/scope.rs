//! Scopes (the relations of one FROM clause), equality facts, and the solver that decides
//! which tenant relations are provably restricted to the session tenant.

use super::{pos, reject_hint, Cx, R};
use crate::decision::Rule;
use std::collections::{HashMap, HashSet, VecDeque};

/// What a range-table entry is.
#[derive(Debug, Clone)]
pub(crate) enum EntryKind {
    /// A tenant table; `column` must be constrained.
    Tenant {
        schema: String,
        table: String,
        column: String,
    },
    /// Shared, known or system relation: readable, no constraint needed.
    Plain,
    /// Schema/database isolation: the session tenant's own relation (readable and writable,
    /// no constraint needed).
    Isolated,
    /// Subquery, CTE reference or function: already checked on its own.
    Derived { cols: Option<Vec<OutCol>> },
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Name by which columns are qualified (alias, or relation name).
    pub name: String,
    /// Schema, when the entry is an unaliased relation (for `schema.rel.col`).
    pub schema: Option<String>,
    pub kind: EntryKind,
    pub location: i32,
    /// Columns known to exist (resolves unqualified references soundly).
    pub known_cols: Vec<String>,
}

impl Entry {
    pub fn tenant_column(&self) -> Option<&str> {
        match &self.kind {
            EntryKind::Tenant { column, .. } => Some(column),
            _ => None,
        }
    }
}

/// One output column of a (sub)query, and whether its value provably is the session tenant.
#[derive(Debug, Clone)]
pub(crate) struct OutCol {
    pub name: Option<String>,
    pub tenant: TenantValue,
    /// The column is a column of a tenant table's rows that are proven to be the tenant's.
    pub key: Option<KeySource>,
}

/// A value of column `column` of some row of `schema.table` that is the session tenant's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct KeySource {
    pub schema: String,
    pub table: String,
    pub column: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TenantValue {
    No,
    /// A column constrained to the tenant, or `current_setting(tenant setting)`.
    Proven,
    Param(usize),
    /// A VALUES column whose every row is a `$n` (or the tenant setting): all of them.
    Params(Vec<usize>),
    Literal(String),
}

/// A CTE visible by name.
#[derive(Debug, Clone)]
pub(crate) struct CteInfo {
    pub name: String,
    pub cols: Option<Vec<OutCol>>,
}

/// A side of an equality.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Term {
    Col(usize, String),
    Param(usize),
    Setting,
    Literal(String),
    /// A column of an enclosing query already proven to be the tenant.
    OuterTenant,
    /// The output of `x IN (SELECT …)`: a column of proven rows of a tenant table (not a
    /// tenant value itself).
    Key(KeySource),
}

/// Which entries an equality may prove: ON of an outer join only proves its nullable side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Deriv {
    Any,
    Only(Vec<usize>),
    Never,
}

impl Deriv {
    fn allows(&self, id: usize) -> bool {
        match self {
            Deriv::Any => true,
            Deriv::Only(ids) => ids.contains(&id),
            Deriv::Never => false,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub a: Term,
    pub b: Term,
    pub deriv: Deriv,
}

/// The relations of one query level and the (column) terms proven equal to the tenant.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    pub entries: Vec<Entry>,
    pub proven: HashSet<(usize, String)>,
    /// The entries that names at this level can see (see `names`); `None`: all of them.
    pub visible: Option<Vec<usize>>,
    /// Join aliases (`(a JOIN b …) AS j`): the alias entry and the entries of its two inputs
    /// that it hides and whose columns it exposes.
    pub joins: Vec<(usize, Vec<usize>)>,
    /// Columns merged by a `JOIN … USING` of this level; `natural`: a NATURAL join merges
    /// columns not known here. See [`Scope::merges`].
    pub merged: Vec<String>,
    pub natural: bool,
}

impl Scope {
    /// An unqualified `col` (or `j.col` through a join alias) may name a merged join column:
    /// the left input's value for INNER/LEFT, the right input's for RIGHT and
    /// `COALESCE(left, right)` for FULL joins. Where the input the name is resolved to is NULL,
    /// that value is the other input's, so it is no column of that input (neither a tenant
    /// value nor a key of its rows).
    pub fn merges(&self, col: &str) -> bool {
        self.natural || self.merged.iter().any(|m| m == col)
    }

    /// The same level with the entries of `other` (a target level built from a FROM clause).
    pub fn with_entries_of(other: &Scope) -> Scope {
        Scope {
            entries: other.entries.clone(),
            merged: other.merged.clone(),
            natural: other.natural,
            ..Scope::default()
        }
    }

    /// The entries a join alias exposes the columns of, if `id` is a join alias.
    pub fn join_inputs(&self, id: usize) -> Option<&[usize]> {
        self.joins
            .iter()
            .find(|(j, _)| *j == id)
            .map(|(_, inputs)| inputs.as_slice())
    }

    /// This level as seen from a place that sees only `visible` of its entries (an ON clause,
    /// a LATERAL item, a function in FROM): other names resolve outward, as in Postgres.
    pub fn restricted(&self, visible: &[usize]) -> Scope {
        Scope {
            entries: self.entries.clone(),
            proven: self.proven.clone(),
            visible: Some(visible.to_vec()),
            joins: self.joins.clone(),
            merged: self.merged.clone(),
            natural: self.natural,
        }
    }

    /// The visible join alias that hides entry `id` from the rest of the query, if any.
    fn hidden_by(&self, id: usize) -> Option<&Entry> {
        let visible = self.visible.as_ref()?;
        if visible.contains(&id) {
            return None;
        }
        let contains = |j: usize| {
            let mut stack = vec![j];
            while let Some(j) = stack.pop() {
                let Some(inputs) = self.join_inputs(j) else {
                    continue;
                };
                if inputs.contains(&id) {
                    return true;
                }
                stack.extend_from_slice(inputs);
            }
            false
        };
        visible
            .iter()
            .find(|j| contains(**j))
            .and_then(|j| self.entries.get(*j))
    }

    pub fn is_proven(&self, id: usize, col: &str) -> bool {
        self.proven.contains(&(id, col.to_owned()))
    }

    fn holds(&self, t: &Term) -> bool {
        match t {
            Term::Col(id, c) => self.is_proven(*id, c),
            Term::Key(_) => false,
            _ => true,
        }
    }

    /// The proven rows whose column `t` stands for, if any: a column of a constrained tenant
    /// entry, a derived column that is one, or a semi-join's subquery output.
    pub fn key_source(&self, t: &Term) -> Option<KeySource> {
        match t {
            Term::Key(k) => Some(k.clone()),
            Term::Col(o, col) => match &self.entries.get(*o)?.kind {
                EntryKind::Tenant { schema, table, .. } if self.entry_constrained(*o) => {
                    Some(KeySource {
                        schema: schema.clone(),
                        table: table.clone(),
                        column: col.clone(),
                    })
                }
                EntryKind::Derived { cols: Some(cols) } => cols
                    .iter()
                    .find(|c| c.name.as_deref() == Some(col))
                    .and_then(|c| c.key.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// `c.k` equals a column of proven rows of a tenant table through a single-column unique
    /// key: `c` is one of those rows (same table, `k` unique: Rails' update alias, Django's and
    /// Rails' `id IN (SELECT id …)`), references one (composite FK `(c.tenant, c.k) ->
    /// (t.tenant, t.key)`, `t.key` unique), or is referenced by one (composite FK from `t` to
    /// `(c.tenant, c.k)`, `c.k` unique). Either way the row's tenant is the proven rows'.
    fn key_proves(&self, cx: &Cx, edges: &[Edge], c: usize) -> bool {
        let EntryKind::Tenant {
            schema: cs,
            table: ct,
            column: ccol,
        } = &self.entries[c].kind
        else {
            return false;
        };
        let unique = |s: &str, t: &str, col: &str| {
            cx.cat
                .unique_keys(s, t)
                .iter()
                .any(|k| k.len() == 1 && k[0] == col)
        };
        let tenant_col = |s: &str, t: &str| match cx.cat.relation(s, t) {
            Some(crate::catalog::RelKind::Tenant { column }) => Some(column),
            _ => None,
        };
        // A two-column foreign key made of exactly these (column, referenced column) pairs.
        let fk_is = |fk: &crate::catalog::ForeignKey, pairs: [(&str, &str); 2]| {
            fk.columns.len() == 2
                && fk.ref_columns.len() == 2
                && pairs.iter().all(|(f, r)| {
                    fk.columns
                        .iter()
                        .zip(&fk.ref_columns)
                        .any(|(a, b)| a == f && b == r)
                })
        };
        for e in edges.iter().filter(|e| e.deriv.allows(c)) {
            for (x, y) in [(&e.a, &e.b), (&e.b, &e.a)] {
                let Term::Col(xc, kc) = x else { continue };
                if *xc != c || kc == ccol || matches!(y, Term::Col(o, _) if *o == c) {
                    continue;
                }
                let Some(ks) = self.key_source(y) else {
                    continue;
                };
                let same = ks.schema == *cs && ks.table == *ct;
                if same && ks.column == *kc && unique(cs, ct, kc) {
                    return true;
                }
                let Some(tcol) = tenant_col(&ks.schema, &ks.table) else {
                    continue;
                };
                let target = (ks.schema.clone(), ks.table.clone());
                let child = unique(&ks.schema, &ks.table, &ks.column)
                    && cx.cat.foreign_keys(cs, ct).iter().any(|fk| {
                        fk.ref_table == target && fk_is(fk, [(ccol, &tcol), (kc, &ks.column)])
                    });
                let parent = unique(cs, ct, kc)
                    && cx.cat.foreign_keys(&ks.schema, &ks.table).iter().any(|fk| {
                        fk.ref_table == (cs.clone(), ct.clone())
                            && fk_is(fk, [(&tcol, ccol), (&ks.column, kc)])
                    });
                if child || parent {
                    return true;
                }
            }
        }
        false
    }

    pub fn entry_constrained(&self, id: usize) -> bool {
        match self.entries.get(id).and_then(Entry::tenant_column) {
            Some(col) => self.is_proven(id, col),
            None => true,
        }
    }

    /// Derive proven terms from equalities and catalog foreign keys until a fixpoint.
    pub fn solve(&mut self, cx: &Cx, edges: &[Edge]) {
        let edges = &compact(edges);
        for (id, e) in self.entries.iter().enumerate() {
            if let EntryKind::Derived { cols: Some(cols) } = &e.kind {
                for c in cols.iter().filter(|c| c.tenant == TenantValue::Proven) {
                    if let Some(n) = &c.name {
                        self.proven.insert((id, n.clone()));
                    }
                }
            }
        }
        loop {
            let mut changed = false;
            for e in edges {
                for (x, y) in [(&e.a, &e.b), (&e.b, &e.a)] {
                    if let Term::Col(id, c) = y {
                        if self.holds(x) && e.deriv.allows(*id) && !self.is_proven(*id, c) {
                            self.proven.insert((*id, c.clone()));
                            changed = true;
                        }
                    }
                }
            }
            changed |= self.apply_foreign_keys(cx, edges);
            if !changed {
                break;
            }
        }
    }

    /// `c` joined to a constrained `o` on `c.key = o.fk` inherits `o`'s tenant when the
    /// catalog has a unique key on `c` and a composite FK `(o.tenant, o.fk) -> (c.tenant, c.key)`.
    fn apply_foreign_keys(&mut self, cx: &Cx, edges: &[Edge]) -> bool {
        let mut changed = false;
        for c in 0..self.entries.len() {
            if self.entry_constrained(c) {
                continue;
            }
            let by_fk = (0..self.entries.len()).any(|o| {
                o != c
                    && self.entries[o].tenant_column().is_some()
                    && self.entry_constrained(o)
                    && fk_proves(cx, &self.entries, edges, o, c)
            });
            if by_fk || self.key_proves(cx, edges, c) {
                if let Some(col) = self.entries[c].tenant_column() {
                    self.proven.insert((c, col.to_owned()));
                    changed = true;
                }
            }
        }
        changed
    }

    /// Reject the first tenant entry that is not constrained, with an actionable hint.
    pub fn require_constrained(&self, cx: &Cx, edges: &[Edge]) -> R<()> {
        for (id, e) in self.entries.iter().enumerate() {
            let Some(col) = e.tenant_column() else {
                continue;
            };
            if self.is_proven(id, col) {
                continue;
            }
            let reason = format!(
                "relation \"{}\" (at position {}) is not filtered by {}.{col} = $n or current_setting('{}')",
                e.name,
                pos(e.location),
                e.name,
                cx.cfg.tenant_setting
            );
            return reject_hint(
                Rule::TenantFilterMissing,
                reason,
                self.hint_for(id, col, edges),
            );
        }
        Ok(())
    }

    fn hint_for(&self, c: usize, col: &str, edges: &[Edge]) -> String {
        let ce = &self.entries[c];
        if let Some(j) = self.hidden_by(c) {
            return format!(
                "the join alias \"{}\" hides \"{}\" by name from the rest of the query (in Postgres, {}.{col} there names a relation of an enclosing query, or none): add {}.{col} = $n to the ON clause of its join, filter by {}.{col} if no other relation of the join has a {col} column, or remove the join alias",
                j.name, ce.name, ce.name, ce.name, j.name
            );
        }
        for (o, kc, fo) in col_pairs(edges, c) {
            let oe = &self.entries[o];
            if let (
                EntryKind::Tenant {
                    table: ot,
                    column: ocol,
                    ..
                },
                EntryKind::Tenant { table: ct, .. },
            ) = (&oe.kind, &ce.kind)
            {
                return format!(
                    "the join of \"{}\" to \"{}\" is provable if {ct}({kc}) is unique and a foreign key {ot}({ocol}, {fo}) REFERENCES {ct}({col}, {kc}) exists; or add {}.{col} = {}.{ocol} to the join condition",
                    ce.name, oe.name, ce.name, oe.name
                );
            }
        }
        format!("add {}.{col} = $n (or = current_setting('…')) as a top-level AND condition of the WHERE clause, or of the ON clause for an outer-joined relation", ce.name)
    }

    /// Parameters and literals that are compared (through any chain) with a tenant value: a
    /// tenant column, a derived column proven on its own level, the tenant setting or an
    /// enclosing query's proven tenant column. A column proven only through values that are not
    /// so connected (`x.status = $2` beside `x.tenant_id = $1`) equals a value that is not
    /// checked at Bind: it proved nothing here and must not be passed on as the tenant (as an
    /// output column of a subquery, to a correlated subquery, to INSERT … SELECT or MERGE), so
    /// it is dropped from the proven set.
    pub fn record_tenant_values(&mut self, cx: &mut Cx, edges: &[Edge]) {
        let mut adj: HashMap<&Term, Vec<&Term>> = HashMap::new();
        for e in edges {
            adj.entry(&e.a).or_default().push(&e.b);
            adj.entry(&e.b).or_default().push(&e.a);
        }
        let mut starts: Vec<Term> = vec![Term::Setting, Term::OuterTenant];
        for (id, e) in self.entries.iter().enumerate() {
            if let Some(c) = e.tenant_column() {
                starts.push(Term::Col(id, c.to_owned()));
            }
            if let EntryKind::Derived { cols: Some(cols) } = &e.kind {
                starts.extend(
                    cols.iter()
                        .filter(|c| c.tenant == TenantValue::Proven)
                        .filter_map(|c| c.name.clone())
                        .map(|n| Term::Col(id, n)),
                );
            }
        }
        let mut seen: HashSet<&Term> = HashSet::new();
        let mut queue: VecDeque<&Term> = starts.iter().collect();
        while let Some(t) = queue.pop_front() {
            if !seen.insert(t) {
                continue;
            }
            match t {
                Term::Param(n) => {
                    cx.tenant_params.insert(*n);
                }
                Term::Literal(v) => cx.tenant_literals.push(v.clone()),
                _ => {}
            }
            if let Some(next) = adj.get(t) {
                queue.extend(next.iter().copied());
            }
        }
        let reached: HashSet<(usize, String)> = seen
            .into_iter()
            .filter_map(|t| match t {
                Term::Col(id, c) => Some((*id, c.clone())),
                _ => None,
            })
            .collect();
        self.proven.retain(|k| reached.contains(k));
    }
}

/// `edges` for the solver: of the equalities of one column with a value (`$n`, a literal, the
/// tenant setting, an enclosing tenant column) under the same derivation, one is enough (the
/// value always holds); an `IN` list of thousands of `$n` would otherwise be walked on every
/// round of the fixpoint for every entry. The Bind check still sees every value
/// (`record_tenant_values` walks all edges).
fn compact(edges: &[Edge]) -> Vec<Edge> {
    let mut seen: HashSet<(&Term, &Deriv)> = HashSet::new();
    edges
        .iter()
        .filter(|e| {
            let col = match (&e.a, &e.b) {
                (c @ Term::Col(..), v) | (v, c @ Term::Col(..))
                    if !matches!(v, Term::Col(..) | Term::Key(_)) =>
                {
                    c
                }
                _ => return true,
            };
            seen.insert((col, &e.deriv))
        })
        .cloned()
        .collect()
}

/// Column-to-column equalities between entry `c` and other entries: (other, c's col, other's col).
fn col_pairs(edges: &[Edge], c: usize) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for e in edges.iter().filter(|e| e.deriv.allows(c)) {
        match (&e.a, &e.b) {
            (Term::Col(x, xc), Term::Col(y, yc)) if *x == c && *y != c => {
                out.push((*y, xc.clone(), yc.clone()))
            }
            (Term::Col(y, yc), Term::Col(x, xc)) if *x == c && *y != c => {
                out.push((*y, xc.clone(), yc.clone()))
            }
            _ => {}
        }
    }
    out
}

fn fk_proves(cx: &Cx, entries: &[Entry], edges: &[Edge], o: usize, c: usize) -> bool {
    let (
        EntryKind::Tenant {
            schema: os,
            table: ot,
            column: ocol,
        },
        EntryKind::Tenant {
            schema: cs,
            table: ct,
            column: ccol,
        },
    ) = (&entries[o].kind, &entries[c].kind)
    else {
        return false;
    };
    let pairs: Vec<(String, String)> = col_pairs(edges, c)
        .into_iter()
        .filter(|(x, _, _)| *x == o)
        .map(|(_, kc, fo)| (kc, fo))
        .collect();
    if pairs.is_empty() {
        return false;
    }
    let uniques = cx.cat.unique_keys(cs, ct);
    cx.cat.foreign_keys(os, ot).iter().any(|fk| {
        let mapping: Vec<(&String, &String)> = fk.columns.iter().zip(&fk.ref_columns).collect();
        let has_tenant_pair = mapping.iter().any(|(f, r)| *f == ocol && *r == ccol);
        let others: Vec<&(&String, &String)> = mapping.iter().filter(|(f, _)| *f != ocol).collect();
        let all_equated = !others.is_empty()
            && others
                .iter()
                .all(|(f, r)| pairs.iter().any(|(kc, fo)| kc == *r && fo == *f));
        let key_unique = uniques
            .iter()
            .any(|k| !k.is_empty() && k.iter().all(|col| others.iter().any(|(_, r)| *r == col)));
        fk.ref_table == (cs.clone(), ct.clone()) && has_tenant_pair && all_equated && key_unique
    }) || child_fk_proves(cx, (os, ot, ocol), (cs, ct, ccol), &pairs)
}

/// The child direction (collection fetch): `c` references the constrained `o` with a composite
/// FK `(c.tenant, c.fk) -> (o.tenant, o.key)`, `o.key` is unique and the join equates
/// `c.fk = o.key`. The one `o` row a `c` row can match is the row its FK references, which has
/// the same tenant, so every joined `c` row is `o`'s tenant's.
fn child_fk_proves(
    cx: &Cx,
    (os, ot, ocol): (&String, &String, &String),
    (cs, ct, ccol): (&String, &String, &String),
    pairs: &[(String, String)],
) -> bool {
    let uniques = cx.cat.unique_keys(os, ot);
    cx.cat.foreign_keys(cs, ct).iter().any(|fk| {
        let mapping: Vec<(&String, &String)> = fk.columns.iter().zip(&fk.ref_columns).collect();
        let has_tenant_pair = mapping.iter().any(|(f, r)| *f == ccol && *r == ocol);
        let others: Vec<&(&String, &String)> = mapping.iter().filter(|(f, _)| *f != ccol).collect();
        // pairs are (c column, o column) equated by the join.
        let all_equated = !others.is_empty()
            && others
                .iter()
                .all(|(f, r)| pairs.iter().any(|(kc, fo)| kc == *f && fo == *r));
        let key_unique = uniques
            .iter()
            .any(|k| !k.is_empty() && k.iter().all(|col| others.iter().any(|(_, r)| *r == col)));
        fk.ref_table == (os.clone(), ot.clone()) && has_tenant_pair && all_equated && key_unique
    })
}

/// Lexical environment: a scope, the CTEs visible at that level, and the enclosing levels.
pub(crate) struct Env<'a> {
    pub scope: &'a Scope,
    pub ctes: &'a [CteInfo],
    pub parent: Option<&'a Env<'a>>,
}

impl<'a> Env<'a> {
    pub fn find_cte(&self, name: &str) -> Option<&'a CteInfo> {
        let mut env = Some(self);
        while let Some(e) = env {
            if let Some(c) = e.ctes.iter().rev().find(|c| c.name == name) {
                return Some(c);
            }
            env = e.parent;
        }
        None
    }
}
