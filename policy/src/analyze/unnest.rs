//! `INSERT INTO t (c1, …, cn) SELECT * FROM UNNEST(($1)::type[], …, ($n)::type[])`: how Django
//! (5.2 and later) inserts several rows at once on PostgreSQL. UNNEST of n arrays yields n
//! columns, in order, so the k-th array fills the k-th listed column; the tenant column's array
//! must hold the session tenant in every element: a `$n` array checked element by element at
//! Bind ([`crate::Decision::tenant_array_params`]), or (without `require_parameters`) an
//! `ARRAY[…]` of literals, each checked like a literal tenant value.

use super::expr::{str_of, walk, Ctx};
use super::scope::Env;
use super::{reject, Cx, R};
use crate::decision::{ArrayCast, Rule, TenantArray};
use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::{a_const, AArrayExpr, AConst, Node, SelectStmt, SetOperation, TypeName};

/// The UNNEST call's node and arguments, if `s` is exactly `SELECT * FROM UNNEST(…)` (an alias
/// with column names is allowed: `*` keeps the positions).
pub(crate) fn unnest_call(s: &SelectStmt) -> Option<(&Node, &[Node])> {
    let plain = s.values_lists.is_empty()
        && s.with_clause.is_none()
        && s.where_clause.is_none()
        && s.group_clause.is_empty()
        && s.having_clause.is_none()
        && s.window_clause.is_empty()
        && s.distinct_clause.is_empty()
        && s.sort_clause.is_empty()
        && s.limit_count.is_none()
        && s.limit_offset.is_none()
        && s.locking_clause.is_empty()
        && s.into_clause.is_none()
        && s.op == SetOperation::SetopNone as i32;
    if !plain {
        return None;
    }
    let [target] = s.target_list.as_slice() else {
        return None;
    };
    let Some(N::ResTarget(rt)) = target.node.as_ref() else {
        return None;
    };
    let star = match rt.val.as_deref().and_then(|v| v.node.as_ref()) {
        Some(N::ColumnRef(c)) => {
            matches!(c.fields.as_slice(), [f] if matches!(f.node.as_ref(), Some(N::AStar(_))))
        }
        _ => false,
    };
    let [from] = s.from_clause.as_slice() else {
        return None;
    };
    let Some(N::RangeFunction(rf)) = from.node.as_ref() else {
        return None;
    };
    if !star || rf.lateral || rf.ordinality || rf.is_rowsfrom || !rf.coldeflist.is_empty() {
        return None;
    }
    let [function] = rf.functions.as_slice() else {
        return None;
    };
    // (call, column definitions): the definitions must be absent.
    let call = match function.node.as_ref() {
        Some(N::List(l)) => match l.items.as_slice() {
            [call] => call,
            [call, defs] if defs.node.is_none() => call,
            _ => return None,
        },
        _ => return None,
    };
    let Some(N::FuncCall(f)) = call.node.as_ref() else {
        return None;
    };
    let name: Vec<&str> = f.funcname.iter().filter_map(str_of).collect();
    let unnest = matches!(name.as_slice(), ["unnest"] | ["pg_catalog", "unnest"]);
    let simple = f.agg_order.is_empty()
        && f.agg_filter.is_none()
        && f.over.is_none()
        && !f.agg_star
        && !f.agg_distinct
        && !f.func_variadic
        && f.args
            .iter()
            .all(|a| !matches!(a.node, Some(N::NamedArgExpr(_))));
    (unnest && simple).then_some((call, f.args.as_slice()))
}

/// Checks the rows of `INSERT INTO t (cols) SELECT * FROM UNNEST(args)` whose tenant column is
/// `cols[idx]`, and records how its array is checked. UNNEST pads shorter arrays with NULL: the
/// other arrays' lengths must be known, at Bind (`$n` casts) or here (`ARRAY[…]` literals), for
/// the tenant array to be checked as at least as long as every one of them.
pub(crate) fn insert_unnest(
    cx: &mut Cx,
    call: &Node,
    args: &[Node],
    cols: usize,
    idx: usize,
    env: &Env,
) -> R<()> {
    if args.len() != cols {
        return reject(
            Rule::TooComplex,
            format!(
                "INSERT … SELECT * FROM UNNEST(…) has {} arrays for {cols} columns; give one array per listed column",
                args.len()
            ),
        );
    }
    // The function, its arguments' casts and literals: as anywhere else.
    walk(cx, call, Ctx::Value, env)?;
    let Some(arg) = args.get(idx) else {
        return reject(Rule::TooComplex, "UNNEST argument missing");
    };
    let mut others = Vec::new();
    let mut min_len = 0;
    for (j, other) in args.iter().enumerate().filter(|(j, _)| *j != idx) {
        match other_len(other) {
            Some(Len::Param(n)) => others.push(n),
            Some(Len::Fixed(k)) => min_len = min_len.max(k),
            None => {
                return reject(
                    Rule::TooComplex,
                    format!(
                        "UNNEST array {} is not ($n)::type[] or an ARRAY[…] of constants: UNNEST pads the shorter arrays with NULL, and the tenant array's length cannot be checked against it",
                        j + 1
                    ),
                )
            }
        }
    }
    let missing = || {
        reject(
            Rule::TenantFilterMissing,
            "the tenant column's array in INSERT … SELECT * FROM UNNEST(…) is not ($n)::type[] of text, varchar, uuid or an integer type",
        )
    };
    let Some(N::TypeCast(cast)) = arg.node.as_ref() else {
        return missing();
    };
    let Some((kind, limit)) = array_cast(cast.type_name.as_ref()) else {
        return missing();
    };
    match cast.arg.as_deref().and_then(|a| a.node.as_ref()) {
        Some(N::ParamRef(p)) => match usize::try_from(p.number) {
            Ok(n) if n > 0 => {
                cx.tenant_array_params.push(TenantArray {
                    param: n,
                    max: limit,
                    cast: kind,
                    others,
                    min_len,
                });
                Ok(())
            }
            _ => missing(),
        },
        // `ARRAY['acme', 'acme']` (drivers that interpolate values; the walk above refused it
        // under `require_parameters`).
        Some(N::AArrayExpr(a)) if !cx.cfg.require_parameters => {
            if !others.is_empty() || a.elements.len() < min_len {
                return reject(
                    Rule::TooComplex,
                    "the tenant ARRAY[…] of INSERT … SELECT * FROM UNNEST(…) is shorter than another array, or another array is a parameter: UNNEST would pad it with NULL",
                );
            }
            for e in &a.elements {
                let value = match e.node.as_ref() {
                    Some(N::AConst(AConst {
                        val: Some(a_const::Val::Ival(i)),
                        ..
                    })) => i.ival.to_string(),
                    Some(N::AConst(AConst {
                        val: Some(a_const::Val::Sval(s)),
                        ..
                    })) if kind != ArrayCast::Integer || canonical_int(&s.sval) => s.sval.clone(),
                    _ => return missing(),
                };
                if limit.is_some_and(|max| value.chars().count() > max) {
                    return reject(
                        Rule::TenantValueMismatch,
                        format!(
                            "a tenant value in the UNNEST array is longer than varchar({})",
                            limit.unwrap_or(0)
                        ),
                    );
                }
                cx.tenant_literals.push(value);
            }
            Ok(())
        }
        _ => missing(),
    }
}

/// The length of an UNNEST array other than the tenant's.
enum Len {
    /// A `$n` array: counted at Bind.
    Param(usize),
    /// An `ARRAY[…]` of constants.
    Fixed(usize),
}

/// `($n)::type[]`, or `ARRAY[c1, …]` of constants (a cast around each, and around the array,
/// allowed). Anything else (a subquery, a function, a nested or array-valued element) is None.
fn other_len(n: &Node) -> Option<Len> {
    match n.node.as_ref() {
        Some(N::TypeCast(c)) => match c.arg.as_deref().and_then(|a| a.node.as_ref()) {
            Some(N::ParamRef(p)) => usize::try_from(p.number)
                .ok()
                .filter(|n| *n > 0)
                .map(Len::Param),
            Some(N::AArrayExpr(a)) => literal_len(a).map(Len::Fixed),
            _ => None,
        },
        Some(N::AArrayExpr(a)) => literal_len(a).map(Len::Fixed),
        _ => None,
    }
}

/// `'42'`, not `'042'` or `' 42'`: an integer cast stores the canonical form.
fn canonical_int(s: &str) -> bool {
    s.parse::<i64>().is_ok_and(|v| v.to_string() == s)
}

fn literal_len(a: &AArrayExpr) -> Option<usize> {
    let scalar = |e: &Node| match e.node.as_ref() {
        Some(N::AConst(_)) => true,
        Some(N::TypeCast(c)) => {
            c.type_name
                .as_ref()
                .is_some_and(|t| t.array_bounds.is_empty())
                && matches!(
                    c.arg.as_deref().and_then(|a| a.node.as_ref()),
                    Some(N::AConst(_))
                )
        }
        _ => false,
    };
    a.elements.iter().all(scalar).then_some(a.elements.len())
}

/// A one-dimensional array type whose elements keep a tenant value: `text[]`, `varchar[]`,
/// `uuid[]`, the integer types; `varchar(n)[]` too, whose cast cuts longer values to n
/// characters: `Some((Text, Some(n)))`, for the Bind check to refuse a tenant longer than that.
fn array_cast(t: Option<&TypeName>) -> Option<(ArrayCast, Option<usize>)> {
    let t = t?;
    if t.array_bounds.len() != 1 || t.setof || t.pct_type {
        return None;
    }
    let names: Vec<&str> = t.names.iter().filter_map(str_of).collect();
    let name = match names.as_slice() {
        [name] | ["pg_catalog", name] => *name,
        _ => return None,
    };
    let typmods: Vec<i64> = t
        .typmods
        .iter()
        .map(|m| match m.node.as_ref() {
            Some(N::AConst(AConst {
                val: Some(a_const::Val::Ival(i)),
                ..
            })) => Some(i64::from(i.ival)),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match (name, typmods.as_slice()) {
        ("text" | "varchar", []) => Some((ArrayCast::Text, None)),
        ("uuid", []) => Some((ArrayCast::Uuid, None)),
        ("int2" | "int4" | "int8", []) => Some((ArrayCast::Integer, None)),
        ("varchar", [n]) => usize::try_from(*n).ok().map(|n| (ArrayCast::Text, Some(n))),
        _ => None,
    }
}
