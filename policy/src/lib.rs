//! tenantgate policy engine: SQL text + session -> [`Decision`].
//!
//! Pure (no I/O). A [`Policy`] is built once per configuration/catalog and shared by all
//! sessions through an `Arc`; decisions are cached per policy. See README.md for the rules.

mod analyze;
mod bind;
mod cache;
mod catalog;
mod config;
mod decision;
mod functions;

pub use catalog::Catalog;
pub use config::{Isolation, PolicyConfig, UnknownRelations};
pub use decision::{ArrayCast, Decision, Rejection, Rule, StatementKind, TenantArray, Verdict};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// What the policy knows about the session.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionCtx<'a> {
    /// `None` = tenant not yet known: statements touching tenant tables are rejected.
    pub tenant: Option<&'a str>,
    /// Schema isolation: the tenant's schema (the first entry of its `search_path`).
    pub schema: Option<&'a str>,
}

/// The policy engine. `Send + Sync`; share it via `Arc`. A config reload builds a new `Policy`
/// (new epoch, empty cache).
pub struct Policy {
    config: PolicyConfig,
    catalog: Catalog,
    epoch: u64,
    cache: cache::DecisionCache,
}

impl Policy {
    pub fn new(config: PolicyConfig, catalog: Catalog) -> Self {
        let cache = cache::DecisionCache::new(config.cache_entries);
        Self {
            config,
            catalog,
            epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
            cache,
        }
    }

    /// Check one SQL text (possibly several statements) for the given session.
    pub fn check(&self, sql: &str, ctx: &SessionCtx) -> Arc<Decision> {
        let analysis = if sql.len() > self.config.max_query_length {
            Arc::new(analyze::analyze(sql, &self.config, &self.catalog))
        } else {
            self.cache
                .get_or_insert(sql, || analyze::analyze(sql, &self.config, &self.catalog))
        };
        apply_session(&analysis, ctx, &self.catalog)
    }

    /// Like [`Policy::check`] for raw bytes: invalid UTF-8 and NUL bytes are `syntax-error`.
    pub fn check_bytes(&self, sql: &[u8], ctx: &SessionCtx) -> Arc<Decision> {
        match std::str::from_utf8(sql) {
            Ok(s) if !s.contains('\0') => self.check(s, ctx),
            Ok(_) => Arc::new(Decision::reject(
                Rule::SyntaxError,
                "statement contains a NUL byte".into(),
                None,
            )),
            Err(e) => Arc::new(Decision::reject(
                Rule::SyntaxError,
                format!("statement is not valid UTF-8 (byte {})", e.valid_up_to()),
                None,
            )),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// (hits, misses) of the decision cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.cache.stats()
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }
}

/// Apply the tenant-dependent parts after the (tenant-independent) cache lookup.
fn apply_session(a: &analyze::Analysis, ctx: &SessionCtx, cat: &Catalog) -> Arc<Decision> {
    let d = &a.decision;
    if !d.is_allowed() || !a.touches_tenant && a.tenant_literals.is_empty() {
        return Arc::clone(d);
    }
    let Some(tenant) = ctx.tenant else {
        let reason =
            "the session tenant is not known yet; statements on tenant tables are rejected"
                .to_owned();
        return Arc::new(d.rejected_as(
            Rule::TenantNotSet,
            reason,
            Some("authenticate with a tenant or SET tenantgate.tenant first".into()),
        ));
    };
    if let Some(r) = a
        .qualified_schemas
        .iter()
        .find(|r| ctx.schema != Some(r.schema.as_str()))
    {
        let what = match &r.display {
            Some(what) => what.clone(),
            None => format!(
                "the relation name at position {} (a regclass cast or function argument)",
                analyze::pos(r.location)
            ),
        };
        return Arc::new(d.rejected_as(
            Rule::CrossTenantSchema,
            match ctx.schema {
                Some(_) => format!(
                    "{what} is in another tenant's schema; use unqualified names (search_path is set to your schema)"
                ),
                None => format!(
                    "{what} names a tenant schema but the session's schema is not known; use unqualified names (search_path is set to your schema)"
                ),
            },
            Some("drop the schema qualifier: the proxy sets search_path to the tenant's schema".into()),
        ));
    }
    if a.needs_schema && ctx.schema.is_none() {
        return Arc::new(d.rejected_as(
            Rule::TenantNotSet,
            "the session tenant's schema is not known; statements on tenant-schema relations are rejected"
                .into(),
            Some("the proxy sets the tenant's schema when the tenant is known".into()),
        ));
    }
    if let Some(own) = ctx.schema {
        if let Some(d) = missing_in_own_schema(a, own, cat) {
            return Arc::new(d);
        }
    }
    if let Some(v) = a
        .tenant_literals
        .iter()
        .find(|v| !bind::tenant_matches(v, tenant))
    {
        let _ = v;
        return Arc::new(d.rejected_as(
            Rule::TenantValueMismatch,
            "a literal compared with the tenant column is not the session tenant".into(),
            None,
        ));
    }
    Arc::clone(d)
}

/// Schema isolation: every tenant-schema relation the statement names without a schema, or with
/// the session's own schema, must exist in that schema. Isolated names are the union over all
/// tenant schemas; on the server a name missing from the session's schema falls through
/// `search_path` to the shared schemas (e.g. the row tenants' `public.orders`).
fn missing_in_own_schema(a: &analyze::Analysis, own: &str, cat: &Catalog) -> Option<Decision> {
    let what = |name: &str, literal: bool, location: i32| {
        if literal {
            format!(
                "the relation name at position {} (a regclass cast or function argument)",
                analyze::pos(location)
            )
        } else {
            format!("relation \"{name}\"")
        }
    };
    let missing = a
        .isolated_names
        .iter()
        .find(|n| !cat.schema_has_relation(own, &n.name))
        .map(|n| what(&n.name, n.literal, n.location))
        .or_else(|| {
            a.qualified_schemas.iter().find_map(|r| {
                let rel = r.relation.as_deref()?;
                (r.schema == own && !cat.schema_has_relation(own, rel)).then(|| match &r.display {
                    Some(d) => d.clone(),
                    None => what(rel, true, r.location),
                })
            })
        })?;
    Some(a.decision.rejected_as(
        Rule::UnknownRelation,
        format!("{missing} does not exist in your schema {own}"),
        Some(
            "only your own schema's relations are reachable; ask an administrator to create it there (tenantgate reads the catalog on reload)"
                .into(),
        ),
    ))
}
