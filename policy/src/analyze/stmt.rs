//! Top-level statement dispatch: DML goes to the query analysis, utility statements are
//! classified and allowed or rejected here.

use super::expr::{is_reserved_setting, str_of, string_const};
use super::scope::{Env, Scope};
use super::select::{relation_kind, select};
use super::{reject, reject_hint, write, Cx, R};
use crate::catalog::RelKind;
use crate::config::Isolation;
use crate::decision::{Rule, StatementKind};
use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::{
    CopyStmt, DiscardMode, Node, TransactionStmtKind, VariableSetKind, VariableSetStmt,
};

/// `DECLARE … WITH HOLD` (CURSOR_OPT_HOLD in parsenodes.h).
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// The statement kind, without analysing it (also used for rejected statements).
pub(crate) fn kind_of(node: Option<&Node>) -> StatementKind {
    match node.and_then(|n| n.node.as_ref()) {
        Some(N::SelectStmt(_)) => StatementKind::Select,
        Some(N::InsertStmt(_)) => StatementKind::Insert,
        Some(N::UpdateStmt(_)) => StatementKind::Update,
        Some(N::DeleteStmt(_)) => StatementKind::Delete,
        Some(N::MergeStmt(_)) => StatementKind::Merge,
        Some(N::CopyStmt(_)) => StatementKind::Copy,
        Some(N::TransactionStmt(_)) => StatementKind::Transaction,
        Some(N::VariableSetStmt(v)) => set_kind(v),
        Some(N::DiscardStmt(_)) => StatementKind::Discard,
        Some(N::VariableShowStmt(_)) => StatementKind::Show,
        Some(N::ListenStmt(_)) => StatementKind::Listen,
        Some(N::UnlistenStmt(_)) => StatementKind::Unlisten,
        Some(N::NotifyStmt(_)) => StatementKind::Notify,
        Some(N::PrepareStmt(_)) => StatementKind::Prepare,
        Some(N::ExecuteStmt(_)) => StatementKind::Execute,
        Some(N::DeallocateStmt(_)) => StatementKind::Deallocate,
        Some(N::DeclareCursorStmt(d)) => StatementKind::DeclareCursor {
            with_hold: d.options & CURSOR_OPT_HOLD != 0,
        },
        _ => StatementKind::Other,
    }
}

fn set_kind(v: &VariableSetStmt) -> StatementKind {
    let name = v.name.to_ascii_lowercase();
    if v.kind == VariableSetKind::VarResetAll as i32 {
        StatementKind::Reset { name: None }
    } else if v.kind == VariableSetKind::VarReset as i32 {
        StatementKind::Reset { name: Some(name) }
    } else {
        StatementKind::Set {
            name,
            local: v.is_local,
            to_default: v.kind == VariableSetKind::VarSetDefault as i32,
        }
    }
}

/// Analyse one top-level statement.
pub(crate) fn statement(cx: &mut Cx, node: Option<&Node>) -> R<StatementKind> {
    let kind = kind_of(node);
    let Some(n) = node.and_then(|n| n.node.as_ref()) else {
        return Ok(StatementKind::Other);
    };
    let empty = Scope::default();
    let env = Env {
        scope: &empty,
        ctes: &[],
        parent: None,
    };
    match n {
        N::SelectStmt(s) => select(cx, s, None).map(|_| ()),
        N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) | N::MergeStmt(_) => {
            data_modifying(cx, n, &env)
        }
        N::CopyStmt(c) => copy(cx, c),
        N::VariableSetStmt(v) => set(cx, v),
        N::ExplainStmt(e) => {
            // `ANALYZE`, `ANALYZE true`, `ANALYZE on`, …: anything but an explicit false.
            let off = |arg: &Node| match arg.node.as_ref() {
                Some(N::String(v)) => {
                    matches!(v.sval.to_ascii_lowercase().as_str(), "false" | "off" | "0")
                }
                Some(N::Boolean(b)) => !b.boolval,
                Some(N::Integer(i)) => i.ival == 0,
                _ => string_const(arg).is_some_and(|v| v.eq_ignore_ascii_case("false")),
            };
            let analyze = e.options.iter().any(|o| {
                matches!(o.node.as_ref(), Some(N::DefElem(d))
                    if d.defname.eq_ignore_ascii_case("analyze") && !d.arg.as_deref().is_some_and(off))
            });
            if analyze && cx.isolation() == Isolation::Row {
                return reject_hint(
                    Rule::ForbiddenStatement,
                    "EXPLAIN ANALYZE reports how many rows its filters removed, other tenants' rows included",
                    "run EXPLAIN without ANALYZE, or EXPLAIN ANALYZE as a bypass_policy user",
                );
            }
            statement(cx, e.query.as_deref()).map(|_| ())
        }
        N::DeclareCursorStmt(d) => statement(cx, d.query.as_deref()).map(|_| ()),
        other => utility(cx, other),
    }?;
    Ok(kind)
}

/// INSERT/UPDATE/DELETE/MERGE, at top level or inside a WITH.
pub(crate) fn data_modifying(cx: &mut Cx, n: &N, env: &Env) -> R<()> {
    match n {
        N::InsertStmt(i) => write::insert(cx, i, env),
        N::UpdateStmt(u) => write::update(cx, u, env),
        N::DeleteStmt(d) => write::delete(cx, d, env),
        N::MergeStmt(m) => write::merge(cx, m, env),
        _ => reject(Rule::TooComplex, "unsupported statement inside WITH"),
    }
}

fn set(cx: &Cx, v: &VariableSetStmt) -> R<()> {
    let name = v.name.to_ascii_lowercase();
    if v.kind == VariableSetKind::VarResetAll as i32 {
        return reject_hint(
            Rule::TenantSettingWrite,
            "RESET ALL would clear the tenant setting",
            "the proxy resets session state itself; RESET individual settings instead",
        );
    }
    if name == "role" || name == "session_authorization" {
        return reject(
            Rule::RoleChange,
            format!("changing {name} is not allowed through tenantgate"),
        );
    }
    if name == "search_path" && cx.isolation() == Isolation::Schema {
        return reject_hint(
            Rule::TenantSettingWrite,
            "the proxy owns search_path in schema isolation (it points at your tenant's schema)",
            "use unqualified relation names; the proxy sets search_path for each tenant",
        );
    }
    if name == "search_path" && cx.isolation() == Isolation::Row {
        row_search_path(cx, v)?;
    }
    if cx.is_tenant_setting(&name) || is_reserved_setting(&name) {
        return reject(
            Rule::TenantSettingWrite,
            format!("setting \"{name}\" is owned by the proxy and cannot be changed by the client"),
        );
    }
    Ok(())
}

/// Row isolation resolves unqualified names in `public` (the shared schemas): `SET search_path`
/// / `SET SCHEMA` may only name the shared schemas and `pg_catalog`. Elements are compared
/// exactly as the parser leaves them (unquoted identifiers folded, quoted identifiers and string
/// constants as written; Postgres quotes a string element as one identifier). `SET … TO
/// DEFAULT`, `FROM CURRENT` and `RESET` restore the server default and are fine.
fn row_search_path(cx: &Cx, v: &VariableSetStmt) -> R<()> {
    if v.kind != VariableSetKind::VarSetValue as i32 {
        return Ok(());
    }
    let allowed =
        |n: &Node| string_const(n).is_some_and(|s| s == "pg_catalog" || cx.is_shared_schema(&s));
    if !v.args.is_empty() && v.args.iter().all(allowed) {
        return Ok(());
    }
    let shared = cx.cfg.shared_schemas.join(", ");
    reject_hint(
        Rule::TenantSettingWrite,
        format!(
            "in row isolation search_path may only name the shared schemas: {shared} (and pg_catalog); unqualified names must resolve there"
        ),
        "use schema-qualified names for other shared schemas instead of changing search_path",
    )
}

fn copy(cx: &mut Cx, c: &CopyStmt) -> R<()> {
    if c.is_program {
        return reject(
            Rule::Copy,
            "COPY … PROGRAM runs a shell command on the server",
        );
    }
    if !c.filename.is_empty() {
        return reject(
            Rule::Copy,
            "COPY to or from a server file is not allowed; use STDIN/STDOUT",
        );
    }
    if let Some(q) = c.query.as_deref() {
        return statement(cx, Some(q)).map(|_| ());
    }
    let Some(rel) = c.relation.as_ref() else {
        return reject(Rule::TooComplex, "COPY without relation or query");
    };
    match relation_kind(cx, rel)?.0 {
        RelKind::Tenant { column } => {
            cx.touches_tenant = true;
            let hint = format!(
                "use COPY (SELECT … FROM {} WHERE {column} = current_setting('{}')) TO STDOUT",
                rel.relname, cx.cfg.tenant_setting
            );
            reject_hint(
                Rule::Copy,
                format!(
                    "COPY of tenant table \"{}\" cannot be restricted to one tenant",
                    rel.relname
                ),
                hint,
            )
        }
        RelKind::Isolated => {
            // The tenant's own relation: COPY FROM STDIN / TO STDOUT are fine; a COPY FROM
            // WHERE condition is checked like any predicate (functions, literals).
            let empty = Scope::default();
            let env = Env {
                scope: &empty,
                ctes: &[],
                parent: None,
            };
            super::expr::walk_opt(
                cx,
                c.where_clause.as_deref(),
                super::expr::Ctx::Predicate,
                &env,
            )
        }
        _ if c.is_from => reject(
            Rule::SharedTableWrite,
            format!(
                "COPY FROM into \"{}\" writes a relation shared by all tenants",
                rel.relname
            ),
        ),
        _ => Ok(()),
    }
}

fn utility(cx: &mut Cx, n: &N) -> R<()> {
    match n {
        N::TransactionStmt(t) => transaction(t.kind),
        N::VariableShowStmt(_) | N::FetchStmt(_) | N::ClosePortalStmt(_) | N::UnlistenStmt(_) => {
            Ok(())
        }
        N::DiscardStmt(d) => {
            let what = if d.target == DiscardMode::DiscardAll as i32 {
                "DISCARD ALL"
            } else {
                "DISCARD"
            };
            reject_hint(
                Rule::TenantSettingWrite,
                format!("{what} would reset session state owned by the proxy"),
                "the proxy resets sessions itself when they are released",
            )
        }
        N::ListenStmt(_) | N::NotifyStmt(_) if cx.cfg.allow_listen => Ok(()),
        N::ListenStmt(_) | N::NotifyStmt(_) => reject(
            Rule::ForbiddenStatement,
            "LISTEN/NOTIFY channels are shared by all tenants (enable allow_listen to permit)",
        ),
        N::PrepareStmt(_) | N::ExecuteStmt(_) | N::DeallocateStmt(_) => reject_hint(
            Rule::ForbiddenStatement,
            "SQL-level PREPARE/EXECUTE/DEALLOCATE is not supported through tenantgate",
            "use protocol-level prepared statements (Parse/Bind), which every driver supports",
        ),
        N::CallStmt(c) => call(cx, c),
        N::DoStmt(_) => reject(
            Rule::ForbiddenStatement,
            "DO blocks run arbitrary procedural code",
        ),
        N::LockStmt(_) => reject(
            Rule::ForbiddenStatement,
            "LOCK TABLE locks rows of all tenants",
        ),
        N::TruncateStmt(_) => reject(
            Rule::ForbiddenStatement,
            "TRUNCATE removes the rows of all tenants",
        ),
        N::VacuumStmt(_)
        | N::ClusterStmt(_)
        | N::ReindexStmt(_)
        | N::CheckPointStmt(_)
        | N::LoadStmt(_)
        | N::AlterSystemStmt(_) => reject(
            Rule::ForbiddenStatement,
            "maintenance/administration statements are not allowed for tenant sessions",
        ),
        other if is_ddl(other) => reject(
            Rule::Ddl,
            "schema changes (DDL) are not allowed for tenant sessions",
        ),
        other => reject(
            Rule::ForbiddenStatement,
            format!(
                "statement type {} is not allowed for tenant sessions",
                super::expr::node_name(other)
            ),
        ),
    }
}

fn transaction(kind: i32) -> R<()> {
    let prepared = [
        TransactionStmtKind::TransStmtPrepare,
        TransactionStmtKind::TransStmtCommitPrepared,
        TransactionStmtKind::TransStmtRollbackPrepared,
    ];
    if prepared.iter().any(|k| *k as i32 == kind) {
        return reject(
            Rule::ForbiddenStatement,
            "two-phase commit (PREPARE TRANSACTION) is not supported through tenantgate",
        );
    }
    Ok(())
}

fn call(cx: &mut Cx, c: &pg_query::protobuf::CallStmt) -> R<()> {
    let Some(f) = c.funccall.as_deref() else {
        return reject(Rule::TooComplex, "CALL without procedure");
    };
    let parts: Vec<&str> = f.funcname.iter().filter_map(str_of).collect();
    let qualified = parts.join(".");
    let bare = parts.last().copied().unwrap_or("");
    let allowed = cx
        .cfg
        .allowed_procedures
        .iter()
        .any(|p| *p == qualified || (parts.len() == 1 && *p == format!("public.{bare}")));
    if !allowed {
        return reject_hint(
            Rule::ForbiddenFunction,
            format!("procedure {qualified} is not in allowed_procedures"),
            "add it to allowed_procedures if it enforces tenant isolation itself",
        );
    }
    let empty = Scope::default();
    let env = Env {
        scope: &empty,
        ctes: &[],
        parent: None,
    };
    super::expr::walk_all(cx, &f.args, super::expr::Ctx::Value, &env)
}

fn is_ddl(n: &N) -> bool {
    matches!(
        n,
        N::CreateStmt(_)
            | N::AlterTableStmt(_)
            | N::DropStmt(_)
            | N::GrantStmt(_)
            | N::GrantRoleStmt(_)
            | N::CommentStmt(_)
            | N::SecLabelStmt(_)
            | N::RenameStmt(_)
            | N::IndexStmt(_)
            | N::ViewStmt(_)
            | N::CreateTableAsStmt(_)
            | N::CreateFunctionStmt(_)
            | N::AlterFunctionStmt(_)
            | N::CreateSchemaStmt(_)
            | N::CreateSeqStmt(_)
            | N::AlterSeqStmt(_)
            | N::CreateExtensionStmt(_)
            | N::AlterExtensionStmt(_)
            | N::CreateRoleStmt(_)
            | N::AlterRoleStmt(_)
            | N::DropRoleStmt(_)
            | N::AlterRoleSetStmt(_)
            | N::CreatedbStmt(_)
            | N::DropdbStmt(_)
            | N::AlterDatabaseStmt(_)
            | N::AlterDatabaseSetStmt(_)
            | N::CreateTrigStmt(_)
            | N::CreatePolicyStmt(_)
            | N::AlterPolicyStmt(_)
            | N::RuleStmt(_)
            | N::DefineStmt(_)
            | N::CompositeTypeStmt(_)
            | N::CreateEnumStmt(_)
            | N::AlterEnumStmt(_)
            | N::CreateRangeStmt(_)
            | N::CreateDomainStmt(_)
            | N::AlterDomainStmt(_)
            | N::AlterOwnerStmt(_)
            | N::AlterObjectSchemaStmt(_)
            | N::RefreshMatViewStmt(_)
            | N::AlterDefaultPrivilegesStmt(_)
            | N::DropOwnedStmt(_)
            | N::ReassignOwnedStmt(_)
            | N::CreateForeignTableStmt(_)
            | N::CreateForeignServerStmt(_)
            | N::CreateUserMappingStmt(_)
            | N::ImportForeignSchemaStmt(_)
            | N::CreateEventTrigStmt(_)
            | N::CreatePublicationStmt(_)
            | N::CreateSubscriptionStmt(_)
            | N::CreateStatsStmt(_)
            | N::CreateCastStmt(_)
            | N::CreateTableSpaceStmt(_)
            | N::DropTableSpaceStmt(_)
            | N::AlterTypeStmt(_)
            | N::CreatePlangStmt(_)
    )
}
