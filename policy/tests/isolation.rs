//! Schema and database isolation: post-cache checks, session schema, reasons, API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use tenantgate_policy::{Catalog, Isolation, Policy, PolicyConfig, Rule, SessionCtx, Verdict};

fn schema_policy(cache_entries: usize) -> Policy {
    Policy::new(
        PolicyConfig {
            isolation: Isolation::Schema,
            cache_entries,
            ..PolicyConfig::default()
        },
        common::schema_catalog(),
    )
}

const ACME: SessionCtx = SessionCtx {
    tenant: Some("acme"),
    schema: Some("tenant_acme"),
};
const GLOBEX: SessionCtx = SessionCtx {
    tenant: Some("globex"),
    schema: Some("tenant_globex"),
};

const PRISMA: &str = r#"SELECT "tenant_acme"."orders"."id" FROM "tenant_acme"."orders" WHERE "tenant_acme"."orders"."id" = $1"#;

#[test]
fn cache_is_sound_across_schemas() {
    // acme first, then globex: allow then reject (the second is a cache hit).
    let p = schema_policy(100);
    assert!(p.check(PRISMA, &ACME).is_allowed());
    let d = p.check(PRISMA, &GLOBEX);
    assert_eq!(d.rule, Rule::CrossTenantSchema, "{}", d.reason);
    assert!(d.reason.contains("tenant_acme.orders"), "{}", d.reason);
    assert!(d.reason.contains("use unqualified names"), "{}", d.reason);
    assert_eq!(d.sqlstate, "42501");
    assert!(!d.normalized.is_empty() && !d.fingerprint.is_empty());
    // The cached decision itself was not changed by the rejection.
    assert!(p.check(PRISMA, &ACME).is_allowed());
    let (hits, misses) = p.cache_stats();
    assert_eq!((hits, misses), (2, 1));

    // globex first, then acme.
    let p = schema_policy(100);
    assert_eq!(p.check(PRISMA, &GLOBEX).rule, Rule::CrossTenantSchema);
    assert!(p.check(PRISMA, &ACME).is_allowed());
    assert_eq!(p.check(PRISMA, &GLOBEX).rule, Rule::CrossTenantSchema);
    assert_eq!(p.cache_stats(), (2, 1));

    // Same answers without a cache.
    let p = schema_policy(0);
    assert!(p.check(PRISMA, &ACME).is_allowed());
    assert_eq!(p.check(PRISMA, &GLOBEX).rule, Rule::CrossTenantSchema);
}

const HOOLI: SessionCtx = SessionCtx {
    tenant: Some("hooli"),
    schema: Some("tenant_hooli"),
};

/// Isolated names are the union over all tenant schemas; each statement's names must exist in
/// the session's own schema, checked after the cache (same text, different schemas).
#[test]
fn isolated_names_must_exist_in_the_own_schema() {
    for cache_entries in [100, 0] {
        let p = schema_policy(cache_entries);
        let sql = "SELECT * FROM orders WHERE id = $1";
        assert!(p.check(sql, &ACME).is_allowed());
        let d = p.check(sql, &HOOLI);
        assert_eq!(d.rule, Rule::UnknownRelation, "{}", d.reason);
        assert!(
            d.reason
                .contains("relation \"orders\" does not exist in your schema tenant_hooli"),
            "{}",
            d.reason
        );
        assert!(d.hint.is_some());
        assert!(p.check(sql, &GLOBEX).is_allowed());
        assert!(p.check("SELECT * FROM notes", &HOOLI).is_allowed());
        assert_eq!(
            p.check("SELECT * FROM notes", &ACME).rule,
            Rule::UnknownRelation
        );

        let sql = "SELECT id FROM tenant_hooli.orders";
        let d = p.check(sql, &HOOLI);
        assert_eq!(d.rule, Rule::UnknownRelation, "{}", d.reason);
        assert!(d.reason.contains("\"tenant_hooli.orders\""), "{}", d.reason);
        assert_eq!(p.check(sql, &ACME).rule, Rule::CrossTenantSchema);

        // Relation names in literals: position, never the literal.
        let d = p.check("SELECT nextval('orders_id_seq')", &HOOLI);
        assert_eq!(d.rule, Rule::UnknownRelation, "{}", d.reason);
        assert!(!d.reason.contains("orders_id_seq"), "{}", d.reason);
        assert!(d.reason.contains("position 8"), "{}", d.reason);

        // A schema that does not exist has no relations (but the configured ones).
        let nowhere = SessionCtx {
            tenant: Some("nowhere"),
            schema: Some("tenant_nowhere"),
        };
        assert_eq!(
            p.check("SELECT * FROM orders", &nowhere).rule,
            Rule::UnknownRelation
        );
        assert!(p
            .check("SELECT * FROM schema_migrations", &nowhere)
            .is_allowed());
    }
}

/// `add_isolated_relation` means "every tenant schema has it" (configuration-listed tables);
/// `add_schema_relation` records one schema's relation.
#[test]
fn isolated_relations_are_in_every_schema_schema_relations_in_theirs() {
    let mut cat = Catalog::new("tenant_id");
    cat.add_isolated_relation("orders");
    cat.add_schema_relation("tenant_acme", "notes");
    let p = Policy::new(
        PolicyConfig {
            isolation: Isolation::Schema,
            ..PolicyConfig::default()
        },
        cat,
    );
    for ctx in [ACME, GLOBEX, HOOLI] {
        assert!(p.check("SELECT * FROM orders", &ctx).is_allowed());
    }
    assert!(p.check("SELECT * FROM notes", &ACME).is_allowed());
    assert_eq!(
        p.check("SELECT * FROM notes", &GLOBEX).rule,
        Rule::UnknownRelation
    );
    // Not private (no pattern): a qualified isolated name is still checked against the session.
    assert!(p
        .check("SELECT * FROM tenant_acme.notes", &ACME)
        .is_allowed());
    assert_eq!(
        p.check("SELECT * FROM tenant_acme.notes", &GLOBEX).rule,
        Rule::CrossTenantSchema
    );
    assert_eq!(
        p.check("SELECT * FROM tenant_globex.notes", &GLOBEX).rule,
        Rule::UnknownRelation
    );
}

/// Qualified type names are checked like qualified relations, after the cache.
#[test]
fn qualified_type_names_are_checked_after_the_cache() {
    let p = schema_policy(100);
    let sql = "SELECT json_populate_record(NULL::tenant_acme.orders, $1)";
    assert!(p.check(sql, &ACME).is_allowed());
    let d = p.check(sql, &GLOBEX);
    assert_eq!(d.rule, Rule::CrossTenantSchema, "{}", d.reason);
    assert!(
        d.reason
            .contains("type \"tenant_acme.orders\" is in another tenant's schema"),
        "{}",
        d.reason
    );
    assert!(p.check(sql, &ACME).is_allowed());
    assert_eq!(p.cache_stats(), (2, 1));

    let row = Policy::new(PolicyConfig::default(), common::catalog());
    let t = SessionCtx {
        tenant: Some("t1"),
        schema: None,
    };
    let d = row.check("SELECT (NULL::tenant_hooli.orders).*", &t);
    assert_eq!(d.rule, Rule::CrossTenantSchema, "{}", d.reason);
    assert!(
        d.reason.contains("type \"tenant_hooli.orders\""),
        "{}",
        d.reason
    );
}

#[test]
fn literal_relation_names_are_checked_after_the_cache_and_never_echoed() {
    let p = schema_policy(100);
    let sql = "SELECT nextval('tenant_acme.orders_id_seq')";
    assert!(p.check(sql, &ACME).is_allowed());
    let d = p.check(sql, &GLOBEX);
    assert_eq!(d.rule, Rule::CrossTenantSchema);
    assert!(!d.reason.contains("tenant_acme"), "{}", d.reason);
    assert!(d.reason.contains("position 8"), "{}", d.reason);

    for sql in [
        "SELECT 'tenant_topsecret.orders'::regclass",
        "SELECT has_table_privilege('tenant_topsecret.orders', 'SELECT')",
        "SELECT nextval('topsecret.a.b')",
        "SELECT nextval('12345topsecret')",
        "SELECT set_config('search_path', 'topsecret', false)",
        "SET search_path TO topsecret",
        "SELECT * FROM orders WHERE status = 'topsecret'",
    ] {
        let d = p.check(sql, &ACME);
        assert_eq!(d.verdict, Verdict::Reject, "{sql}");
        assert!(!d.reason.contains("topsecret"), "{sql}: {}", d.reason);
        assert!(
            !d.hint.as_deref().unwrap_or("").contains("topsecret"),
            "{sql}: {:?}",
            d.hint
        );
    }
}

#[test]
fn session_schema_is_required() {
    let p = schema_policy(100);
    let no_schema = SessionCtx {
        tenant: Some("acme"),
        schema: None,
    };
    let d = p.check("SELECT id FROM orders", &no_schema);
    assert_eq!(d.rule, Rule::TenantNotSet, "{}", d.reason);
    let d = p.check("SELECT id FROM tenant_acme.orders", &no_schema);
    assert_eq!(d.rule, Rule::CrossTenantSchema, "{}", d.reason);
    assert!(p.check("SELECT id FROM plans", &no_schema).is_allowed());
    let none = SessionCtx::default();
    assert_eq!(
        p.check("SELECT id FROM orders", &none).rule,
        Rule::TenantNotSet
    );
    assert!(p.check("SELECT id FROM orders", &ACME).is_allowed());
}

#[test]
fn shared_schemas_resolve_in_order() {
    let mut cat = Catalog::new("tenant_id");
    cat.add_isolated_relation("orders");
    cat.add_shared_table("ref", "plans");
    cat.add_tenant_table("public", "plans", "tenant_id");
    let policy = |shared: &[&str], cat: &Catalog| {
        Policy::new(
            PolicyConfig {
                isolation: Isolation::Schema,
                shared_schemas: shared.iter().map(|s| (*s).to_owned()).collect(),
                ..PolicyConfig::default()
            },
            cat.clone(),
        )
    };
    // public first: plans is the row-isolated public.plans.
    let p = policy(&["public", "ref"], &cat);
    assert_eq!(
        p.check("SELECT id FROM plans", &ACME).rule,
        Rule::TenantFilterMissing
    );
    assert!(p
        .check("SELECT id FROM plans WHERE tenant_id = $1", &ACME)
        .is_allowed());
    // ref first: plans is the shared ref.plans.
    let p = policy(&["ref", "public"], &cat);
    assert!(p.check("SELECT id FROM plans", &ACME).is_allowed());
    // A schema that is not shared is not readable, even when the catalog knows it.
    let p = policy(&["ref"], &cat);
    assert_eq!(
        p.check("SELECT id FROM public.plans WHERE tenant_id = $1", &ACME)
            .rule,
        Rule::UnknownRelation
    );
    // Isolated relations win over shared ones (the tenant schema is first in search_path).
    cat.add_shared_table("public", "orders");
    let p = policy(&["public"], &cat);
    assert!(p.check("UPDATE orders SET total = $1", &ACME).is_allowed());
    assert_eq!(
        p.check("UPDATE public.orders SET total = $1", &ACME).rule,
        Rule::SharedTableWrite
    );
}

#[test]
fn database_isolation() {
    let p = Policy::new(
        PolicyConfig {
            isolation: Isolation::Database,
            ..PolicyConfig::default()
        },
        common::catalog(),
    );
    let t = SessionCtx {
        tenant: Some("acme"),
        schema: None,
    };
    let d = p.check("UPDATE orders SET total = $1 WHERE id = $2", &t);
    assert!(d.is_allowed(), "{}", d.reason);
    assert!(d.tenant_params.is_empty());
    assert!(p.check("SET search_path TO billing", &t).is_allowed());
    assert_eq!(
        p.check("SELECT * FROM orders", &SessionCtx::default()).rule,
        Rule::TenantNotSet
    );
    // The schema of the session plays no role in database isolation.
    assert!(p.check("SELECT * FROM billing.payments", &t).is_allowed());
}

#[test]
fn row_isolation_ignores_the_schema_context() {
    let p = Policy::new(PolicyConfig::default(), common::catalog());
    let t = SessionCtx {
        tenant: Some("t1"),
        schema: Some("tenant_acme"),
    };
    assert_eq!(
        p.check("SELECT * FROM orders", &t).rule,
        Rule::TenantFilterMissing
    );
    let d = p.check("SET search_path TO tenant_x", &t);
    assert_eq!(d.rule, Rule::TenantSettingWrite, "{}", d.reason);
    assert!(p
        .check("SELECT relname FROM pg_class WHERE oid = $1::regclass", &t)
        .is_allowed());
    assert_eq!(
        p.check("SELECT pg_total_relation_size('orders')", &t).rule,
        Rule::ForbiddenFunction
    );
}

/// Row isolation resolves unqualified names in `public`: `SET search_path` may only name the
/// shared schemas (and `pg_catalog`); the reason names the rule.
#[test]
fn row_isolation_search_path_names_only_shared_schemas() {
    let t = SessionCtx {
        tenant: Some("t1"),
        schema: None,
    };
    let p = Policy::new(PolicyConfig::default(), common::catalog());
    let d = p.check("SET search_path = tenant_initech", &t);
    assert_eq!(d.rule, Rule::TenantSettingWrite, "{}", d.reason);
    assert!(
        d.reason
            .contains("in row isolation search_path may only name the shared schemas: public"),
        "{}",
        d.reason
    );
    assert!(!d.reason.contains("tenant_initech"), "{}", d.reason);
    assert!(p.check("SET search_path = public", &t).is_allowed());
    assert!(p.check("RESET search_path", &t).is_allowed());

    let p = Policy::new(
        PolicyConfig {
            shared_schemas: vec!["public".into(), "ref".into()],
            ..PolicyConfig::default()
        },
        common::catalog(),
    );
    assert!(p.check("SET search_path = ref, public", &t).is_allowed());
    assert!(p
        .check("SET LOCAL search_path = pg_catalog, ref", &t)
        .is_allowed());
    let d = p.check("SET search_path = ref, billing", &t);
    assert_eq!(d.rule, Rule::TenantSettingWrite, "{}", d.reason);
    assert!(
        d.reason.contains("shared schemas: public, ref"),
        "{}",
        d.reason
    );
}

/// Row isolation with several shared schemas: `SET search_path = ref, public` is allowed, so an
/// unqualified name may resolve to any shared schema that has it. A name that is a tenant table
/// in one of them and something else (or another tenant table) in another cannot be read as
/// `public`'s: `SET search_path = ref; SELECT * FROM plans` read every tenant's `ref.plans`.
#[test]
fn row_isolation_unqualified_names_across_shared_schemas() {
    let t = SessionCtx {
        tenant: Some("t1"),
        schema: None,
    };
    let mut cat = common::catalog();
    cat.add_tenant_table("ref", "plans", "tenant_id");
    cat.add_tenant_table("ref", "rates", "tenant_id");
    cat.add_shared_table("ref", "countries");
    let p = Policy::new(
        PolicyConfig {
            shared_schemas: vec!["public".into(), "ref".into()],
            ..PolicyConfig::default()
        },
        cat,
    );
    assert!(p.check("SET search_path = ref", &t).is_allowed());
    let d = p.check("SELECT * FROM plans", &t);
    assert_eq!(d.rule, Rule::UnknownRelation, "{}", d.reason);
    assert!(
        d.hint.as_deref().unwrap_or("").contains("qualify"),
        "{:?}",
        d.hint
    );
    assert_eq!(
        p.check("SELECT * FROM plans WHERE tenant_id = $1", &t).rule,
        Rule::UnknownRelation
    );
    // Qualified names are unambiguous.
    assert!(p.check("SELECT * FROM public.plans", &t).is_allowed());
    assert!(p
        .check("SELECT * FROM ref.plans WHERE tenant_id = $1", &t)
        .is_allowed());
    // A name in one shared schema only is that relation, whatever the order of search_path.
    assert_eq!(
        p.check("SELECT * FROM rates", &t).rule,
        Rule::TenantFilterMissing
    );
    assert!(p
        .check("SELECT * FROM rates WHERE tenant_id = $1", &t)
        .is_allowed());
    // Read-only in both (shared / known): readable.
    assert!(p.check("SELECT * FROM countries", &t).is_allowed());
    assert!(p
        .check("SELECT * FROM orders WHERE tenant_id = $1", &t)
        .is_allowed());
    // With only `public` shared, nothing changes: `ref` cannot be put in search_path.
    let mut cat = common::catalog();
    cat.add_tenant_table("ref", "plans", "tenant_id");
    let p = Policy::new(PolicyConfig::default(), cat);
    assert!(p.check("SELECT * FROM plans", &t).is_allowed());
}

/// Private schemas: exact names and `(prefix, suffix)` patterns; a schema matches a pattern only
/// when it is longer than prefix and suffix together. Shared and system schemas never are.
#[test]
fn private_schemas_are_out_of_reach_in_row_isolation() {
    let mut cat = Catalog::new("tenant_id");
    cat.add_tenant_table("public", "orders", "tenant_id");
    cat.add_tenant_table("initech", "orders", "tenant_id");
    cat.add_tenant_table("t_x_data", "orders", "tenant_id");
    cat.add_tenant_table("t__data", "orders", "tenant_id");
    cat.add_tenant_table("t_shared_data", "orders", "tenant_id");
    cat.add_private_schema("initech");
    cat.add_private_schema_pattern("t_", "_data");
    let t = SessionCtx {
        tenant: Some("t1"),
        schema: Some("initech"),
    };
    let row = Policy::new(
        PolicyConfig {
            shared_schemas: vec!["public".into(), "t_shared_data".into()],
            ..PolicyConfig::default()
        },
        cat.clone(),
    );
    let q = |schema: &str| format!("SELECT id FROM {schema}.orders WHERE tenant_id = $1");
    // Rejected even when the session's schema is that schema: row tenants own no schema.
    for schema in ["initech", "t_x_data", "t_tenant_data"] {
        let d = row.check(&q(schema), &t);
        assert_eq!(d.rule, Rule::CrossTenantSchema, "{schema}: {}", d.reason);
        assert!(
            d.reason.contains(&format!("{schema}.orders")),
            "{}",
            d.reason
        );
    }
    for schema in ["public", "t__data", "t_shared_data"] {
        assert!(row.check(&q(schema), &t).is_allowed(), "{schema}");
    }
    // A relation name bound at run time could name a tenant schema: literals only.
    for sql in ["SELECT nextval($1)", "SELECT currval($1::text)"] {
        assert_eq!(row.check(sql, &t).rule, Rule::ForbiddenFunction, "{sql}");
    }
    for sql in [
        "SELECT nextval('orders_id_seq')",
        "SELECT currval(pg_get_serial_sequence('orders', 'id'))",
    ] {
        assert!(row.check(sql, &t).is_allowed(), "{sql}");
    }
    // Without tenant schemas, row isolation keeps accepting bound names.
    let plain = Policy::new(PolicyConfig::default(), Catalog::new("tenant_id"));
    assert!(plain.check("SELECT nextval($1)", &t).is_allowed());
    // Unknown relations in a private schema are rejected the same way, whatever
    // unknown_relations says.
    let lax = Policy::new(
        PolicyConfig {
            unknown_relations: tenantgate_policy::UnknownRelations::Allow,
            ..PolicyConfig::default()
        },
        cat.clone(),
    );
    assert_eq!(
        lax.check("SELECT * FROM t_y_data.notes", &t).rule,
        Rule::CrossTenantSchema
    );
    assert!(lax.check("SELECT * FROM t__data.notes", &t).is_allowed());
    // Literal relation names never echo the literal.
    let d = row.check("SELECT nextval('initech.orders_id_seq')", &t);
    assert_eq!(d.rule, Rule::CrossTenantSchema);
    assert!(!d.reason.contains("initech"), "{}", d.reason);
    // Database isolation ignores private schemas.
    let db = Policy::new(
        PolicyConfig {
            isolation: Isolation::Database,
            ..PolicyConfig::default()
        },
        cat,
    );
    assert!(db.check("SELECT * FROM initech.orders", &t).is_allowed());
    assert!(db.check("SELECT * FROM t_x_data.orders", &t).is_allowed());
}

#[test]
fn isolation_serializes_lowercase() {
    assert_eq!(
        serde_json::to_string(&Isolation::Schema).unwrap(),
        "\"schema\""
    );
    assert_eq!(
        Rule::from_id("cross-tenant-schema"),
        Some(Rule::CrossTenantSchema)
    );
}

/// Mutated corpus statements under schema and database isolation: no panic, and cached and
/// uncached decisions agree for two different sessions.
#[test]
fn mutated_statements_agree_with_and_without_cache() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");
    let mut seeds: Vec<String> = Vec::new();
    for f in ["60_schema.corpus", "70_database.corpus"] {
        let text = std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
        seeds.extend(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('|'))
                .map(|(_, s)| s.trim().to_owned()),
        );
    }
    for isolation in [Isolation::Schema, Isolation::Database] {
        let cfg = |cache_entries| PolicyConfig {
            isolation,
            cache_entries,
            ..PolicyConfig::default()
        };
        let cached = Policy::new(cfg(64), common::schema_catalog());
        let fresh = Policy::new(cfg(0), common::schema_catalog());
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..1500 {
            let mut input = seeds[(next() % seeds.len() as u64) as usize]
                .as_bytes()
                .to_vec();
            for _ in 0..(next() % 3) {
                let at = (next() % (input.len() as u64 + 1)) as usize;
                match next() % 3 {
                    0 if at < input.len() => {
                        input.remove(at);
                    }
                    1 => input.insert(at, b"'.\"$;(x"[(next() % 7) as usize]),
                    _ => input
                        .splice(at..at, b" tenant_globex.".iter().copied())
                        .for_each(drop),
                }
            }
            for ctx in [ACME, GLOBEX, HOOLI, SessionCtx::default()] {
                let a = cached.check_bytes(&input, &ctx);
                let b = fresh.check_bytes(&input, &ctx);
                assert_eq!(
                    (a.verdict, a.rule),
                    (b.verdict, b.rule),
                    "{}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }
}
