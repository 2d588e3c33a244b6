//! What the policy knows about the database: tenant tables, shared tables, keys, functions.
//!
//! Names are the real (case-sensitive) Postgres names, as `information_schema` reports them;
//! pg_query already folds unquoted identifiers to lower case.

use std::collections::{HashMap, HashSet};

type RelKey = (String, String);

fn key(schema: &str, name: &str) -> RelKey {
    (schema.to_owned(), name.to_owned())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RelKind {
    Tenant {
        column: String,
    },
    Shared,
    Known,
    /// Schema/database isolation: a relation of the session tenant's own schema or database.
    /// Readable and writable without a tenant filter.
    Isolated,
}

#[derive(Debug, Clone)]
pub(crate) struct ForeignKey {
    pub columns: Vec<String>,
    pub ref_table: RelKey,
    pub ref_columns: Vec<String>,
}

/// Catalog builder. See the crate README for how each kind of relation is treated.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    default_column: String,
    relations: HashMap<RelKey, RelKind>,
    unique_keys: HashMap<RelKey, Vec<Vec<String>>>,
    foreign_keys: HashMap<RelKey, Vec<ForeignKey>>,
    functions: HashSet<RelKey>,
    /// Schema isolation: names of the relations of any tenant schema (the union used while
    /// analysing: an unqualified name in it resolves to the session's own schema).
    isolated: HashSet<String>,
    /// Schema isolation: names every tenant schema is assumed to have (`add_isolated_relation`).
    everywhere: HashSet<String>,
    /// Schema isolation: the relations each tenant schema has (`add_schema_relation`).
    schema_relations: HashMap<String, HashSet<String>>,
    assume_tenant: bool,
    /// Schemas of schema-isolated tenants (exact names and `(prefix, suffix)` patterns):
    /// never reachable from row isolation, another tenant's in schema isolation.
    private_schemas: HashSet<String>,
    private_patterns: Vec<(String, String)>,
    /// Columns known to exist per relation (tenant column, key columns); used to resolve
    /// unqualified column references soundly.
    known_columns: HashMap<RelKey, HashSet<String>>,
}

impl Catalog {
    pub fn new(default_tenant_column: &str) -> Self {
        Self {
            default_column: default_tenant_column.to_owned(),
            ..Self::default()
        }
    }

    /// A table whose rows belong to one tenant, identified by `column`.
    pub fn add_tenant_table(&mut self, schema: &str, table: &str, column: &str) {
        let column = if column.is_empty() {
            self.default_column.clone()
        } else {
            column.to_owned()
        };
        self.note_columns(schema, table, std::slice::from_ref(&column));
        self.relations
            .insert(key(schema, table), RelKind::Tenant { column });
    }

    /// Readable by all tenants, never writable.
    pub fn add_shared_table(&mut self, schema: &str, table: &str) {
        self.relations.insert(key(schema, table), RelKind::Shared);
    }

    /// A known relation without tenant data (lookup table, view). Readable, not writable.
    pub fn add_relation(&mut self, schema: &str, name: &str) {
        self.relations.insert(key(schema, name), RelKind::Known);
    }

    pub fn add_unique_key(&mut self, schema: &str, table: &str, columns: &[&str]) {
        let cols: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        self.note_columns(schema, table, &cols);
        self.unique_keys
            .entry(key(schema, table))
            .or_default()
            .push(cols);
    }

    pub fn add_foreign_key(
        &mut self,
        schema: &str,
        table: &str,
        columns: &[&str],
        ref_schema: &str,
        ref_table: &str,
        ref_columns: &[&str],
    ) {
        let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        let ref_columns: Vec<String> = ref_columns.iter().map(|c| (*c).to_owned()).collect();
        self.note_columns(schema, table, &columns);
        self.note_columns(ref_schema, ref_table, &ref_columns);
        self.foreign_keys
            .entry(key(schema, table))
            .or_default()
            .push(ForeignKey {
                columns,
                ref_table: key(ref_schema, ref_table),
                ref_columns,
            });
    }

    /// Schema isolation: a relation (table, view, sequence) that *every* tenant schema has —
    /// for tables listed in the configuration. Unqualified references to it resolve to the
    /// session tenant's own schema, which is assumed to have it. Relations found in the tenant
    /// schemas on the server should be added per schema with [`Catalog::add_schema_relation`].
    pub fn add_isolated_relation(&mut self, name: &str) {
        self.isolated.insert(name.to_owned());
        self.everywhere.insert(name.to_owned());
    }

    /// Schema isolation: `schema` (a tenant schema) has the relation `name`. An unqualified
    /// reference to a name that any tenant schema has resolves to the session's own schema,
    /// and after the cache it is rejected (`unknown-relation`) unless the session's schema has
    /// it (on the server the name would fall through to the shared schemas); the same holds for
    /// `own_schema.name`.
    pub fn add_schema_relation(&mut self, schema: &str, name: &str) {
        self.isolated.insert(name.to_owned());
        self.schema_relations
            .entry(schema.to_owned())
            .or_default()
            .insert(name.to_owned());
    }

    pub(crate) fn is_isolated_relation(&self, name: &str) -> bool {
        self.isolated.contains(name)
    }

    /// Whether tenant schema `schema` has the relation `name` (added for that schema, or for
    /// every schema with [`Catalog::add_isolated_relation`]).
    pub(crate) fn schema_has_relation(&self, schema: &str, name: &str) -> bool {
        self.everywhere.contains(name)
            || self
                .schema_relations
                .get(schema)
                .is_some_and(|s| s.contains(name))
    }

    /// A schema that belongs to one schema-isolated tenant (e.g. `tenant_initech`). Row
    /// isolation rejects every reference qualified with it (`cross-tenant-schema`), whatever
    /// else the catalog says about the relation; schema isolation accepts it only as the
    /// session's own schema. Database isolation ignores private schemas.
    pub fn add_private_schema(&mut self, schema: &str) {
        self.private_schemas.insert(schema.to_owned());
    }

    /// Every schema whose name starts with `prefix`, ends with `suffix` and is longer than both
    /// together is private (see [`Catalog::add_private_schema`]); e.g. `("tenant_", "")` for the
    /// schema template `tenant_{tenant}`. Names are compared exactly (case-sensitive).
    pub fn add_private_schema_pattern(&mut self, prefix: &str, suffix: &str) {
        let p = (prefix.to_owned(), suffix.to_owned());
        if !self.private_patterns.contains(&p) {
            self.private_patterns.push(p);
        }
    }

    /// Are there tenant schemas at all (a mixed fleet)?
    pub(crate) fn has_private_schemas(&self) -> bool {
        !self.private_schemas.is_empty() || !self.private_patterns.is_empty()
    }

    pub(crate) fn is_private_schema(&self, schema: &str) -> bool {
        self.private_schemas.contains(schema)
            || self.private_patterns.iter().any(|(prefix, suffix)| {
                schema.len() > prefix.len() + suffix.len()
                    && schema.starts_with(prefix.as_str())
                    && schema.ends_with(suffix.as_str())
            })
    }

    /// A user function known to be safe (no dynamic SQL, no cross-tenant reads).
    pub fn add_function(&mut self, schema: &str, name: &str) {
        self.functions.insert(key(schema, name));
    }

    /// For `explain` without a database: every relation that is not shared/known is treated
    /// as a tenant table with the default column.
    pub fn assume_unknown_are_tenant_tables(&mut self, yes: bool) {
        self.assume_tenant = yes;
    }

    fn note_columns(&mut self, schema: &str, table: &str, cols: &[String]) {
        self.known_columns
            .entry(key(schema, table))
            .or_default()
            .extend(cols.iter().cloned());
    }

    pub(crate) fn relation(&self, schema: &str, name: &str) -> Option<RelKind> {
        match self.relations.get(&key(schema, name)) {
            Some(k) => Some(k.clone()),
            None if self.assume_tenant => Some(RelKind::Tenant {
                column: self.default_column.clone(),
            }),
            None => None,
        }
    }

    pub(crate) fn has_relation(&self, schema: &str, name: &str) -> bool {
        self.relations.contains_key(&key(schema, name))
    }

    pub(crate) fn known_columns(&self, schema: &str, table: &str, tenant_col: &str) -> Vec<String> {
        let mut cols: Vec<String> = self
            .known_columns
            .get(&key(schema, table))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        if !cols.iter().any(|c| c == tenant_col) {
            cols.push(tenant_col.to_owned());
        }
        cols
    }

    pub(crate) fn unique_keys(&self, schema: &str, table: &str) -> &[Vec<String>] {
        self.unique_keys
            .get(&key(schema, table))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub(crate) fn foreign_keys(&self, schema: &str, table: &str) -> &[ForeignKey] {
        self.foreign_keys
            .get(&key(schema, table))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub(crate) fn has_function(&self, schema: &str, name: &str) -> bool {
        self.functions.contains(&key(schema, name))
    }
}
