//! Where each tenant's data lives: the isolation strategy and its schema or database.

use crate::Config;
use serde::{Deserialize, Serialize};

/// `[tenancy] isolation` and `[[tenants]] isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Shared tables with a tenant column, filtered per statement, with Row-Level Security.
    #[default]
    Row,
    /// One schema per tenant; the proxy sets `search_path` to it.
    Schema,
    /// One database per tenant; the proxy routes the tenant's transactions to it.
    Database,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Row => "row",
            Isolation::Schema => "schema",
            Isolation::Database => "database",
        }
    }

    pub const ALL: [Isolation; 3] = [Isolation::Row, Isolation::Schema, Isolation::Database];
}

/// A tenant placed differently from `[tenancy] isolation` (`[[tenants]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Defaults to "database" when `database` is set, "schema" when `schema` is set, else
    /// `[tenancy] isolation`.
    pub isolation: Option<Isolation>,
    /// Schema isolation: this tenant's schema (instead of `[tenancy] schema`).
    pub schema: Option<String>,
    /// Database isolation: this tenant's database on the server (instead of
    /// `[tenancy] database`).
    pub database: Option<String>,
}

impl TenantConfig {
    pub fn isolation(&self, default: Isolation) -> Isolation {
        self.isolation.unwrap_or(if self.database.is_some() {
            Isolation::Database
        } else if self.schema.is_some() {
            Isolation::Schema
        } else {
            default
        })
    }
}

/// Where one tenant's statements run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Placement {
    Row,
    /// The tenant's schema (first in `search_path`).
    Schema(String),
    /// The tenant's database on the server of the client's `[[databases]]` entry.
    Database(String),
}

impl Placement {
    pub fn isolation(&self) -> Isolation {
        match self {
            Placement::Row => Isolation::Row,
            Placement::Schema(_) => Isolation::Schema,
            Placement::Database(_) => Isolation::Database,
        }
    }

    pub fn schema(&self) -> Option<&str> {
        match self {
            Placement::Schema(s) => Some(s),
            _ => None,
        }
    }
}

/// `{tenant}` in `template` replaced by `tenant`.
pub fn expand(template: &str, tenant: &str) -> String {
    template.replace("{tenant}", tenant)
}

/// A schema name the proxy can put in `search_path` and the policy can compare with what a
/// statement writes unquoted: lower-case letters, digits and `_`, not starting with a digit,
/// at most 63 bytes, not a system schema.
pub fn schema_name_ok(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    first_ok
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with("pg_")
        && name != "information_schema"
}

/// A database name: 1-63 bytes, no NUL or control characters.
pub fn database_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && !name.chars().any(char::is_control)
}

impl Config {
    /// The `[[tenants]]` entry of `tenant`, if any.
    pub fn tenant(&self, tenant: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.id == tenant)
    }

    /// Where `tenant`'s statements run, or why it cannot be placed: a tenant id that makes an
    /// invalid schema or database name from the templates, or a name that belongs to someone
    /// else (a shared schema, the template schema, a configured database, a system database,
    /// another tenant's explicit schema or database).
    pub fn placement(&self, tenant: &str) -> Result<Placement, String> {
        let t = &self.tenancy;
        let entry = self.tenant(tenant);
        let isolation = entry.map_or(t.isolation, |e| e.isolation(t.isolation));
        match isolation {
            Isolation::Row => Ok(Placement::Row),
            Isolation::Schema => {
                let schema = entry
                    .and_then(|e| e.schema.clone())
                    .unwrap_or_else(|| expand(&t.schema, tenant));
                if !schema_name_ok(&schema) {
                    return Err(format!(
                        "tenant {tenant:?} has no valid schema name ({schema:?}): schema names are lower-case letters, digits and _ (set [[tenants]] schema for this tenant)"
                    ));
                }
                if let Some(owner) = self.schema_owner(&schema, tenant) {
                    return Err(format!(
                        "tenant {tenant:?} would use schema {schema:?}, which is {owner}"
                    ));
                }
                Ok(Placement::Schema(schema))
            }
            Isolation::Database => {
                let db = entry
                    .and_then(|e| e.database.clone())
                    .unwrap_or_else(|| expand(&t.database, tenant));
                if !database_name_ok(&db) {
                    return Err(format!(
                        "tenant {tenant:?} has no valid database name ({db:?}) (set [[tenants]] database for this tenant)"
                    ));
                }
                if let Some(owner) = self.database_owner(&db, tenant) {
                    return Err(format!(
                        "tenant {tenant:?} would use database {db:?}, which is {owner}"
                    ));
                }
                Ok(Placement::Database(db))
            }
        }
    }

    /// Who else a schema belongs to, if anyone but `tenant`.
    fn schema_owner(&self, schema: &str, tenant: &str) -> Option<String> {
        let t = &self.tenancy;
        if schema == "public" || t.shared_schemas.iter().any(|s| s == schema) {
            return Some("a shared schema".into());
        }
        if t.template_schema.as_deref() == Some(schema) {
            return Some("the template schema".into());
        }
        self.other_tenant_with(tenant, Isolation::Schema, schema)
            .map(|id| format!("tenant {id:?}'s schema"))
    }

    /// Another `[[tenants]]` entry placed in `name` (its explicit schema/database, or its
    /// template expansion), under `isolation`.
    fn other_tenant_with(&self, tenant: &str, isolation: Isolation, name: &str) -> Option<&str> {
        let t = &self.tenancy;
        let (template, explicit): (&str, fn(&TenantConfig) -> Option<&str>) = match isolation {
            Isolation::Schema => (&t.schema, |e| e.schema.as_deref()),
            _ => (&t.database, |e| e.database.as_deref()),
        };
        self.tenants
            .iter()
            .filter(|e| e.id != tenant && e.isolation(t.isolation) == isolation)
            .find(|e| explicit(e).map_or_else(|| expand(template, &e.id) == name, |x| x == name))
            .map(|e| e.id.as_str())
    }

    /// Who else a database belongs to, if anyone but `tenant`.
    fn database_owner(&self, db: &str, tenant: &str) -> Option<String> {
        if matches!(db, "postgres" | "template0" | "template1") {
            return Some("a system database".into());
        }
        if let Some(d) = self.databases.iter().find(|d| d.server_dbname() == db) {
            return Some(format!("the database of [[databases]] {:?}", d.name));
        }
        self.other_tenant_with(tenant, Isolation::Database, db)
            .map(|id| format!("tenant {id:?}'s database"))
    }

    /// Is any tenant (by default or by a `[[tenants]]` entry) placed with `isolation`?
    pub fn uses_isolation(&self, isolation: Isolation) -> bool {
        self.tenancy.isolation == isolation
            || self
                .tenants
                .iter()
                .any(|t| t.isolation(self.tenancy.isolation) == isolation)
    }
}
