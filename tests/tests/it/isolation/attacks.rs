//! The bypass attempts of the isolation suite: how each is sent and which rule must refuse it.

use super::*;

pub(super) type Params = Vec<Box<dyn ToSql + Sync + Send>>;

macro_rules! params {
    ($($v:expr),* $(,)?) => {{
        let v: Params = vec![$(Box::new($v)),*];
        v
    }};
}

pub(super) fn refs(p: &Params) -> Vec<&(dyn ToSql + Sync)> {
    p.iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

pub(super) enum Via {
    /// tokio-postgres `simple_query` (Query message).
    Simple,
    /// tokio-postgres `batch_execute` (Query message).
    Batch,
    /// tokio-postgres `query` with these parameters (Parse/Describe/Sync, then Bind/Execute/Sync;
    /// parameters in binary format).
    Extended(Params),
    /// tokio-postgres `copy_out`.
    CopyOut,
    /// `psql -c SQL -c <legit query>` on a new connection.
    Psql,
}

pub(super) struct Attack {
    pub(super) what: &'static str,
    pub(super) sql: String,
    pub(super) via: Via,
    /// SQLSTATE and rule id expected in the ErrorResponse.
    pub(super) code: &'static str,
    pub(super) rule: &'static str,
    /// What transaction pooling mode answers instead, if it differs: (SQLSTATE, part of the
    /// message). Session features are refused before the policy sees them (0A000); DEALLOCATE
    /// is answered by the proxy, which owns the client's protocol-level statement names.
    pub(super) in_tx_mode: Option<(&'static str, &'static str)>,
}

pub(super) fn session_only(a: Attack) -> Attack {
    Attack {
        in_tx_mode: Some(("0A000", "is not supported in transaction pooling mode")),
        ..a
    }
}

pub(super) fn simple(what: &'static str, sql: &str, rule: &'static str) -> Attack {
    Attack {
        what,
        sql: sql.to_string(),
        via: Via::Simple,
        code: "42501",
        rule,
        in_tx_mode: None,
    }
}

pub(super) fn batch(what: &'static str, sql: &str, rule: &'static str) -> Attack {
    Attack {
        via: Via::Batch,
        ..simple(what, sql, rule)
    }
}

pub(super) fn ext(what: &'static str, sql: &str, params: Params, rule: &'static str) -> Attack {
    Attack {
        via: Via::Extended(params),
        ..simple(what, sql, rule)
    }
}

pub(super) fn psql(what: &'static str, sql: &str, rule: &'static str) -> Attack {
    Attack {
        via: Via::Psql,
        ..simple(what, sql, rule)
    }
}

pub(super) const TFM: &str = "tenant-filter-missing";
pub(super) const TVM: &str = "tenant-value-mismatch";
pub(super) const LNP: &str = "literal-not-parameter";
pub(super) const TSW: &str = "tenant-setting-write";
pub(super) const FF: &str = "forbidden-function";
pub(super) const FS: &str = "forbidden-statement";

/// The bypass attempts, all as tenant acme. Parameters are what a malicious client would bind.
pub(super) fn attacks() -> Vec<Attack> {
    vec![
        // Unfiltered and badly filtered reads.
        simple("unfiltered select", "SELECT * FROM orders", TFM),
        ext("unfiltered select (extended)", "SELECT * FROM orders", params![], TFM),
        simple("TABLE statement", "TABLE orders", TFM),
        simple("SELECT FROM ONLY", "SELECT * FROM ONLY orders", TFM),
        ext("OR true", "SELECT * FROM orders WHERE tenant_id = $1 OR true", params!["acme"], TFM),
        ext("OR 1=1", "SELECT * FROM orders WHERE tenant_id = $1 OR 1 = 1", params!["acme"], TFM),
        ext("OR other column", "SELECT * FROM orders WHERE tenant_id = $1 OR id = $2", params!["acme", 4i64], TFM),
        ext("AND/OR precedence", "SELECT * FROM orders WHERE tenant_id = $1 AND id = $2 OR id = $3", params!["acme", 1i64, 4i64], TFM),
        ext("tenant_id <> $1", "SELECT * FROM orders WHERE tenant_id <> $1", params!["acme"], TFM),
        ext("NOT (tenant_id <> $1)", "SELECT * FROM orders WHERE NOT (tenant_id <> $1)", params!["acme"], TFM),
        ext("CASE", "SELECT * FROM orders WHERE CASE WHEN tenant_id = $1 THEN true ELSE true END", params!["acme"], TFM),
        ext("= ANY($1) with both tenants", "SELECT * FROM orders WHERE tenant_id = ANY($1)", params![vec!["acme", "globex"]], TFM),
        ext("LIKE", "SELECT * FROM orders WHERE tenant_id LIKE $1", params!["%"], TFM),
        ext("range", "SELECT * FROM orders WHERE tenant_id >= $1", params![""], TFM),
        simple("tautology tenant_id = tenant_id", "SELECT * FROM orders WHERE tenant_id = tenant_id", TFM),
        ext("IS NOT DISTINCT FROM", "SELECT * FROM orders WHERE tenant_id IS NOT DISTINCT FROM $1", params!["acme"], TFM),
        ext("COALESCE", "SELECT * FROM orders WHERE tenant_id = COALESCE($1, tenant_id)", params!["acme"], TFM),
        simple("other setting", "SELECT * FROM orders WHERE tenant_id = current_setting('app.other_setting')", TFM),
        ext("tenant from a subquery", "SELECT * FROM orders WHERE tenant_id = (SELECT tenant_id FROM orders WHERE id = $1)", params![4i64], TFM),
        Attack { code: "54001", ..ext("column alias swaps id and tenant_id", "SELECT * FROM orders AS o(id, tenant_id) WHERE o.tenant_id = $1", params!["acme"], "too-complex") },
        // Set operations, subqueries, CTEs, LATERAL, joins.
        ext("UNION arm unfiltered", "SELECT id FROM orders WHERE tenant_id = $1 UNION SELECT id FROM orders", params!["acme"], TFM),
        ext("UNION ALL arm bound to globex", "SELECT id FROM orders WHERE tenant_id = $1 UNION ALL SELECT id FROM orders WHERE tenant_id = $2", params!["acme", "globex"], TVM),
        ext("subquery in WHERE unfiltered", "SELECT * FROM orders WHERE tenant_id = $1 AND customer_id IN (SELECT id FROM customers)", params!["acme"], TFM),
        ext("EXISTS unfiltered", "SELECT * FROM orders o WHERE o.tenant_id = $1 AND EXISTS (SELECT 1 FROM invoices i WHERE i.order_id = o.id)", params!["acme"], TFM),
        ext("subquery in select list unfiltered", "SELECT id, (SELECT count(*) FROM orders) FROM customers WHERE tenant_id = $1", params!["acme"], TFM),
        ext("CTE unfiltered", "WITH x AS (SELECT * FROM orders) SELECT * FROM x", params![], TFM),
        ext("CTE filtered outside only", "WITH x AS (SELECT * FROM orders) SELECT * FROM x WHERE x.tenant_id = $1", params!["acme"], TFM),
        simple("data-modifying CTE DELETE", "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", TFM),
        ext("data-modifying CTE UPDATE", "WITH x AS (UPDATE orders SET status = $1 WHERE status = $2 RETURNING *) SELECT * FROM x", params!["hacked", "paid"], TFM),
        ext("recursive CTE unfiltered arm", "WITH RECURSIVE r AS (SELECT id FROM orders WHERE tenant_id = $1 UNION ALL SELECT o.id FROM orders o, r WHERE o.id = r.id + 1) SELECT * FROM r", params!["acme"], TFM),
        ext("LATERAL unfiltered", "SELECT * FROM orders o, LATERAL (SELECT * FROM invoices i WHERE i.order_id = o.id) x WHERE o.tenant_id = $1", params!["acme"], TFM),
        ext("join side without composite FK", "SELECT o.id, i.amount FROM orders o JOIN invoices i ON i.order_id = o.id WHERE o.tenant_id = $1", params!["acme"], TFM),
        ext("cross join unfiltered", "SELECT * FROM orders, customers WHERE orders.tenant_id = $1", params!["acme"], TFM),
        ext("NATURAL JOIN", "SELECT * FROM orders NATURAL JOIN customers WHERE orders.tenant_id = $1", params!["acme"], TFM),
        ext("parent filtered by id only", "SELECT o.* FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.id = $1", params![3i64], TFM),
        ext("self join on tenant column only", "SELECT * FROM orders a JOIN orders b ON a.tenant_id = b.tenant_id", params![], TFM),
        ext("shared table joined to unfiltered tenant table", "SELECT * FROM orders, plans WHERE plans.id = $1", params![1i64], TFM),
        ext("EXPLAIN ANALYZE DELETE", "EXPLAIN ANALYZE DELETE FROM orders", params![], FS),
        ext("EXPLAIN ANALYZE filter oracle", "EXPLAIN ANALYZE SELECT id FROM orders WHERE tenant_id = $1 AND status = $2", params!["acme", "paid"], FS),
        simple("DECLARE CURSOR unfiltered", "DECLARE c CURSOR FOR SELECT * FROM orders", TFM),
        session_only(simple("DECLARE CURSOR WITH HOLD unfiltered", "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM orders", TFM)),
        // Literals and Bind values.
        // A literal is no proof of the tenant under require_parameters: the filter is missing.
        simple("literal globex", "SELECT * FROM orders WHERE tenant_id = 'globex'", TFM),
        ext("OR literal globex", "SELECT * FROM orders WHERE tenant_id = $1 OR tenant_id = 'globex'", params!["acme"], TFM),
        ext("literal in another predicate", "SELECT * FROM orders WHERE tenant_id = $1 AND status = 'paid'", params!["acme"], LNP),
        simple("literal of own tenant", "SELECT * FROM orders WHERE tenant_id = 'acme'", TFM),
        ext("Bind $1 = globex (binary)", "SELECT * FROM orders WHERE tenant_id = $1", params!["globex"], TVM),
        ext("Bind $1 = globex with $1::text cast", "SELECT * FROM orders WHERE tenant_id = $1::text", params!["globex"], TVM),
        ext("Bind second tenant parameter = globex", "SELECT * FROM orders WHERE tenant_id = $1 AND tenant_id = $2", params!["acme", "globex"], TVM),
        ext("Bind tenant of a join chain = globex", "SELECT o.id FROM orders o JOIN customers c ON c.tenant_id = o.tenant_id AND c.id = o.customer_id WHERE c.tenant_id = $1", params!["globex"], TVM),
        ext("composite-key OR, second branch bound to globex", "SELECT id FROM orders WHERE (tenant_id = $1 AND id = $2 OR tenant_id = $3 AND id = $4)", params!["acme", 1i64, "globex", 4i64], TVM),
        ext("tuple IN, second tuple bound to globex", "SELECT id FROM orders WHERE (tenant_id, id) IN (($1, $2), ($3, $4))", params!["acme", 1i64, "globex", 4i64], TVM),
        ext("tenant IN list with globex", "SELECT id FROM orders WHERE tenant_id IN ($1, $2)", params!["acme", "globex"], TVM),
        ext("composite-key OR, a branch without the tenant", "SELECT id FROM orders WHERE (tenant_id = $1 AND id = $2 OR id = $3)", params!["acme", 1i64, 4i64], TFM),
        ext("Bind empty tenant", "SELECT * FROM orders WHERE tenant_id = $1", params![""], TVM),
        ext("Bind NULL tenant", "SELECT * FROM orders WHERE tenant_id = $1", params![None::<String>], TVM),
        // The tenant setting, roles, session commands.
        simple("set_config literal", "SELECT set_config('app.current_tenant', 'globex', false)", TSW),
        // The setting name is a parameter: the policy cannot tell which setting, so set_config is refused as such.
        ext("set_config bound", "SELECT set_config($1, $2, false)", params!["app.current_tenant", "globex"], FF),
        ext("set_config hidden in a filtered query", "SELECT id FROM orders WHERE tenant_id = $1 AND set_config('app.current_tenant', $2, true) IS NOT NULL", params!["acme", "globex"], TSW),
        batch("SET app.current_tenant", "SET app.current_tenant = 'globex'", TSW),
        batch("SET LOCAL app.current_tenant", "SET LOCAL app.current_tenant = 'globex'", TSW),
        batch("SET app.current_tenant TO DEFAULT", "SET app.current_tenant TO DEFAULT", TSW),
        batch("RESET app.current_tenant", "RESET app.current_tenant", TSW),
        ext("RESET ALL as a prepared statement", "RESET ALL", params![], TSW),
        ext("DISCARD ALL as a prepared statement", "DISCARD ALL", params![], TSW),
        batch("SET row_security", "SET row_security = off", TSW),
        batch("fixed user SET tenantgate.tenant", "SET tenantgate.tenant = 'globex'", TSW),
        batch("fixed user RESET tenantgate.tenant", "RESET tenantgate.tenant", TSW),
        batch("SET ROLE", "SET ROLE tg_server", "role-change"),
        batch("SET SESSION AUTHORIZATION", "SET SESSION AUTHORIZATION postgres", "role-change"),
        batch("RESET ROLE", "RESET ROLE", "role-change"),
        // Several statements, dynamic SQL, files, other sessions.
        simple("multi-statement", "SELECT 1; SELECT * FROM orders", "multi-statement"),
        simple("multi-statement with BEGIN", "BEGIN; SET LOCAL app.current_tenant = 'globex'; SELECT * FROM orders WHERE tenant_id = current_setting('app.current_tenant')", "multi-statement"),
        simple("query_to_xml", "SELECT query_to_xml('select * from orders', true, true, '')", FF),
        simple("table_to_xml", "SELECT table_to_xml('orders', true, true, '')", FF),
        simple("pg_read_file", "SELECT pg_read_file('/etc/passwd')", FF),
        simple("dblink", "SELECT * FROM dblink('dbname=app', 'SELECT * FROM orders') AS t(id int)", FF),
        simple("lo_import", "SELECT lo_import('/etc/passwd')", FF),
        ext("pg_terminate_backend", "SELECT pg_terminate_backend($1)", params![1i32], FF),
        simple("pg_sleep", "SELECT pg_sleep(10)", FF),
        simple("pg_stat_activity", "SELECT query FROM pg_stat_activity", "catalog-view"),
        simple("pg_authid", "SELECT rolname, rolpassword FROM pg_catalog.pg_authid", "catalog-view"),
        simple("unknown relation", "SELECT * FROM secrets", "unknown-relation"),
        simple("CALL", "CALL do_something()", FF),
        // COPY.
        Attack { via: Via::CopyOut, ..simple("COPY orders TO STDOUT", "COPY orders TO STDOUT", "copy") },
        Attack { via: Via::CopyOut, ..simple("COPY (unfiltered query) TO STDOUT", "COPY (SELECT * FROM orders) TO STDOUT", TFM) },
        simple("COPY TO PROGRAM", "COPY (SELECT * FROM orders WHERE tenant_id = current_setting('app.current_tenant')) TO PROGRAM 'cat > /tmp/tg_stolen'", "copy"),
        simple("COPY FROM PROGRAM", "COPY orders FROM PROGRAM 'echo globex'", "copy"),
        simple("COPY TO file", "COPY orders TO '/tmp/tg_stolen'", "copy"),
        simple("COPY FROM STDIN", "COPY orders FROM STDIN", "copy"),
        // DDL and maintenance.
        batch("DROP TABLE", "DROP TABLE orders", "ddl"),
        batch("ALTER TABLE DISABLE RLS", "ALTER TABLE orders DISABLE ROW LEVEL SECURITY", "ddl"),
        batch("ALTER TABLE NO FORCE RLS", "ALTER TABLE orders NO FORCE ROW LEVEL SECURITY", "ddl"),
        batch("DROP POLICY", "DROP POLICY IF EXISTS tenant_isolation ON orders", "ddl"),
        batch("CREATE FUNCTION", "CREATE FUNCTION steal() RETURNS SETOF orders LANGUAGE sql SECURITY DEFINER AS 'SELECT * FROM orders'", "ddl"),
        batch("CREATE VIEW", "CREATE VIEW all_orders AS SELECT * FROM orders", "ddl"),
        ext("CREATE TABLE AS", "CREATE TABLE stolen AS SELECT * FROM orders WHERE tenant_id = $1", params!["acme"], "ddl"),
        batch("GRANT", "GRANT ALL ON orders TO PUBLIC", "ddl"),
        batch("TRUNCATE", "TRUNCATE orders CASCADE", FS),
        batch("DO block", "DO $$ BEGIN DELETE FROM orders; END $$", FS),
        session_only(batch("PREPARE", "PREPARE p AS SELECT * FROM orders", FS)),
        session_only(batch("EXECUTE", "EXECUTE p", FS)),
        Attack {
            in_tx_mode: Some(("26000", "prepared statement \"p\" does not exist")),
            ..batch("DEALLOCATE", "DEALLOCATE p", FS)
        },
        session_only(batch("LISTEN", "LISTEN tenant_events", FS)),
        batch("NOTIFY", "NOTIFY tenant_events, 'x'", FS),
        batch("LOCK TABLE", "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE", FS),
        batch("VACUUM", "VACUUM orders", FS),
        batch("ALTER SYSTEM", "ALTER SYSTEM SET row_security = off", FS),
        ext("SELECT INTO", "SELECT * INTO stolen FROM orders WHERE tenant_id = $1", params!["acme"], FS),
        // Writes.
        simple("DELETE without filter", "DELETE FROM orders", TFM),
        ext("DELETE by id only", "DELETE FROM orders WHERE id = $1", params![4i64], TFM),
        ext("UPDATE by id only", "UPDATE orders SET status = $1 WHERE id = $2", params!["hacked", 4i64], TFM),
        ext("UPDATE SET tenant_id = literal", "UPDATE orders SET tenant_id = 'globex' WHERE tenant_id = $1", params!["acme"], "tenant-column-write"),
        ext("UPDATE SET tenant_id = $2", "UPDATE orders SET tenant_id = $2 WHERE tenant_id = $1", params!["acme", "globex"], "tenant-column-write"),
        ext("UPDATE FROM unfiltered", "UPDATE orders o SET total = s.total FROM orders s WHERE o.tenant_id = $1 AND o.id = s.id - 3", params!["acme"], TFM),
        ext("DELETE USING unfiltered", "DELETE FROM invoices i USING orders o WHERE o.tenant_id = $1 AND o.id = i.order_id", params!["acme"], TFM),
        simple("INSERT literal globex", "INSERT INTO orders (tenant_id, id, customer_id, total, status) VALUES ('globex', 100, 3, 1, 'x')", TFM),
        ext("INSERT $1 bound to globex", "INSERT INTO orders (tenant_id, id, customer_id, total, status) VALUES ($1, $2, $3, $4::float8, $5)", params!["globex", 100i64, 3i64, 1.0f64, "x"], TVM),
        ext("UNNEST insert, one element globex", r#"INSERT INTO "orders" ("tenant_id", "id", "customer_id", "total", "status") SELECT * FROM UNNEST(($1)::varchar(50)[], ($2)::bigint[], ($3)::bigint[], ($4)::float8[], ($5)::varchar(20)[])"#, params![vec!["acme", "globex"], vec![102i64, 103], vec![1i64, 1], vec![1.0f64, 1.0], vec!["x", "x"]], TVM),
        ext("UNNEST insert, a longer sibling array (padded with NULL tenants)", r#"INSERT INTO "orders" ("tenant_id", "id", "customer_id", "total", "status") SELECT * FROM UNNEST(($1)::varchar(50)[], ($2)::bigint[], ($3)::bigint[], ($4)::float8[], ($5)::varchar(20)[])"#, params![vec!["acme"], vec![102i64, 103], vec![1i64, 1], vec![1.0f64, 1.0], vec!["x", "x"]], TVM),
        ext("UNNEST insert, a NULL tenant element", r#"INSERT INTO "orders" ("tenant_id", "id", "customer_id", "total", "status") SELECT * FROM UNNEST(($1)::text[], ($2)::bigint[], ($3)::bigint[], ($4)::float8[], ($5)::text[])"#, params![vec![Some("acme"), None], vec![102i64, 103], vec![1i64, 1], vec![1.0f64, 1.0], vec!["x", "x"]], TVM),
        ext("INSERT second row bound to globex", "INSERT INTO orders (tenant_id, id, customer_id, total, status) VALUES ($1, $2, $3, $4::float8, $5), ($6, $7, $3, $4::float8, $5)", params!["acme", 100i64, 1i64, 1.0f64, "x", "globex", 101i64], TVM),
        ext("INSERT without tenant column", "INSERT INTO orders (id, customer_id, total, status) VALUES ($1, $2, $3::float8, $4)", params![100i64, 1i64, 1.0f64, "x"], TFM),
        simple("INSERT … SELECT unfiltered", "INSERT INTO orders (tenant_id, id, customer_id, total, status) SELECT tenant_id, id + 1000, customer_id, total, status FROM orders", TFM),
        ext("upsert moving the row", "INSERT INTO orders (tenant_id, id, customer_id, total, status) VALUES ($1, $2, $3, $4::float8, $5) ON CONFLICT (tenant_id, id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id", params!["acme", 1i64, 1i64, 1.0f64, "x"], "tenant-column-write"),
        ext("upsert without tenant in conflict target", "INSERT INTO customers (tenant_id, id, name) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name", params!["acme", 3i64, "pwned"], TFM),
        ext("write to the shared table", "UPDATE plans SET price = $1 WHERE id = $2", params![0.0f64, 3i64], "shared-table-write"),
        ext("insert into the shared table", "INSERT INTO plans (id, name, price) VALUES ($1, $2, $3::float8)", params![9i64, "free-forever", 0.0f64], "shared-table-write"),
        simple("MERGE without tenant filter", "MERGE INTO orders o USING customers c ON c.id = o.customer_id WHEN MATCHED THEN DELETE", TFM),
        // psql, a real libpq client, each on a new connection.
        psql("psql: unfiltered select", "SELECT * FROM orders", TFM),
        psql("psql: \\copy", "\\copy orders to stdout", "copy"),
        psql("psql: SET tenant setting", "SET app.current_tenant = 'globex'", TSW),
        psql("psql: multi-statement", "SELECT 1; SELECT * FROM orders", "multi-statement"),
        psql("psql: DELETE without filter", "DELETE FROM orders", TFM),
        psql("psql: literal globex", "SELECT * FROM orders WHERE tenant_id = 'globex'", TFM),
    ]
}
