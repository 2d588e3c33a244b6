//! Expressions: the walker (literals, functions, subqueries), column resolution and the
//! extraction of tenant equalities from top-level AND-conjuncts.

use super::names::resolve_column;
use super::scope::{Deriv, Edge, Env, OutCol, Term};
use super::{pos, reject, reject_hint, select, Cx, R};
use crate::config::Isolation;
use crate::decision::Rule;
use crate::functions::{self, Builtin};
use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::{
    a_const, AConst, AExprKind, BoolExprType, FuncCall, Node, SubLinkType, TypeName, WindowDef,
};

/// Where an expression sits; decides whether literals are acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    /// SELECT list / RETURNING: constants are fine.
    Target,
    /// WHERE / ON / HAVING / function arguments.
    Predicate,
    /// VALUES rows and SET assignments.
    Value,
    /// LIMIT / OFFSET / window frame offsets.
    Limit,
    /// ORDER BY / GROUP BY / PARTITION BY: integer positions are fine.
    Order,
}

impl Ctx {
    fn describe(self) -> &'static str {
        match self {
            Ctx::Target => "select list",
            Ctx::Predicate => "predicate or function argument",
            Ctx::Value => "VALUES list or SET assignment",
            Ctx::Limit => "LIMIT/OFFSET",
            Ctx::Order => "ORDER BY/GROUP BY",
        }
    }
}

pub(crate) fn str_of(n: &Node) -> Option<&str> {
    match n.node.as_ref() {
        Some(N::String(s)) => Some(&s.sval),
        _ => None,
    }
}

/// Walk an optional boxed expression.
pub(crate) fn walk_opt(cx: &mut Cx, n: Option<&Node>, ctx: Ctx, env: &Env) -> R<()> {
    match n {
        Some(n) => walk(cx, n, ctx, env),
        None => Ok(()),
    }
}

pub(crate) fn walk_all(cx: &mut Cx, ns: &[Node], ctx: Ctx, env: &Env) -> R<()> {
    ns.iter().try_for_each(|n| walk(cx, n, ctx, env))
}

/// Check an expression tree: literals per `ctx`, functions against the allowlist, and every
/// subquery as a query of its own (with `env` as its enclosing scope).
pub(crate) fn walk(cx: &mut Cx, node: &Node, ctx: Ctx, env: &Env) -> R<()> {
    cx.enter()?;
    let r = walk_inner(cx, node, ctx, env);
    cx.leave();
    r
}

fn walk_inner(cx: &mut Cx, node: &Node, ctx: Ctx, env: &Env) -> R<()> {
    let sub = if ctx == Ctx::Order {
        Ctx::Predicate
    } else {
        ctx
    };
    match node.node.as_ref() {
        None
        | Some(
            N::ParamRef(_)
            | N::ColumnRef(_)
            | N::AStar(_)
            | N::SqlvalueFunction(_)
            | N::SetToDefault(_)
            | N::String(_),
        ) => Ok(()),
        Some(N::AConst(c)) => literal(cx, c, ctx),
        Some(N::TypeCast(t))
            if cx.isolation() == Isolation::Schema && is_regclass(t.type_name.as_ref()) =>
        {
            let arrays = t
                .type_name
                .as_ref()
                .is_some_and(|t| !t.array_bounds.is_empty());
            match t.arg.as_deref() {
                _ if arrays => reject(
                    Rule::ForbiddenFunction,
                    format!(
                        "regclass[] cast at position {} cannot be checked in schema isolation",
                        pos(t.location)
                    ),
                ),
                Some(a) => relation_name_literal(cx, a, t.location, "the regclass cast"),
                None => Ok(()),
            }
        }
        Some(N::TypeCast(t)) => {
            type_name_ref(cx, t.type_name.as_ref())?;
            if cx.isolation() == Isolation::Row && is_regclass(t.type_name.as_ref()) {
                if let Some(a) = t.arg.as_deref() {
                    // A bound `$1::regclass` only maps a name to an OID: no literal needed.
                    row_relation_literal(cx, a, t.location, "the regclass cast", false)?;
                }
            }
            walk_opt(cx, t.arg.as_deref(), ctx, env)
        }
        Some(N::AExpr(a)) => {
            // `a || ' ' || b`: a single space joining two texts is shape, not data (Django's
            // SearchVector over several columns).
            let concat = a.kind == AExprKind::AexprOp as i32
                && matches!(a.name.as_slice(), [n] if str_of(n) == Some("||"));
            for side in [a.lexpr.as_deref(), a.rexpr.as_deref()]
                .into_iter()
                .flatten()
            {
                if !(concat && string_const(side).is_some_and(|v| v == " ")) {
                    walk(cx, side, sub, env)?;
                }
            }
            Ok(())
        }
        Some(N::List(l)) => walk_all(cx, &l.items, sub, env),
        Some(N::BoolExpr(b)) => walk_all(cx, &b.args, sub, env),
        Some(N::FuncCall(f)) => func_call(cx, f, sub, env),
        Some(N::SubLink(s)) => {
            walk_opt(cx, s.testexpr.as_deref(), sub, env)?;
            match s.subselect.as_deref().and_then(|n| n.node.as_ref()) {
                Some(N::SelectStmt(sel)) => select::select(cx, sel, Some(env)).map(|_| ()),
                _ => reject(
                    Rule::TooComplex,
                    format!("unsupported subquery at position {}", pos(s.location)),
                ),
            }
        }
        Some(N::NullTest(t)) => walk_opt(cx, t.arg.as_deref(), sub, env),
        Some(N::BooleanTest(t)) => walk_opt(cx, t.arg.as_deref(), sub, env),
        Some(N::CaseExpr(c)) => {
            walk_opt(cx, c.arg.as_deref(), sub, env)?;
            walk_all(cx, &c.args, sub, env)?;
            walk_opt(cx, c.defresult.as_deref(), sub, env)
        }
        Some(N::CaseWhen(w)) => {
            walk_opt(cx, w.expr.as_deref(), sub, env)?;
            walk_opt(cx, w.result.as_deref(), sub, env)
        }
        Some(N::CoalesceExpr(c)) => walk_all(cx, &c.args, sub, env),
        Some(N::MinMaxExpr(m)) => walk_all(cx, &m.args, sub, env),
        Some(N::RowExpr(r)) => walk_all(cx, &r.args, sub, env),
        Some(N::AArrayExpr(a)) => walk_all(cx, &a.elements, sub, env),
        Some(N::AIndirection(a)) => {
            walk_opt(cx, a.arg.as_deref(), sub, env)?;
            walk_all(cx, &a.indirection, sub, env)
        }
        Some(N::AIndices(i)) => {
            walk_opt(cx, i.lidx.as_deref(), Ctx::Limit, env)?;
            walk_opt(cx, i.uidx.as_deref(), Ctx::Limit, env)
        }
        Some(N::CollateClause(c)) => walk_opt(cx, c.arg.as_deref(), sub, env),
        Some(N::NamedArgExpr(a)) => walk_opt(cx, a.arg.as_deref(), sub, env),
        Some(N::SortBy(s)) => order_item(cx, s.node.as_deref(), env),
        Some(N::GroupingSet(g)) => g
            .content
            .iter()
            .try_for_each(|n| order_item(cx, Some(n), env)),
        Some(N::ResTarget(r)) => walk_opt(cx, r.val.as_deref(), ctx, env),
        Some(N::MultiAssignRef(m)) => walk_opt(cx, m.source.as_deref(), ctx, env),
        Some(N::XmlExpr(x)) => {
            walk_all(cx, &x.named_args, sub, env)?;
            walk_all(cx, &x.args, sub, env)
        }
        Some(N::XmlSerialize(x)) => {
            type_name_ref(cx, x.type_name.as_ref())?;
            walk_opt(cx, x.expr.as_deref(), sub, env)
        }
        Some(N::CurrentOfExpr(_)) => reject(
            Rule::TooComplex,
            "WHERE CURRENT OF is not supported; filter by key and tenant instead",
        ),
        Some(other) => reject(
            Rule::TooComplex,
            format!(
                "unsupported expression ({}) cannot be analyzed",
                node_name(other)
            ),
        ),
    }
}

/// ORDER BY / GROUP BY item: a bare integer is a position, anything else a predicate.
pub(crate) fn order_item(cx: &mut Cx, n: Option<&Node>, env: &Env) -> R<()> {
    match n.and_then(|n| n.node.as_ref()) {
        Some(N::AConst(AConst {
            val: Some(a_const::Val::Ival(_)),
            ..
        })) => Ok(()),
        Some(_) => walk_opt(cx, n, Ctx::Predicate, env),
        None => Ok(()),
    }
}

pub(crate) fn node_name(n: &N) -> String {
    let dbg = format!("{n:?}");
    dbg.split(['(', ' ', '{'])
        .next()
        .unwrap_or("node")
        .to_owned()
}

fn literal(cx: &Cx, c: &AConst, ctx: Ctx) -> R<()> {
    // 0 and 1 carry no data and Rails counter caches send `COALESCE(col, 0) + 1`.
    let trivial = matches!(&c.val, Some(a_const::Val::Ival(i)) if matches!(i.ival, 0 | 1));
    let data = !trivial
        && matches!(
            c.val,
            Some(
                a_const::Val::Ival(_)
                    | a_const::Val::Fval(_)
                    | a_const::Val::Sval(_)
                    | a_const::Val::Bsval(_)
            )
        );
    if c.isnull
        || !data
        || !cx.cfg.require_parameters
        || cx.catalog_literals
        || matches!(ctx, Ctx::Target | Ctx::Limit)
    {
        return Ok(());
    }
    reject_hint(
        Rule::LiteralNotParameter,
        format!(
            "literal value at position {} in a {} must be sent as a parameter",
            pos(c.location),
            ctx.describe()
        ),
        "bind the value as $n (extended protocol) instead of inlining it in the SQL text",
    )
}

/// `(schema, name)` of a function call; schema is "" when unqualified.
fn func_name(names: &[Node]) -> (String, String) {
    let parts: Vec<&str> = names.iter().filter_map(str_of).collect();
    match parts.as_slice() {
        [name] => (String::new(), (*name).to_owned()),
        [.., schema, name] => ((*schema).to_owned(), (*name).to_owned()),
        [] => (String::new(), String::new()),
    }
}

fn func_call(cx: &mut Cx, f: &FuncCall, ctx: Ctx, env: &Env) -> R<()> {
    let name = check_function(cx, &f.funcname, f.location, &f.args)?;
    let rel_arg = if cx.isolation() == Isolation::Schema {
        functions::relation_arg(&name, f.args.len())
    } else {
        None
    };
    if let Some(a) = rel_arg.and_then(|i| f.args.get(i)) {
        relation_name_arg(cx, &name, a, f.location)?;
    }
    if cx.isolation() == Isolation::Row {
        let arg = functions::relation_arg(&name, f.args.len()).and_then(|i| f.args.get(i));
        if let Some(a) = arg {
            row_relation_literal(cx, a, f.location, &format!("{name}()"), true)?;
        }
    }
    for (i, a) in f.args.iter().enumerate() {
        let is_const = matches!(a.node.as_ref(), Some(N::AConst(_)));
        if is_const && functions::literal_arg_allowed(&name, i, f.args.len()) {
            continue;
        }
        // Schema isolation: the relation name (checked above) and the other string arguments
        // of these functions (privilege, column, fork, role names) are syntax, not data.
        if rel_arg.is_some() && string_const(a).is_some() {
            continue;
        }
        walk(
            cx,
            a,
            if ctx == Ctx::Target {
                Ctx::Target
            } else {
                Ctx::Predicate
            },
            env,
        )?;
    }
    f.agg_order
        .iter()
        .try_for_each(|n| walk(cx, n, Ctx::Order, env))?;
    walk_opt(cx, f.agg_filter.as_deref(), Ctx::Predicate, env)?;
    match f.over.as_deref() {
        Some(w) => window(cx, w, env),
        None => Ok(()),
    }
}

pub(crate) fn window(cx: &mut Cx, w: &WindowDef, env: &Env) -> R<()> {
    w.partition_clause
        .iter()
        .try_for_each(|n| order_item(cx, Some(n), env))?;
    walk_all(cx, &w.order_clause, Ctx::Order, env)?;
    walk_opt(cx, w.start_offset.as_deref(), Ctx::Limit, env)?;
    walk_opt(cx, w.end_offset.as_deref(), Ctx::Limit, env)
}

/// Schema isolation: the relation argument of `nextval`, `has_table_privilege`, … must be a
/// string literal whose schema (if any) is shared, a system schema, or recorded for the
/// post-cache check against the session's schema. `nextval`/`currval` also accept
/// `pg_get_serial_sequence(…)` (its own relation argument is checked the same way).
fn relation_name_arg(cx: &mut Cx, func: &str, arg: &Node, location: i32) -> R<()> {
    if matches!(func, "nextval" | "currval") {
        if let Some(N::FuncCall(inner)) = arg.node.as_ref() {
            let (schema, name) = func_name(&inner.funcname);
            if (schema.is_empty() || schema == "pg_catalog") && name == "pg_get_serial_sequence" {
                return Ok(());
            }
        }
    }
    relation_name_literal(cx, arg, location, &format!("{func}()"))
}

/// Check a relation name given as a string literal (function argument or `regclass` cast).
/// The literal's text never appears in a reason.
fn relation_name_literal(cx: &mut Cx, arg: &Node, location: i32, what: &str) -> R<()> {
    let Some(text) = string_const(arg) else {
        return reject_hint(
            Rule::ForbiddenFunction,
            format!(
                "{what} at position {} names a relation with a non-literal value; in schema isolation the relation must be a string literal",
                pos(location)
            ),
            "write the relation name as a literal, e.g. nextval('orders_id_seq') or 'orders'::regclass, so tenantgate can check its schema",
        );
    };
    let invalid = || {
        reject_hint(
            Rule::ForbiddenFunction,
            format!(
                "the relation name of {what} at position {} is not a plain [schema.]relation name",
                pos(location)
            ),
            "use an unqualified name (search_path is set to your schema); numeric OIDs are not accepted",
        )
    };
    let Some(parts) = functions::split_qualified_name(&text) else {
        return invalid();
    };
    match parts.as_slice() {
        [rel] => {
            if cx.cat.is_isolated_relation(rel) {
                cx.note_unqualified(rel, true, location);
            }
            Ok(())
        }
        [schema, rel] => {
            if !(schema == "pg_catalog"
                || schema == "information_schema"
                || cx.is_shared_schema(schema))
            {
                cx.note_qualified(schema, Some(rel), None, location);
            }
            Ok(())
        }
        _ => invalid(),
    }
}

/// A schema-qualified type name (a cast, a column definition list) names a type of that schema,
/// e.g. a table's row type, which reveals the table's structure: checked like a qualified
/// relation. Schema isolation: shared and system schemas are fine, any other schema is recorded
/// for the post-cache check against the session's schema. Row isolation: a private schema is
/// rejected. Database isolation: not restricted.
pub(crate) fn type_name_ref(cx: &mut Cx, t: Option<&TypeName>) -> R<()> {
    let Some(t) = t else { return Ok(()) };
    let parts: Vec<&str> = t.names.iter().filter_map(str_of).collect();
    let [.., schema, _] = parts.as_slice() else {
        return Ok(());
    };
    if matches!(*schema, "pg_catalog" | "information_schema") || cx.is_shared_schema(schema) {
        return Ok(());
    }
    let what = format!("type \"{}\"", parts.join("."));
    match cx.isolation() {
        Isolation::Row if cx.is_private_schema(schema) => {
            select::reject_private_schema(&format!("{what} (at position {})", pos(t.location)))
        }
        Isolation::Schema => {
            cx.note_qualified(schema, None, Some(what), t.location);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Row isolation: a relation name given as a string literal must not name a private (tenant)
/// schema. Other values are not restricted in row isolation. The literal is never echoed.
fn row_relation_literal(
    cx: &Cx,
    arg: &Node,
    location: i32,
    what: &str,
    literal_only: bool,
) -> R<()> {
    let serial_sequence = matches!(arg.node.as_ref(), Some(N::FuncCall(inner))
        if func_name(&inner.funcname).1 == "pg_get_serial_sequence");
    if literal_only
        && string_const(arg).is_none()
        && !serial_sequence
        && cx.cat.has_private_schemas()
    {
        // With tenant schemas around, a relation name bound at run time (`nextval($1)`) could
        // name one of them: only literals can be checked.
        return reject_hint(
            Rule::ForbiddenFunction,
            format!(
                "{what} at position {} names a relation with a non-literal value; with tenant schemas configured the relation must be a string literal",
                pos(location)
            ),
            "write the relation name as a literal, e.g. nextval('orders_id_seq')",
        );
    }
    let parts = string_const(arg).and_then(|t| functions::split_qualified_name(&t));
    match parts.as_deref() {
        Some([.., schema, _]) if cx.is_private_schema(schema) => select::reject_private_schema(
            &format!("the relation name of {what} at position {}", pos(location)),
        ),
        _ => Ok(()),
    }
}

/// `regclass` / `pg_catalog.regclass` (not an array of it).
fn is_regclass(t: Option<&TypeName>) -> bool {
    t.is_some_and(|t| {
        let parts: Vec<&str> = t.names.iter().filter_map(str_of).collect();
        matches!(parts.as_slice(), ["regclass"] | ["pg_catalog", "regclass"])
    })
}

/// Allowlist check; returns the bare function name.
pub(crate) fn check_function(cx: &Cx, names: &[Node], location: i32, args: &[Node]) -> R<String> {
    let (schema, name) = func_name(names);
    let qualified = if schema.is_empty() {
        name.clone()
    } else {
        format!("{schema}.{name}")
    };
    let builtin_scope = schema.is_empty() || schema == "pg_catalog";
    if builtin_scope && name == "set_config" {
        let target = args.first().and_then(string_const).unwrap_or_default();
        let search_path =
            cx.isolation() == Isolation::Schema && target.eq_ignore_ascii_case("search_path");
        if cx.is_tenant_setting(&target) || is_reserved_setting(&target) || search_path {
            return reject(Rule::TenantSettingWrite, format!("set_config of \"{target}\" (at position {}) is not allowed: the proxy owns this setting", pos(location)));
        }
        // The name as Postgres sees it: the literal itself, or under a cast that keeps it
        // (`'TimeZone'::varchar(4)` is `Time`).
        let exact = args
            .first()
            .map(strip_safe_casts)
            .and_then(|a| match a.node.as_ref() {
                Some(N::AConst(_)) => string_const(a),
                _ => None,
            });
        if exact.is_some_and(|t| functions::is_reported_setting(&t)) {
            // Postgres reports these (ParameterStatus), so the proxy sees the change and keeps
            // it with the client's session like a SET (Django sets TimeZone this way).
            return Ok(name);
        }
        return reject_hint(
            Rule::ForbiddenFunction,
            format!("set_config (at position {}) is not allowed", pos(location)),
            "use SET/SET LOCAL so the proxy can track the setting",
        );
    }
    if builtin_scope && name == "pg_notify" && cx.cfg.allow_listen {
        return Ok(name);
    }
    let builtin = if builtin_scope {
        functions::builtin(&name)
    } else {
        Builtin::Unknown
    };
    if builtin == Builtin::Denied {
        return reject(Rule::ForbiddenFunction, format!("function {qualified} (at position {}) can run dynamic SQL, access files or other sessions, and is never allowed", pos(location)));
    }
    let configured = cx
        .cfg
        .allowed_functions
        .iter()
        .any(|a| a == &qualified || (schema.is_empty() && a == &format!("public.{name}")));
    let in_catalog = cx
        .cat
        .has_function(if schema.is_empty() { "public" } else { &schema }, &name);
    // Relation sizes of the tenant's own schema/database; in row isolation they would reveal
    // the size of all tenants' rows.
    let sizes = builtin_scope
        && cx.isolation() != Isolation::Row
        && functions::is_relation_size_function(&name);
    if builtin == Builtin::Allowed || configured || in_catalog || sizes {
        return Ok(name);
    }
    reject_hint(
        Rule::ForbiddenFunction,
        format!("function {qualified} (at position {}) is not in the allowlist", pos(location)),
        "add it to allowed_functions (or the catalog) if it neither runs dynamic SQL nor reads other tenants' rows",
    )
}

pub(crate) fn is_reserved_setting(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "role" | "session_authorization" | "row_security"
    )
}

pub(crate) fn string_const(n: &Node) -> Option<String> {
    match n.node.as_ref() {
        Some(N::AConst(AConst {
            val: Some(a_const::Val::Sval(s)),
            ..
        })) => Some(s.sval.clone()),
        Some(N::TypeCast(t)) => t.arg.as_deref().and_then(string_const),
        _ => None,
    }
}

/// Casts that keep a tenant value intact (no typmod: `::varchar(3)` would truncate).
fn safe_cast(t: Option<&TypeName>) -> bool {
    let Some(t) = t else { return false };
    let last = t.names.last().and_then(str_of).unwrap_or("");
    t.typmods.is_empty()
        && t.array_bounds.is_empty()
        && matches!(
            last,
            "uuid"
                | "text"
                | "varchar"
                | "int2"
                | "int4"
                | "int8"
                | "integer"
                | "bigint"
                | "smallint"
        )
}

/// `n` without the casts that keep a tenant value intact around it.
pub(crate) fn strip_safe_casts(mut n: &Node) -> &Node {
    while let Some(N::TypeCast(t)) = n.node.as_ref() {
        match t.arg.as_deref() {
            Some(a) if safe_cast(t.type_name.as_ref()) => n = a,
            _ => break,
        }
    }
    n
}

/// `current_setting('<tenant setting>'[, missing_ok])`.
fn is_tenant_setting_call(cx: &Cx, f: &FuncCall) -> bool {
    let (schema, name) = func_name(&f.funcname);
    let bool_arg = |n: &Node| {
        matches!(
            n.node.as_ref(),
            Some(N::AConst(AConst {
                val: Some(a_const::Val::Boolval(_)),
                ..
            }))
        )
    };
    (schema.is_empty() || schema == "pg_catalog")
        && name == "current_setting"
        && matches!(f.args.len(), 1 | 2)
        && f.args
            .first()
            .and_then(string_const)
            .is_some_and(|s| cx.is_tenant_setting(&s))
        && f.args.get(1).is_none_or(bool_arg)
        && f.over.is_none()
        && f.agg_filter.is_none()
}

/// Does `n` stand for several columns (`x.*`, `(row).*`, `(f(…)).*`)? Lists that pair values
/// with columns by position (VALUES rows, MERGE … INSERT values, row constructors compared
/// element-wise, a target list under a column-alias list) then shift, and the value checked for
/// the tenant column would not be the one that lands there (Postgres expands these in place).
pub(crate) fn expands_columns(n: &Node) -> bool {
    let star = |l: &Node| matches!(l.node.as_ref(), Some(N::AStar(_)));
    match n.node.as_ref() {
        Some(N::AIndirection(i)) => i.indirection.last().is_some_and(star),
        Some(N::ColumnRef(c)) => c.fields.last().is_some_and(star),
        _ => false,
    }
}

/// A value that can stand for the tenant: `$n`, the tenant setting, or (without
/// `require_parameters`) a literal checked against the session tenant after the cache.
pub(crate) fn tenant_value_term(cx: &Cx, n: &Node) -> Option<Term> {
    match n.node.as_ref() {
        Some(N::ParamRef(p)) => usize::try_from(p.number).ok().map(Term::Param),
        Some(N::TypeCast(t)) if safe_cast(t.type_name.as_ref()) => {
            t.arg.as_deref().and_then(|a| tenant_value_term(cx, a))
        }
        Some(N::FuncCall(f)) if is_tenant_setting_call(cx, f) => Some(Term::Setting),
        Some(N::AConst(AConst { val: Some(v), .. })) if !cx.cfg.require_parameters => match v {
            a_const::Val::Sval(s) => Some(Term::Literal(s.sval.clone())),
            a_const::Val::Ival(i) => Some(Term::Literal(i.ival.to_string())),
            _ => None,
        },
        _ => None,
    }
}

/// Term for one side of an equality: a resolvable column or a tenant value.
pub(crate) fn term(cx: &Cx, n: &Node, env: &Env, visible: Option<&[usize]>) -> Option<Term> {
    match n.node.as_ref() {
        Some(N::ColumnRef(c)) => {
            let fields: Option<Vec<&str>> = c.fields.iter().map(str_of).collect();
            resolve_column(&fields?, env, visible)
        }
        _ => tenant_value_term(cx, n),
    }
}

/// Top-level AND-conjuncts of a predicate.
pub(crate) fn conjuncts<'n>(n: &'n Node, out: &mut Vec<&'n Node>) {
    if let Some(N::BoolExpr(b)) = n.node.as_ref() {
        if b.boolop == BoolExprType::AndExpr as i32 {
            for a in &b.args {
                conjuncts(a, out);
            }
            return;
        }
    }
    out.push(n);
}

pub(crate) fn is_eq_operator(names: &[Node]) -> bool {
    let parts: Vec<&str> = names.iter().filter_map(str_of).collect();
    matches!(parts.as_slice(), ["="] | ["pg_catalog", "="])
}

/// `col IN (SELECT k …)` / `col = ANY (SELECT k …)` among the top-level conjuncts, where `k`
/// is a column of proven rows of a tenant table: an edge `col = Key(k)` (see
/// `Scope::key_proves`). The subquery is analysed here on a trial basis (the level is not solved
/// yet, so correlated references prove nothing); the walk analyses it again for real.
pub(crate) fn semijoin_edges(cx: &mut Cx, pred: &Node, env: &Env, out: &mut Vec<Edge>) {
    if cx.trial {
        return;
    }
    let mut cs = Vec::new();
    conjuncts(pred, &mut cs);
    for c in cs {
        let Some(N::SubLink(s)) = c.node.as_ref() else {
            continue;
        };
        let eq = s.oper_name.is_empty() || is_eq_operator(&s.oper_name);
        if s.sub_link_type != SubLinkType::AnySublink as i32 || !eq {
            continue;
        }
        let (Some(test), Some(N::SelectStmt(sel))) = (
            s.testexpr.as_deref(),
            s.subselect.as_deref().and_then(|n| n.node.as_ref()),
        ) else {
            continue;
        };
        let Some(col @ Term::Col(..)) = term(cx, test, env, None) else {
            continue;
        };
        let (params, literals) = (cx.tenant_params.clone(), cx.tenant_literals.clone());
        cx.trial = true;
        let cols = select::select(cx, sel, Some(env));
        cx.trial = false;
        (cx.tenant_params, cx.tenant_literals) = (params, literals);
        if let Ok(Some(cols)) = cols {
            if let [OutCol { key: Some(k), .. }] = cols.as_slice() {
                out.push(Edge {
                    a: col,
                    b: Term::Key(k.clone()),
                    deriv: Deriv::Any,
                });
            }
        }
    }
}
