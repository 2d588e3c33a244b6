//! Where the session's tenant lives (row, schema or database isolation) and what follows
//! from it: the pool transactions run on, the proxy-owned `search_path`, and the policy that
//! screens statements.
//!
//! The placement is resolved at login, at a tenant switch, and — in transaction mode — again
//! between transactions after a configuration reload, so moving a tenant to another strategy
//! takes effect at its next transaction while the one in flight finishes where it started.

use super::Session;
use crate::app::App;
use crate::pool::Pool;
use crate::protocol::sqlstate;
use crate::protocol::PgError;
use std::sync::Arc;
use tenantgate_config::{Config, Placement};
use tenantgate_policy::SessionCtx;

pub(super) const SEARCH_PATH: &str = "search_path";

/// The `search_path` the proxy gives a schema-isolated tenant: its schema, then the shared
/// schemas. Schema names are validated identifiers (lower-case letters, digits, `_`).
pub(super) fn search_path(config: &Config, schema: &str) -> String {
    std::iter::once(schema)
        .chain(config.tenancy.shared_schemas.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Row isolation: may a client's own `search_path` (a startup parameter) stand? The policy reads
/// unqualified names as the shared schemas', so only those (and pg_catalog) may be named —
/// never a tenant's schema.
pub(super) fn row_search_path_ok(config: &Config, value: &str) -> bool {
    value
        .split(',')
        .map(|s| s.trim().trim_matches('"'))
        .filter(|s| !s.is_empty())
        .all(|s| s == "pg_catalog" || config.tenancy.shared_schemas.iter().any(|x| x == s))
}

/// The placement of `tenant` (row isolation while no tenant is known) and its pool.
pub(super) fn resolve(
    app: &App,
    database: &str,
    tenant: Option<&str>,
) -> Result<(Placement, Arc<Pool>), PgError> {
    let config = app.config();
    let placement = match tenant {
        None => Placement::Row,
        Some(t) => config.placement(t).map_err(|message| {
            PgError::error(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("tenantgate: {message}"),
            )
        })?,
    };
    let pool = app.placement_pool(database, &placement).ok_or_else(|| {
        PgError::fatal(sqlstate::ADMIN_SHUTDOWN, "tenantgate: database was removed")
    })?;
    Ok((placement, pool))
}

impl Session {
    /// The placement statements run with now: a `SET LOCAL` tenant's inside a transaction.
    pub(super) fn current_placement(&self) -> &Placement {
        self.local_placement.as_ref().unwrap_or(&self.placement)
    }

    /// The policy context for the current tenant and placement.
    pub(super) fn policy_ctx(&self) -> SessionCtx<'_> {
        SessionCtx {
            tenant: self.current_tenant(),
            schema: self.current_placement().schema(),
        }
    }

    /// Between transactions: follow a reload that moved the tenant (or changed its
    /// `search_path`). Transaction mode moves the session; a session-mode session, which
    /// holds its server, is ended (57P01) so the client reconnects into the new placement —
    /// never screened by a policy for a place its server is not in.
    pub(super) fn refresh_placement(&mut self) -> Result<(), PgError> {
        if self.app.config_is(&self.placed_with) {
            return Ok(());
        }
        self.placed_with = self.app.config();
        let (placement, pool) = resolve(&self.app, &self.id.database, self.tenant.as_deref())?;
        let path = placement
            .schema()
            .map(|s| search_path(&self.placed_with, s));
        if placement == self.placement && path == self.search_path {
            return Ok(());
        }
        tracing::info!(conn = self.id.conn_id, tenant = ?self.tenant, from = ?self.placement,
            to = ?placement, "tenant placement changed by reload");
        if !self.tx_mode {
            return Err(PgError::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "tenantgate: a configuration reload moved this tenant; reconnect",
            ));
        }
        self.set_placement(placement, pool);
        Ok(())
    }

    /// Moves the session to `placement`: its pool, its `search_path`, and its prepared
    /// statements re-checked against the placement's policy.
    pub(super) fn set_placement(&mut self, placement: Placement, pool: Arc<Pool>) {
        let was_schema = self.search_path.is_some();
        self.search_path = placement
            .schema()
            .map(|s| search_path(&self.app.config(), s));
        self.placement = placement;
        self.id.pool = pool;
        let mut desired = std::mem::take(&mut self.desired);
        if was_schema {
            desired.retain(|(k, _)| k != SEARCH_PATH);
        }
        self.desired = self.with_tenant(desired);
        self.recheck_statements();
    }

    /// `settings` with the proxy-owned ones for the session tenant: the tenant setting, and
    /// `search_path` under schema isolation.
    pub(super) fn with_tenant(&self, settings: Vec<(String, String)>) -> Vec<(String, String)> {
        let config = self.app.config();
        let setting = &config.tenancy.setting;
        let mut settings = settings;
        settings.retain(|(k, _)| !k.eq_ignore_ascii_case(setting));
        if let Some(t) = &self.tenant {
            settings.push((setting.clone(), t.clone()));
        }
        if let Some(path) = &self.search_path {
            settings.retain(|(k, _)| k != SEARCH_PATH);
            settings.push((SEARCH_PATH.to_string(), path.clone()));
        }
        settings.sort();
        settings
    }

    /// Re-screens the client's prepared statements after the tenant or its placement changed:
    /// a statement that was fine for the old tenant (a literal, a schema-qualified name) may
    /// not be for the new one, and is then refused at Bind.
    pub(super) fn recheck_statements(&mut self) {
        if !self.policy_applies() {
            return;
        }
        let Some(policy) = self
            .app
            .policy(&self.id.database, self.current_placement().isolation())
        else {
            return;
        };
        let placement = self.local_placement.as_ref().unwrap_or(&self.placement);
        let ctx = SessionCtx {
            tenant: self.local_tenant.as_deref().or(self.tenant.as_deref()),
            schema: placement.schema(),
        };
        for stmt in self.statements.all_mut() {
            // Parses queued behind an unanswered one of the same name too.
            let mut next = Some(stmt);
            while let Some(s) = next {
                if let Some(sql) = &s.sql {
                    s.decision = Some(policy.check(sql, &ctx));
                }
                next = s.successor.as_deref_mut();
            }
        }
    }
}
