//! Policy configuration (what the proxy builds from `[policy]` in its TOML).

/// What to do with a relation that the catalog does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownRelations {
    /// Reject the statement (rule `unknown-relation`). The safe default.
    #[default]
    Reject,
    /// Treat unknown relations as readable non-tenant relations.
    Allow,
}

/// How tenants are separated, which decides what a statement must prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Shared tables with a tenant column: every tenant table needs a tenant filter.
    #[default]
    Row,
    /// One schema per tenant: unqualified names resolve to the tenant's schema (the proxy sets
    /// `search_path`); other tenants' schemas are out of reach.
    Schema,
    /// One database per tenant: every relation of the database is the tenant's.
    Database,
}

/// Tunables of the policy engine. `Default` gives the strict settings.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// The GUC that carries the session tenant (`current_setting(...)`).
    pub tenant_setting: String,
    /// Reject string/numeric literals in predicates, VALUES, SET and function arguments.
    pub require_parameters: bool,
    /// Allow several statements in one simple-query string.
    pub allow_multi_statement: bool,
    /// Handling of relations absent from the catalog.
    pub unknown_relations: UnknownRelations,
    /// Longer statements are rejected with `too-complex` before parsing.
    pub max_query_length: usize,
    /// Bound of the decision cache (0 disables caching).
    pub cache_entries: usize,
    /// Extra functions allowed beyond the built-in allowlist (`name` or `schema.name`).
    pub allowed_functions: Vec<String>,
    /// Procedures that may be CALLed (`name` or `schema.name`).
    pub allowed_procedures: Vec<String>,
    /// Allow LISTEN / NOTIFY / pg_notify.
    pub allow_listen: bool,
    /// The isolation strategy this policy checks statements for.
    pub isolation: Isolation,
    /// Schema isolation: schemas searched after the tenant's own (read-only shared tables).
    pub shared_schemas: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            tenant_setting: "app.current_tenant".to_owned(),
            require_parameters: true,
            allow_multi_statement: false,
            unknown_relations: UnknownRelations::Reject,
            max_query_length: 1 << 20,
            cache_entries: 10_000,
            allowed_functions: Vec::new(),
            allowed_procedures: Vec::new(),
            allow_listen: false,
            isolation: Isolation::Row,
            shared_schemas: vec!["public".to_owned()],
        }
    }
}
