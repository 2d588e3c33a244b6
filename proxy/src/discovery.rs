//! Builds the policy [`Catalog`] of a database from the configuration and, when a server is
//! reachable, from its system catalog.
//!
//! Safe defaults: a relation becomes a tenant table when it has the tenant column (or is
//! listed); shared tables are only those named in `shared_tables`; everything else stays
//! unknown to the policy and is rejected. A view or lookup table without the tenant column can
//! hold other tenants' data, so it is never readable without being named as shared.

use crate::server::{self, ServerConn, ServerError, ServerTarget};
use crate::session::quote_literal;
use tenantgate_config::{Config, Isolation, TablesSpec};
use tenantgate_policy::{Catalog, Policy, PolicyConfig, UnknownRelations};

/// One relation found on the server.
#[derive(Debug, Clone)]
pub struct FoundRelation {
    pub schema: String,
    pub name: String,
    pub has_tenant_column: bool,
}

/// What discovery read from a server.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    pub relations: Vec<FoundRelation>,
    /// (schema, table, columns)
    pub unique_keys: Vec<(String, String, Vec<String>)>,
    /// (schema, table, columns, ref schema, ref table, ref columns)
    pub foreign_keys: Vec<ForeignKeyRow>,
}

pub type ForeignKeyRow = (String, String, Vec<String>, String, String, Vec<String>);

const SYSTEM_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// Column names of an attribute-number array, joined by the unit separator (chr(31)).
fn columns_of(rel: &str, array: &str) -> String {
    format!(
        "array_to_string(ARRAY(SELECT a.attname FROM unnest({array}) WITH ORDINALITY k(attnum, ord) \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = {rel} AND a.attnum = k.attnum ORDER BY k.ord), chr(31))"
    )
}

fn split_columns(s: &str) -> Vec<String> {
    s.split('\u{1f}').map(str::to_string).collect()
}

/// Reads relations, unique keys and foreign keys from a server. Only keys that always hold are
/// used as proofs: valid, immediate unique indexes without predicates or expressions, and
/// validated, non-deferrable foreign keys.
pub async fn discover(
    conn: &mut ServerConn,
    tenant_column: &str,
) -> Result<Discovered, ServerError> {
    let relations_sql = format!(
        "SELECT n.nspname, c.relname, EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
         WHERE a.attrelid = c.oid AND a.attname = {col} AND a.attnum > 0 AND NOT a.attisdropped) \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {SYSTEM_SCHEMAS}",
        col = quote_literal(tenant_column)
    );
    let unique_sql = format!(
        "SELECT n.nspname, c.relname, {cols} FROM pg_catalog.pg_index i \
         JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE i.indisunique AND i.indisvalid AND i.indimmediate AND i.indpred IS NULL \
         AND i.indexprs IS NULL AND {SYSTEM_SCHEMAS}",
        cols = columns_of("c.oid", "i.indkey::int2[]")
    );
    let fk_sql = format!(
        "SELECT n.nspname, c.relname, {cols}, rn.nspname, rc.relname, {ref_cols} \
         FROM pg_catalog.pg_constraint con \
         JOIN pg_catalog.pg_class c ON c.oid = con.conrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid \
         JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace \
         WHERE con.contype = 'f' AND con.convalidated AND NOT con.condeferrable AND {SYSTEM_SCHEMAS}",
        cols = columns_of("con.conrelid", "con.conkey"),
        ref_cols = columns_of("con.confrelid", "con.confkey"),
    );
    let text = |r: &mut Vec<Option<String>>, i: usize| {
        r.get_mut(i).and_then(Option::take).unwrap_or_default()
    };
    let mut found = Discovered::default();
    for mut r in conn.query_rows(&relations_sql).await? {
        found.relations.push(FoundRelation {
            schema: text(&mut r, 0),
            name: text(&mut r, 1),
            has_tenant_column: text(&mut r, 2) == "t",
        });
    }
    for mut r in conn.query_rows(&unique_sql).await? {
        found.unique_keys.push((
            text(&mut r, 0),
            text(&mut r, 1),
            split_columns(&text(&mut r, 2)),
        ));
    }
    for mut r in conn.query_rows(&fk_sql).await? {
        found.foreign_keys.push((
            text(&mut r, 0),
            text(&mut r, 1),
            split_columns(&text(&mut r, 2)),
            text(&mut r, 3),
            text(&mut r, 4),
            split_columns(&text(&mut r, 5)),
        ));
    }
    Ok(found)
}

/// Connects to a database's server and discovers its catalog.
pub async fn discover_target(
    target: &ServerTarget,
    tenant_column: &str,
) -> Result<Discovered, ServerError> {
    let mut conn = server::connect(target, &[]).await?;
    discover(&mut conn, tenant_column).await
}

/// `schema.table` or `table` (schema `public`), as written in the configuration.
fn split_name(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((s, t)) => (s.to_string(), t.to_string()),
        None => ("public".to_string(), name.to_string()),
    }
}

/// Builds the catalog for a database from the configuration and what discovery found.
/// `None` means no discovery: configured tables only.
pub fn build_catalog(config: &Config, found: Option<&Discovered>) -> Catalog {
    let t = &config.tenancy;
    let mut catalog = Catalog::new(&t.column);
    let shared: Vec<(String, String)> = t.shared_tables.iter().map(|n| split_name(n)).collect();
    let overrides: Vec<((String, String), String)> = t
        .table_overrides
        .iter()
        .map(|o| (split_name(&o.name), o.column.clone()))
        .collect();
    let listed: Vec<(String, String)> = match &t.tables {
        TablesSpec::List(l) => l.iter().map(|n| split_name(n)).collect(),
        TablesSpec::Auto(_) => Vec::new(),
    };
    for (s, n) in &shared {
        catalog.add_shared_table(s, n);
    }
    for ((s, n), col) in &overrides {
        catalog.add_tenant_table(s, n, col);
    }
    for (s, n) in &listed {
        if !overrides.iter().any(|(k, _)| k.0 == *s && k.1 == *n) {
            catalog.add_tenant_table(s, n, &t.column);
        }
    }
    add_private_schemas(config, &mut catalog);
    let Some(found) = found else {
        return catalog;
    };
    // Tenant schemas are not part of the shared catalog, even where their tables have the
    // tenant column (a moved tenant keeps it): they are reached only by their own tenant.
    let shared_part = |schema: &str| !is_tenant_schema(config, schema);
    let configured = |s: &str, n: &str| {
        shared.iter().any(|k| k.0 == s && k.1 == n)
            || overrides.iter().any(|(k, _)| k.0 == s && k.1 == n)
            || listed.iter().any(|k| k.0 == s && k.1 == n)
    };
    for r in found.relations.iter().filter(|r| shared_part(&r.schema)) {
        if !configured(&r.schema, &r.name) && r.has_tenant_column {
            catalog.add_tenant_table(&r.schema, &r.name, &t.column);
        }
    }
    for (s, n, cols) in found.unique_keys.iter().filter(|k| shared_part(&k.0)) {
        let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
        catalog.add_unique_key(s, n, &cols);
    }
    for (s, n, cols, rs, rn, rcols) in found.foreign_keys.iter().filter(|k| shared_part(&k.0)) {
        let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
        let rcols: Vec<&str> = rcols.iter().map(String::as_str).collect();
        catalog.add_foreign_key(s, n, &cols, rs, rn, &rcols);
    }
    catalog
}

/// The `[tenancy] schema` template as (prefix, suffix) around `{tenant}`, when any tenant uses
/// schema isolation.
fn schema_pattern(config: &Config) -> Option<(&str, &str)> {
    config
        .uses_isolation(Isolation::Schema)
        .then(|| config.tenancy.schema.split_once("{tenant}"))
        .flatten()
}

/// Is `schema` a tenant's (or the template's): a name the `schema` template makes, a
/// `[[tenants]]` schema, or `template_schema`? Shared schemas never are.
fn is_tenant_schema(config: &Config, schema: &str) -> bool {
    let t = &config.tenancy;
    if t.shared_schemas.iter().any(|s| s == schema) {
        return false;
    }
    t.template_schema.as_deref() == Some(schema)
        || config
            .tenants
            .iter()
            .any(|e| e.schema.as_deref() == Some(schema))
        || schema_pattern(config).is_some_and(|(prefix, suffix)| {
            schema.len() > prefix.len() + suffix.len()
                && schema.starts_with(prefix)
                && schema.ends_with(suffix)
        })
}

/// Tenant schemas are private: no other tenant's statement may name them.
fn add_private_schemas(config: &Config, catalog: &mut Catalog) {
    if let Some((prefix, suffix)) = schema_pattern(config) {
        catalog.add_private_schema_pattern(prefix, suffix);
    }
    let explicit = config.tenants.iter().filter_map(|e| e.schema.as_deref());
    for schema in explicit.chain(config.tenancy.template_schema.as_deref()) {
        catalog.add_private_schema(schema);
    }
}

/// Schema isolation: the catalog of the shared schemas, plus the relations each tenant schema
/// has (a statement may only name relations its own schema has: a name missing there would
/// fall through `search_path` to a shared schema), plus unqualified names in `[tenancy]
/// tables` (assumed in every tenant schema).
pub fn build_schema_catalog(config: &Config, found: Option<&Discovered>) -> Catalog {
    let mut catalog = build_catalog(config, found);
    if let TablesSpec::List(list) = &config.tenancy.tables {
        for name in list.iter().filter(|n| !n.contains('.')) {
            catalog.add_isolated_relation(name);
        }
    }
    for r in found.map_or(&[][..], |f| &f.relations) {
        if is_tenant_schema(config, &r.schema) {
            catalog.add_schema_relation(&r.schema, &r.name);
        }
    }
    catalog
}

/// The policy configuration from `[policy]` and `[tenancy]`.
pub fn policy_config(config: &Config) -> PolicyConfig {
    let p = &config.policy;
    PolicyConfig {
        tenant_setting: config.tenancy.setting.clone(),
        require_parameters: p.require_parameters,
        allow_multi_statement: p.allow_multi_statement,
        unknown_relations: match p.unknown_relations {
            tenantgate_config::UnknownRelations::Reject => UnknownRelations::Reject,
            tenantgate_config::UnknownRelations::Allow => UnknownRelations::Allow,
        },
        max_query_length: p.max_query_length,
        cache_entries: p.cache_entries,
        allowed_functions: p.allowed_functions.clone(),
        allowed_procedures: p.allowed_procedures.clone(),
        allow_listen: p.allow_listen,
        ..PolicyConfig::default()
    }
}

/// The policy for tenants placed with `isolation`.
pub fn build_policy(config: &Config, isolation: Isolation, found: Option<&Discovered>) -> Policy {
    let mut pc = policy_config(config);
    pc.shared_schemas = config.tenancy.shared_schemas.clone();
    pc.isolation = match isolation {
        Isolation::Row => tenantgate_policy::Isolation::Row,
        Isolation::Schema => tenantgate_policy::Isolation::Schema,
        Isolation::Database => tenantgate_policy::Isolation::Database,
    };
    let catalog = match isolation {
        Isolation::Row => build_catalog(config, found),
        Isolation::Schema => build_schema_catalog(config, found),
        // Every relation of a tenant's own database is the tenant's.
        Isolation::Database => Catalog::new(&config.tenancy.column),
    };
    Policy::new(pc, catalog)
}
