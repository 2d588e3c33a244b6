//! Name resolution as Postgres does it: a correlated column must not be bound to a relation
//! the statement's own scope hides or cannot see.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;
use common::{assert_rejected, T1};
use tenantgate_policy::{Policy, PolicyConfig, Rule, Verdict};
/// Allowed, with exactly these `$n` bound to the tenant.
fn assert_allowed(sql: &str, tenant_params: &[usize]) {
    let p = Policy::new(PolicyConfig::default(), common::catalog());
    let d = p.check(sql, &T1);
    assert_eq!(
        d.verdict,
        Verdict::Allow,
        "rejected ({} {}; hint {:?}):\n  {sql}",
        d.rule,
        d.reason,
        d.hint
    );
    assert_eq!(d.tenant_params, tenant_params, "{sql}");
}
fn rejection(sql: &str) -> (Rule, String, Option<String>) {
    let p = Policy::new(PolicyConfig::default(), common::catalog());
    let d = p.check(sql, &T1);
    assert_eq!(d.verdict, Verdict::Reject, "allowed:\n  {sql}");
    (d.rule, d.reason.clone(), d.hint.clone())
}
#[test]
fn join_alias_hides_inner_names() {
    assert_rejected("SELECT (SELECT string_agg(j.name, ',') FROM (customers x LEFT JOIN plans p ON p.id = x.id) AS j \
         WHERE x.tenant_id = $1) FROM orders x WHERE x.tenant_id = $1");
}
#[test]
fn join_alias_name_resolved_outward() {
    assert_rejected("SELECT (SELECT string_agg(u.status, ',') FROM (orders o LEFT JOIN plans p ON p.id = o.id) AS u \
         WHERE tenant_id = u.tenant_id) FROM orders u WHERE u.tenant_id = $1");
}
#[test]
fn join_using_alias_resolved_outward() {
    assert_rejected("SELECT (SELECT string_agg(o.status, ',') FROM orders o JOIN customers c USING (tenant_id) AS u \
         WHERE o.tenant_id = u.tenant_id) FROM orders u WHERE u.tenant_id = $1");
}
#[test]
fn unaliased_function_rte_name() {
    assert_rejected("SELECT (SELECT string_agg(c.name, ',') FROM customers c, unnest($2::text[]) \
         WHERE c.tenant_id = unnest.unnest) FROM (SELECT tenant_id AS unnest FROM orders WHERE tenant_id = $1) unnest");
}
#[test]
fn lateral_sees_right_sibling() {
    assert_rejected("SELECT (SELECT string_agg(l.name, ',') FROM LATERAL (SELECT c.name FROM customers c \
         WHERE c.tenant_id = r.tenant_id) l, orders r WHERE r.tenant_id = $1) FROM (SELECT $2::text AS tenant_id) r");
}
#[test]
fn on_clause_subquery_sees_sibling() {
    assert_rejected(
        "SELECT (SELECT count(*) FROM plans p JOIN plans q ON EXISTS (SELECT 1 FROM customers c \
         WHERE c.tenant_id = r.tenant_id AND c.name = $3), orders r WHERE r.tenant_id = $1) \
         FROM (SELECT $2::text AS tenant_id) r",
    );
}

// --- Variants of the cases above.

#[test]
fn hidden_name_in_on_clause_of_enclosing_join() {
    // The enclosing join's ON sees `j` and `o`, not `x` inside `j`.
    assert_rejected("SELECT (SELECT count(*) FROM (customers x JOIN plans p ON p.id = x.id) AS j JOIN orders o \
         ON o.tenant_id = x.tenant_id WHERE o.tenant_id = $2) FROM orders x WHERE x.tenant_id = $1");
}
#[test]
fn lateral_function_sees_right_sibling() {
    assert_rejected("SELECT (SELECT count(*) FROM plans p, LATERAL unnest(ARRAY(SELECT c.name FROM customers c \
         WHERE c.tenant_id = r.tenant_id)) f, orders r WHERE r.tenant_id = $1) FROM (SELECT $2::text AS tenant_id) r");
}
#[test]
fn lateral_inside_join_sees_only_left_input() {
    assert_rejected(
        "SELECT (SELECT count(*) FROM plans p JOIN LATERAL (SELECT c.name FROM customers c \
         WHERE c.tenant_id = r.tenant_id) l ON true JOIN orders r ON r.tenant_id = $1) \
         FROM (SELECT $2::text AS tenant_id) r",
    );
}
#[test]
fn non_lateral_subquery_sees_no_sibling() {
    assert_rejected("SELECT (SELECT count(*) FROM orders r, (SELECT c.name FROM customers c \
         WHERE c.tenant_id = r.tenant_id) l WHERE r.tenant_id = $1) FROM (SELECT $2::text AS tenant_id) r");
}
#[test]
fn hidden_tenant_relation_hint_names_the_join_alias() {
    let (rule, reason, hint) = rejection(
        "SELECT j.name FROM (customers c JOIN plans p ON p.id = c.id) AS j WHERE c.tenant_id = $1",
    );
    assert_eq!(rule, Rule::TenantFilterMissing, "{reason}");
    let hint = hint.unwrap_or_default();
    assert!(hint.contains("join alias"), "{hint}");
}
#[test]
fn join_alias_with_column_list_is_too_complex() {
    let (rule, reason, _) = rejection(
        "SELECT j.a FROM (customers c JOIN plans p ON p.id = c.id AND c.tenant_id = $1) AS j(a, b)",
    );
    assert_eq!(rule, Rule::TooComplex, "{reason}");
}

// --- ORM-style statements that must stay allowed.

#[test]
fn table_aliases_in_joins() {
    assert_allowed(
        "SELECT o.id, c.name FROM orders o INNER JOIN customers c ON c.tenant_id = o.tenant_id \
         AND c.id = o.customer_id LEFT OUTER JOIN plans p ON p.id = c.plan_id WHERE o.tenant_id = $1",
        &[1],
    );
    assert_allowed(
        "SELECT \"orders\".* FROM \"orders\" INNER JOIN \"customers\" ON \"customers\".\"id\" = \"orders\".\"customer_id\" \
         WHERE \"orders\".\"tenant_id\" = $1 AND \"customers\".\"tenant_id\" = $1",
        &[1],
    );
}
#[test]
fn lateral_referencing_left_sibling() {
    assert_allowed(
        "SELECT o.id, l.qty FROM orders o CROSS JOIN LATERAL (SELECT i.qty FROM order_items i \
         WHERE i.tenant_id = o.tenant_id AND i.order_id = o.id LIMIT 1) l WHERE o.tenant_id = $1",
        &[1],
    );
    assert_allowed(
        "SELECT o.id, l.n FROM orders o, LATERAL (SELECT count(*) AS n FROM order_items i \
         WHERE i.tenant_id = o.tenant_id AND i.order_id = o.id) l WHERE o.tenant_id = $1",
        &[1],
    );
    assert_allowed(
        "SELECT o.id, l.qty FROM orders o LEFT JOIN LATERAL (SELECT i.qty FROM order_items i \
         WHERE i.tenant_id = o.tenant_id AND i.order_id = o.id) l ON true WHERE o.tenant_id = $1",
        &[1],
    );
}
#[test]
fn function_in_from() {
    assert_allowed(
        "SELECT o.id, t.tag FROM orders o, unnest(o.tags) AS t(tag) WHERE o.tenant_id = $1",
        &[1],
    );
    assert_allowed(
        "SELECT o.id FROM unnest($2::bigint[]) AS ids(id) JOIN orders o ON o.id = ids.id WHERE o.tenant_id = $1",
        &[1],
    );
    assert_allowed(
        "SELECT o.id FROM orders o JOIN unnest($2::bigint[]) ON o.id = unnest.unnest WHERE o.tenant_id = $1",
        &[1],
    );
}
#[test]
fn on_clause_with_exists_on_filtered_table() {
    assert_allowed(
        "SELECT o.id FROM orders o LEFT JOIN customers c ON c.tenant_id = o.tenant_id AND c.id = o.customer_id \
         AND EXISTS (SELECT 1 FROM invoices i WHERE i.tenant_id = $1 AND i.customer_id = c.id) \
         WHERE o.tenant_id = $1",
        &[1],
    );
    assert_allowed(
        "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id \
         AND EXISTS (SELECT 1 FROM invoices i WHERE i.tenant_id = c.tenant_id AND i.customer_id = c.id) \
         WHERE o.tenant_id = $1",
        &[1],
    );
}
#[test]
fn correlated_subqueries_resolve_to_the_right_level() {
    assert_allowed(
        "SELECT o.id, (SELECT count(*) FROM order_items i WHERE i.tenant_id = o.tenant_id AND i.order_id = o.id) \
         FROM orders o WHERE o.tenant_id = $1",
        &[1],
    );
    // A subquery's own `o` shadows the outer one.
    assert_rejected(
        "SELECT (SELECT count(*) FROM customers o WHERE o.tenant_id = o.tenant_id) FROM orders o WHERE o.tenant_id = $1",
    );
}
#[test]
fn join_alias_filtered_inside_or_through_the_alias() {
    // Filtered in the ON clause of the aliased join, or through the alias's columns.
    assert_allowed(
        "SELECT j.name FROM (customers c JOIN plans p ON p.id = c.id AND c.tenant_id = $1) AS j",
        &[1],
    );
    assert_allowed(
        "SELECT j.name FROM (customers c JOIN plans p ON p.id = c.id) AS j WHERE j.tenant_id = $1",
        &[1],
    );
    assert_allowed(
        "SELECT o.id FROM orders o JOIN customers c USING (tenant_id) AS u WHERE o.tenant_id = $1 AND c.id = o.customer_id",
        &[1],
    );
}
