//! Policy engine benchmarks: cache hit, and cache misses of typical and large statements.
//! Run: `cargo bench -p tenantgate-policy --bench policy -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tenantgate_policy::{Policy, PolicyConfig, SessionCtx};

const ORM_SELECT: &str = r#"SELECT "orders"."id", "orders"."customer_id", "orders"."total" FROM "orders" WHERE "orders"."tenant_id" = $1 AND "orders"."status" = $2 ORDER BY "orders"."created_at" DESC LIMIT 21"#;

const JOIN_CTE: &str = "WITH recent AS (SELECT id, tenant_id, customer_id FROM orders WHERE tenant_id = $1 AND created_at > $2) \
    SELECT r.id, c.name, i.qty, o2.total FROM recent r \
    JOIN customers c ON c.tenant_id = r.tenant_id AND c.id = r.customer_id \
    JOIN order_items i ON i.tenant_id = $1 AND i.order_id = r.id \
    JOIN orders o2 ON o2.id = i.order_id \
    LEFT JOIN customers c2 ON c2.id = o2.customer_id \
    WHERE c.email ILIKE $3 ORDER BY r.id LIMIT $4";

fn in_list(n: usize) -> String {
    let params: Vec<String> = (2..n + 2).map(|i| format!("${i}")).collect();
    format!(
        "SELECT id FROM orders WHERE tenant_id = $1 AND id IN ({})",
        params.join(", ")
    )
}

fn big_statement() -> String {
    let mut s = String::from("SELECT id FROM orders WHERE tenant_id = $1 AND (");
    let mut i = 2;
    while s.len() < 100 * 1024 {
        if i > 2 {
            s.push_str(" OR ");
        }
        s.push_str(&format!("(status = ${i} AND total > ${})", i + 1));
        i += 2;
    }
    s.push(')');
    s
}

fn uncached() -> Policy {
    Policy::new(
        PolicyConfig {
            cache_entries: 0,
            ..PolicyConfig::default()
        },
        common::catalog(),
    )
}

fn benches(c: &mut Criterion) {
    let ctx = SessionCtx {
        tenant: Some("t1"),
        schema: None,
    };
    let cached = Policy::new(PolicyConfig::default(), common::catalog());
    assert!(cached.check(ORM_SELECT, &ctx).is_allowed());
    c.bench_function("hit/orm_select", |b| {
        b.iter(|| cached.check(black_box(ORM_SELECT), &ctx))
    });

    let p = uncached();
    let big = big_statement();
    let in1000 = in_list(1000);
    let any = "SELECT id FROM orders WHERE tenant_id = $1 AND id = ANY($2)";
    for (name, sql) in [
        ("orm_select", ORM_SELECT),
        ("join4_cte", JOIN_CTE),
        ("any_array", any),
        ("in_list_1000", &in1000),
        ("stmt_100kb", &big),
    ] {
        assert!(
            p.check(sql, &ctx).is_allowed(),
            "{name}: {}",
            p.check(sql, &ctx).reason
        );
        c.bench_function(&format!("miss/{name}"), |b| {
            b.iter(|| p.check(black_box(sql), &ctx))
        });
    }
    c.bench_function("miss/parts/pg_query_parse", |b| {
        b.iter(|| pg_query::parse(black_box(ORM_SELECT), 0))
    });
    c.bench_function("miss/parts/pg_query_fingerprint", |b| {
        b.iter(|| pg_query::fingerprint(black_box(ORM_SELECT), 0, 0))
    });
    c.bench_function("miss/parts/pg_query_normalize", |b| {
        b.iter(|| pg_query::normalize(black_box(ORM_SELECT)))
    });
}

criterion_group!(policy, benches);
criterion_main!(policy);
