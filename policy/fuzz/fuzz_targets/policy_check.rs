//! Fuzz the policy engine: any input returns a Decision (no panic, no stack overflow), and
//! the decision is deterministic (fresh analysis == cached analysis == second fresh analysis).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tenantgate_policy::{Catalog, Policy, PolicyConfig, SessionCtx};

fn catalog() -> Catalog {
    let mut c = Catalog::new("tenant_id");
    c.add_tenant_table("public", "orders", "tenant_id");
    c.add_tenant_table("public", "customers", "tenant_id");
    c.add_tenant_table("public", "order_items", "tenant_id");
    c.add_tenant_table("public", "users", "org_id");
    c.add_shared_table("public", "plans");
    c.add_relation("public", "countries");
    c.add_unique_key("public", "customers", &["id"]);
    c.add_foreign_key("public", "orders", &["tenant_id", "customer_id"], "public", "customers", &["tenant_id", "id"]);
    c
}

fn cached() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| Policy::new(PolicyConfig::default(), catalog()))
}

fn uncached() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| Policy::new(PolicyConfig { cache_entries: 0, ..PolicyConfig::default() }, catalog()))
}

fuzz_target!(|data: &[u8]| {
    let ctx = SessionCtx { tenant: Some("t1"), schema: None };
    let a = cached().check_bytes(data, &ctx);
    let b = cached().check_bytes(data, &ctx);
    let c = uncached().check_bytes(data, &ctx);
    assert_eq!((a.verdict, a.rule), (b.verdict, b.rule));
    assert_eq!((a.verdict, a.rule), (c.verdict, c.rule));
    assert_eq!(a.tenant_params, c.tenant_params);
    if a.is_allowed() {
        assert!(!a.fingerprint.is_empty() || a.statements.is_empty());
    }
});
