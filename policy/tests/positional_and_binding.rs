//! Statements that reached other tenants' rows when allowed: checked against PostgreSQL 15 with
//! two tenants (t1, t2), each of these, run as t1 with every tenant parameter bound to 't1',
//! returned or modified t2's rows before the policy refused it (or its Bind).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_rejected, T1};

use tenantgate_policy::{Policy, PolicyConfig};

// 1. Join aliases: `(a JOIN b) AS j` hides a and b from qualified references, so Postgres
//    resolves `x.tenant_id` to the OUTER query's x; the policy binds it to the inner x.

// 1b. ... and the join alias itself is unknown to the policy, which then resolves `u.` outward.

// 1c. JOIN ... USING (...) AS alias (PG 14+): same.

// 1d. An unaliased function in FROM is named after the function (`unnest`) in Postgres; the
//     policy gives it no name and resolves `unnest.unnest` to the outer derived table.

// 2. LATERAL items (and FROM-function arguments) see only the FROM items to their LEFT; a name
//    to the right resolves to the outer query in Postgres, to the right-hand sibling here.

// 2b. A subquery in a JOIN's ON sees only that join's inputs; other items of the same FROM
//     resolve outward in Postgres (existence oracle on t2's customers here).

// 3. WITH RECURSIVE makes every CTE of the list visible to every other (forward references):
//    `orders` in `a` is the CTE defined after it, so the FK proof of `c` rests on fake rows.
/// WITH RECURSIVE: a later CTE named `orders` is what the earlier body reads.
#[test]
fn a_later_recursive_cte_shadows_the_table_an_earlier_body_names() {
    assert_rejected(
        "WITH RECURSIVE a AS (SELECT c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
         WHERE o.tenant_id = $1), orders AS (SELECT $1::text AS tenant_id, $2::int AS customer_id) \
         SELECT * FROM a",
    );
}

// 4. `(v).*` expands to several columns: positional checks (INSERT ... SELECT, VALUES, MERGE
//    INSERT VALUES, column alias lists) look at the wrong expression.
/// `(v).*` expands to several columns: positions shift, the tenant slot gets `$3`.
#[test]
fn a_star_expansion_in_insert_select_is_refused() {
    // Inserts a row with tenant_id = $3 ('t2').
    assert_rejected(
        "INSERT INTO orders (id, tenant_id, status) SELECT (v).*, o.tenant_id FROM orders o, \
         (SELECT $2::int AS a, $3::text AS b) v WHERE o.tenant_id = $1",
    );
}

#[test]
fn a_star_expansion_in_values_is_refused() {
    // $2 = '{"id": 99, "pname": "t2"}' inserts tenant_id 't2' (plans has two columns).
    assert_rejected(
        "INSERT INTO orders (id, tenant_id, status) VALUES ((jsonb_populate_record(NULL::plans, $2)).*, $1)",
    );
}

#[test]
fn a_star_expansion_in_merge_insert_is_refused() {
    assert_rejected(
        "MERGE INTO orders o USING (SELECT tenant_id, id FROM orders WHERE tenant_id = $1) s \
         ON o.tenant_id = $1 AND o.id = s.id WHEN NOT MATCHED THEN \
         INSERT (id, tenant_id, status) VALUES ((jsonb_populate_record(NULL::plans, $2)).*, s.tenant_id)",
    );
}

#[test]
fn a_star_expansion_under_a_column_alias_list_proves_nothing() {
    assert_rejected(
        "SELECT c.name FROM (SELECT (v).*, o.tenant_id AS z FROM orders o, \
         (SELECT $2::text AS a, $3::text AS b) v WHERE o.tenant_id = $1) d(x, tenant_id) \
         JOIN customers c ON c.tenant_id = d.tenant_id",
    );
}

// 5. ON CONFLICT DO UPDATE ... WHERE target.tenant_id = $4: the WHERE proves the target, but
//    $4 is never added to tenant_params, so Bind accepts $4 = 't2': t2's row is overwritten
//    and returned.
/// The `$n` of ON CONFLICT … DO UPDATE … WHERE that proves the updated row is the tenant's
/// must be Bind-checked like any other.
#[test]
fn the_on_conflict_where_parameter_is_bind_checked() {
    let p = Policy::new(PolicyConfig::default(), common::catalog());
    for sql in [
        "INSERT INTO orders (tenant_id, id, status) VALUES ($1, $2, $3) ON CONFLICT (id) \
         DO UPDATE SET status = excluded.status WHERE orders.tenant_id = $4 RETURNING *",
        "INSERT INTO orders AS o (tenant_id, id, status) VALUES ($1, $2, $3) ON CONFLICT ON CONSTRAINT \
         orders_id_key DO UPDATE SET status = excluded.status WHERE o.tenant_id = $4",
    ] {
        let d = p.check(sql, &T1);
        assert!(
            !d.is_allowed() || d.tenant_params.contains(&4),
            "$4 must be a tenant parameter: {:?}\n  {sql}",
            d.tenant_params
        );
        if d.is_allowed() {
            let params: [Option<&[u8]>; 4] = [Some(b"t1"), Some(b"20"), Some(b"x"), Some(b"t2")];
            assert!(d.check_bind(&params, &[], &[], "t1").is_err());
        }
    }
}

// 6 (low). Bind check ignores lossy input of client-declared parameter types: "char" (oid 18)
//    keeps only the first byte, name (19) truncates at 63 bytes; integer-looking text compares
//    numerically even for a text tenant column ('007' passes for tenant '7').
/// Parameter types whose input changes the value are refused; text is compared as text.
#[test]
fn bind_values_are_compared_as_postgres_will() {
    let p = Policy::new(PolicyConfig::default(), common::catalog());
    let d = p.check("SELECT id FROM orders WHERE tenant_id = $1", &T1);
    assert!(d.is_allowed());
    let v: [Option<&[u8]>; 1] = [Some(b"t1")];
    assert!(
        d.check_bind(&v, &[], &[18], "t1").is_err(),
        "\"char\" param: Postgres compares 't'"
    );
    let seven: [Option<&[u8]>; 1] = [Some(b"007")];
    assert!(
        d.check_bind(&seven, &[], &[25], "7").is_err(),
        "text '007' is not tenant '7'"
    );
}
