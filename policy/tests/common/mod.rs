//! The fixed test catalog shared by the corpus, unit tests and benches.
#![allow(dead_code)]

use tenantgate_policy::{Catalog, Policy, PolicyConfig, SessionCtx, Verdict};

/// A session of tenant `t1`.
pub const T1: SessionCtx = SessionCtx {
    tenant: Some("t1"),
    schema: None,
};

/// Panics unless the default policy over [`catalog`] rejects `sql` for [`T1`].
pub fn assert_rejected(sql: &str) {
    let p = Policy::new(PolicyConfig::default(), catalog());
    let d = p.check(sql, &T1);
    assert_eq!(
        d.verdict,
        Verdict::Reject,
        "allowed (tenant_params {:?}) but leaks another tenant's rows:\n  {sql}",
        d.tenant_params
    );
}

pub fn catalog() -> Catalog {
    let mut c = Catalog::new("tenant_id");
    c.add_tenant_table("public", "orders", "tenant_id");
    c.add_tenant_table("public", "customers", "tenant_id");
    c.add_tenant_table("public", "order_items", "tenant_id");
    c.add_tenant_table("public", "invoices", "tenant_id");
    c.add_tenant_table("public", "users", "org_id");
    c.add_tenant_table("billing", "payments", "tenant_id");
    c.add_shared_table("public", "plans");
    c.add_relation("public", "countries");
    c.add_relation("public", "order_summaries");
    c.add_unique_key("public", "customers", &["id"]);
    c.add_unique_key("public", "orders", &["id"]);
    c.add_unique_key("public", "users", &["id"]);
    c.add_foreign_key(
        "public",
        "orders",
        &["tenant_id", "customer_id"],
        "public",
        "customers",
        &["tenant_id", "id"],
    );
    c.add_foreign_key(
        "public",
        "order_items",
        &["tenant_id", "order_id"],
        "public",
        "orders",
        &["tenant_id", "id"],
    );
    // invoices(customer_id) references customers(id) only: no composite key, no proof.
    c.add_foreign_key(
        "public",
        "invoices",
        &["customer_id"],
        "public",
        "customers",
        &["id"],
    );
    c.add_function("public", "order_total");
    // Mixed fleet: schema tenants live in `tenant_<id>` schemas on the same server. A row
    // catalog read from the server lists their tables too (this one has a tenant_id column).
    c.add_private_schema_pattern("tenant_", "");
    c.add_tenant_table("tenant_initech", "orders", "tenant_id");
    c.add_relation("tenant_hooli", "notes");
    c
}

/// Schema isolation: the tenant schemas `tenant_acme` and `tenant_globex` have the full set of
/// relations, `tenant_hooli` only `notes`; the migration tables are configuration-listed
/// (`add_isolated_relation`: every tenant schema has them). Schemas `tenant_*` are private;
/// `public` and `ref` are the shared schemas (search_path = `<tenant schema>, public, ref`).
pub fn schema_catalog() -> Catalog {
    let mut c = Catalog::new("tenant_id");
    for schema in ["tenant_acme", "tenant_globex"] {
        for r in [
            "orders",
            "customers",
            "order_items",
            "invoices",
            "Projects",
            "orders_id_seq",
            "customers_id_seq",
            "plans_overrides",
        ] {
            c.add_schema_relation(schema, r);
        }
    }
    c.add_schema_relation("tenant_hooli", "notes");
    for r in [
        "schema_migrations",
        "ar_internal_metadata",
        "_prisma_migrations",
    ] {
        c.add_isolated_relation(r);
    }
    c.add_private_schema_pattern("tenant_", "");
    // A row-isolated table in the shared schema (e.g. global users with an org column).
    c.add_tenant_table("public", "users", "org_id");
    c.add_unique_key("public", "users", &["id"]);
    c.add_shared_table("public", "plans");
    c.add_relation("public", "countries");
    // `ref.users` is shadowed by `public.users` (public comes first in shared_schemas).
    c.add_shared_table("ref", "users");
    c.add_shared_table("ref", "currencies");
    c.add_function("public", "order_total");
    c.add_private_schema_pattern("tenant_", "");
    c
}
