//! Legitimate sessions: ORM queries, the switch user, per-tenant quotas, audit mode.

use super::*;

/// What ORMs send, filtered by tenant, is allowed and returns acme's rows only.
async fn legit_orm_queries(rls: bool) {
    let db = tenant_database(rls).await;
    let pg = PgServer::shared();
    let proxy = TestProxy::start(tenant_config(&db, PoolMode::Transaction, 2)).await;
    let su = pg.superuser_client(&db).await.unwrap();
    let c = proxy.connect_acme().await;
    let t = &ACME_TENANT;
    let ids =
        |rows: Vec<tokio_postgres::Row>| -> Vec<i64> { rows.iter().map(|r| r.get("id")).collect() };

    // Django
    let rows = c
        .query(
            r#"SELECT "orders"."tenant_id", "orders"."id", "orders"."customer_id", "orders"."status" FROM "orders" WHERE "orders"."tenant_id" = $1 ORDER BY "orders"."id" ASC LIMIT 21"#,
            &[t],
        )
        .await
        .unwrap();
    assert!(rows
        .iter()
        .all(|r| r.get::<_, String>("tenant_id") == "acme"));
    assert_eq!(ids(rows), ACME_ORDERS);
    // Rails
    let rows = c
        .query(
            r#"SELECT "orders".* FROM "orders" WHERE "orders"."tenant_id" = $1 AND "orders"."id" = $2 LIMIT $3"#,
            &[t, &2i64, &1i64],
        )
        .await
        .unwrap();
    assert_eq!(ids(rows), [2]);
    // The same Rails query for a globex id finds nothing.
    let rows = c
        .query(
            r#"SELECT "orders".* FROM "orders" WHERE "orders"."tenant_id" = $1 AND "orders"."id" = $2 LIMIT $3"#,
            &[t, &4i64, &1i64],
        )
        .await
        .unwrap();
    assert!(rows.is_empty());
    // SQLAlchemy
    let rows = c
        .query(
            "SELECT orders_1.id AS id, orders_1.status AS orders_1_status FROM orders AS orders_1 WHERE orders_1.tenant_id = $1 AND orders_1.status = $2 ORDER BY orders_1.id",
            &[t, &"paid"],
        )
        .await
        .unwrap();
    assert_eq!(ids(rows), [1, 3]);
    // Prisma
    let rows = c
        .query(
            r#"SELECT "public"."orders"."id", "public"."orders"."status" FROM "public"."orders" WHERE "public"."orders"."tenant_id" = $1 ORDER BY "public"."orders"."id" ASC OFFSET $2"#,
            &[t, &0i64],
        )
        .await
        .unwrap();
    assert_eq!(ids(rows), ACME_ORDERS);
    // Hibernate
    let rows = c
        .query(
            "select o1_0.id,o1_0.customer_id,o1_0.status,o1_0.tenant_id from orders o1_0 where o1_0.tenant_id=$1 order by o1_0.id",
            &[t],
        )
        .await
        .unwrap();
    assert_eq!(ids(rows), ACME_ORDERS);
    // Rails 7.1 composite primary key (tenant_id, id), several records; Hibernate's tuple IN.
    // A globex id under acme's tenant finds nothing.
    let rows = c
        .query(
            r#"SELECT "orders".* FROM "orders" WHERE ("orders"."tenant_id" = $1 AND "orders"."id" = $2 OR "orders"."tenant_id" = $3 AND "orders"."id" = $4) ORDER BY "orders"."id""#,
            &[t, &1i64, t, &4i64],
        )
        .await
        .unwrap();
    assert_eq!(ids(rows), [1]);
    let rows = c
        .query(
            "select o1_0.id from orders o1_0 where (o1_0.tenant_id,o1_0.id) in (($1,$2),($3,$4)) order by o1_0.id",
            &[t, &2i64, t, &3i64],
        )
        .await
        .unwrap();
    assert_eq!(ids(rows), [2, 3]);
    // Eager load of the parent through the composite foreign key (inner and left join).
    for join in ["JOIN", "LEFT JOIN"] {
        let rows = c
            .query(
                &format!("SELECT o.id, c.name, c.tenant_id FROM orders o {join} customers c ON c.id = o.customer_id WHERE o.tenant_id = $1 ORDER BY o.id"),
                &[t],
            )
            .await
            .unwrap_or_else(|e| panic!("eager load with {join}: {e:?}"));
        let got: Vec<(i64, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(
            got,
            [
                (1, "Alice".into(), "acme".into()),
                (2, "Alice".into(), "acme".into()),
                (3, "Bob".into(), "acme".into())
            ]
        );
    }
    // Shared table, and the tenant setting as filter.
    let rows = c
        .query("SELECT id, name FROM plans ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(ids(rows), [1, 2, 3]);
    let rows = c
        .query(
            "SELECT id FROM orders WHERE tenant_id = current_setting('app.current_tenant') ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(ids(rows), ACME_ORDERS);
    let msgs = c
        .simple_query("SELECT id FROM orders WHERE tenant_id = current_setting('app.current_tenant', true)::text ORDER BY id")
        .await
        .unwrap();
    let got: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(got, ["1", "2", "3"]);
    // INSERT … RETURNING, upsert, UPDATE, DELETE, inside a transaction.
    let mut c = c;
    let tx = c.transaction().await.unwrap();
    let row = tx
        .query_one(
            "INSERT INTO orders (tenant_id, id, customer_id, total, status) VALUES ($1, $2, $3, $4::float8, $5) RETURNING id, tenant_id",
            &[t, &10i64, &2i64, &12.5f64, &"new"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10);
    assert_eq!(row.get::<_, String>(1), "acme");
    let row = tx
        .query_one(
            "INSERT INTO orders (tenant_id, id, customer_id, total, status) VALUES ($1, $2, $3, $4::float8, $5) ON CONFLICT (tenant_id, id) DO UPDATE SET status = EXCLUDED.status RETURNING id, status",
            &[t, &10i64, &2i64, &12.5f64, &"upserted"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(1), "upserted");
    let n = tx
        .execute(
            "UPDATE orders SET status = $2 WHERE tenant_id = $1 AND id = $3",
            &[t, &"shipped", &10i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    tx.commit().await.unwrap();
    let n = c
        .execute(
            "DELETE FROM orders WHERE tenant_id = $1 AND id = $2",
            &[t, &10i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Django 5.2 bulk_create of several rows: one array per column, the tenant's checked
    // element by element (binary arrays from tokio-postgres).
    let tenants: Vec<&str> = vec!["acme", "acme"];
    let rows = c
        .query(
            r#"INSERT INTO "orders" ("tenant_id", "id", "customer_id", "total", "status") SELECT * FROM UNNEST(($1)::varchar(50)[], ($2)::bigint[], ($3)::bigint[], ($4)::float8[], ($5)::varchar(20)[]) RETURNING "orders"."id""#,
            &[&tenants, &vec![20i64, 21], &vec![1i64, 2], &vec![1.0f64, 2.0], &vec!["new", "new"]],
        )
        .await
        .unwrap();
    assert_eq!(ids(rows), [20, 21]);
    let n = c
        .execute(
            "DELETE FROM orders WHERE tenant_id = $1 AND id IN ($2, $3)",
            &[t, &20i64, &21i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    // Filtered COPY out.
    {
        use futures_util::TryStreamExt;
        let stream = c
            .copy_out("COPY (SELECT id FROM orders WHERE tenant_id = current_setting('app.current_tenant') ORDER BY id) TO STDOUT")
            .await
            .unwrap();
        let data: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(data.concat(), b"1\n2\n3\n");
    }
    // psql (simple protocol, libpq).
    let out = tools::psql(
        &proxy.conninfo(ACME_USER, pg::APP_DB),
        Some(ACME_PASSWORD),
        "SELECT o.id || ':' || c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.tenant_id = current_setting('app.current_tenant') ORDER BY o.id",
    )
    .await
    .unwrap();
    assert!(out.success, "psql: {}", out.stderr);
    assert_eq!(out.stdout.trim(), "1:Alice\n2:Alice\n3:Bob");
    // Nothing of globex was touched.
    assert_eq!(globex_orders(&su).await, GLOBEX_ORDERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orm_queries_filtered_by_tenant_are_allowed_without_rls() {
    within(120, "legit queries, RLS off", legit_orm_queries(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orm_queries_filtered_by_tenant_are_allowed_with_rls() {
    within(120, "legit queries, RLS on", legit_orm_queries(true)).await;
}

async fn order_ids_of_session_tenant(c: &Client) -> Result<Vec<i64>, tokio_postgres::Error> {
    Ok(c.query(
        "SELECT id FROM orders WHERE tenant_id = current_setting('app.current_tenant') ORDER BY id",
        &[],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

async fn switch_user(mode: PoolMode) {
    let db = tenant_database(true).await;
    let proxy = TestProxy::start(tenant_config(&db, mode, 2)).await;
    let c = proxy
        .connect(SWITCH_USER, SWITCH_PASSWORD, pg::APP_DB)
        .await
        .unwrap();
    // No tenant yet: tenant tables are refused; tenant-free statements work.
    let err = order_ids_of_session_tenant(&c).await.unwrap_err();
    check_rejection(&err, "42501", "tenant-not-set").unwrap();
    let err = c
        .query(
            "SELECT id FROM orders WHERE tenant_id = $1",
            &[&ACME_TENANT],
        )
        .await
        .unwrap_err();
    check_rejection(&err, "42501", "tenant-not-set").unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    c.batch_execute("SET tenantgate.tenant = 'acme'")
        .await
        .unwrap();
    assert_eq!(order_ids_of_session_tenant(&c).await.unwrap(), ACME_ORDERS);
    let rows = c
        .query(
            "SELECT id FROM orders WHERE tenant_id = $1 ORDER BY id",
            &[&ACME_TENANT],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let err = c
        .query(
            "SELECT id FROM orders WHERE tenant_id = $1",
            &[&GLOBEX_TENANT],
        )
        .await
        .unwrap_err();
    check_rejection(&err, "42501", TVM).unwrap();

    c.batch_execute("SET tenantgate.tenant = 'globex'")
        .await
        .unwrap();
    assert_eq!(
        order_ids_of_session_tenant(&c).await.unwrap(),
        GLOBEX_ORDERS
    );
    let rows = c
        .query(
            "SELECT id FROM orders WHERE tenant_id = $1 ORDER BY id",
            &[&GLOBEX_TENANT],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);

    // A tenant outside allowed_tenants is refused and the session keeps globex.
    let err = c
        .batch_execute("SET tenantgate.tenant = 'initech'")
        .await
        .unwrap_err();
    check_rejection(&err, "42501", TVM).unwrap();
    assert_eq!(
        order_ids_of_session_tenant(&c).await.unwrap(),
        GLOBEX_ORDERS
    );
    // The switch user cannot touch the tenant setting directly either.
    let err = c
        .batch_execute("SET app.current_tenant = 'initech'")
        .await
        .unwrap_err();
    check_rejection(&err, "42501", TSW).unwrap();

    // SET LOCAL applies to one transaction only.
    c.batch_execute("SET tenantgate.tenant = 'acme'")
        .await
        .unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("SET LOCAL tenantgate.tenant = 'globex'")
        .await
        .unwrap();
    assert_eq!(
        order_ids_of_session_tenant(&c).await.unwrap(),
        GLOBEX_ORDERS
    );
    let rows = c
        .query(
            "SELECT id FROM orders WHERE tenant_id = $1",
            &[&GLOBEX_TENANT],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(order_ids_of_session_tenant(&c).await.unwrap(), ACME_ORDERS);
    let err = c
        .query(
            "SELECT id FROM orders WHERE tenant_id = $1",
            &[&GLOBEX_TENANT],
        )
        .await
        .unwrap_err();
    check_rejection(&err, "42501", TVM).unwrap();
    // Also after ROLLBACK.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("SET LOCAL tenantgate.tenant = 'globex'")
        .await
        .unwrap();
    assert_eq!(
        order_ids_of_session_tenant(&c).await.unwrap(),
        GLOBEX_ORDERS
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(order_ids_of_session_tenant(&c).await.unwrap(), ACME_ORDERS);
    // SET LOCAL to a tenant not allowed is refused (and aborts the transaction).
    c.batch_execute("BEGIN").await.unwrap();
    let err = c
        .batch_execute("SET LOCAL tenantgate.tenant = 'initech'")
        .await
        .unwrap_err();
    check_rejection(&err, "42501", TVM).unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(order_ids_of_session_tenant(&c).await.unwrap(), ACME_ORDERS);

    // RESET tenantgate.tenant: no tenant again.
    c.batch_execute("RESET tenantgate.tenant").await.unwrap();
    let err = order_ids_of_session_tenant(&c).await.unwrap_err();
    check_rejection(&err, "42501", "tenant-not-set").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_user_selects_its_tenant_transaction_mode() {
    within(
        120,
        "switch user (transaction mode)",
        switch_user(PoolMode::Transaction),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_user_selects_its_tenant_session_mode() {
    within(
        120,
        "switch user (session mode)",
        switch_user(PoolMode::Session),
    )
    .await;
}

/// `max_tenant_connections = 1`: one acme transaction holds acme's only share of the pool; a
/// second acme client waits, globex does not, and the waiter goes on after COMMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_quota_limits_one_tenant_not_the_others() {
    within(120, "tenant quota", async {
        let db = tenant_database(false).await;
        let mut config = tenant_config(&db, PoolMode::Transaction, 3);
        config
            .users
            .iter_mut()
            .find(|u| u.name == ACME_USER)
            .unwrap()
            .max_tenant_connections = Some(1);
        let proxy = TestProxy::start(config).await;
        let a = proxy.connect_acme().await;
        let b = proxy.connect_acme().await;
        let g = proxy
            .connect(GLOBEX_USER, GLOBEX_PASSWORD, pg::APP_DB)
            .await
            .unwrap();
        a.batch_execute("BEGIN").await.unwrap();
        assert_eq!(order_ids_of_session_tenant(&a).await.unwrap(), ACME_ORDERS);

        let waiter = tokio::spawn(async move {
            let ids = order_ids_of_session_tenant(&b).await;
            (ids, b)
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !waiter.is_finished(),
            "second acme client ran while acme's only quota slot was held"
        );
        // globex is not limited by acme's quota (2 servers are still free).
        let ids = tokio::time::timeout(Duration::from_secs(5), order_ids_of_session_tenant(&g))
            .await
            .expect("globex blocked by acme's quota")
            .unwrap();
        assert_eq!(ids, GLOBEX_ORDERS);
        assert!(!waiter.is_finished());

        a.batch_execute("COMMIT").await.unwrap();
        let (ids, b) = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("second acme client still waiting after COMMIT")
            .unwrap();
        assert_eq!(ids.unwrap(), ACME_ORDERS);
        // And the slot comes back after each transaction.
        for _ in 0..3 {
            assert_eq!(order_ids_of_session_tenant(&a).await.unwrap(), ACME_ORDERS);
            assert_eq!(order_ids_of_session_tenant(&b).await.unwrap(), ACME_ORDERS);
        }
    })
    .await;
}

/// `[policy] mode = "audit"`: violations are logged, not refused; RLS still limits the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_allows_but_rls_still_isolates() {
    within(120, "audit mode", async {
        let db = tenant_database(true).await;
        let mut config = tenant_config(&db, PoolMode::Transaction, 2);
        config.policy.mode = PolicyMode::Audit;
        let proxy = TestProxy::start(config).await;
        let c = proxy.connect_acme().await;
        let rows = c
            .query("SELECT tenant_id, id FROM orders ORDER BY id", &[])
            .await
            .unwrap();
        let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            got,
            ACME_ORDERS
                .iter()
                .map(|&i| ("acme".to_string(), i))
                .collect::<Vec<_>>()
        );
        let msgs = c
            .simple_query("SELECT tenant_id FROM orders")
            .await
            .unwrap();
        let n = msgs
            .iter()
            .filter(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("acme")))
            .count();
        assert_eq!(n, 3);
        // A mismatched Bind is let through too; RLS returns nothing of globex.
        let rows = c
            .query(
                "SELECT id FROM orders WHERE tenant_id = $1",
                &[&GLOBEX_TENANT],
            )
            .await
            .unwrap();
        assert!(rows.is_empty(), "RLS let globex rows through");
    })
    .await;
}

/// Commands the proxy applies itself (a tenant switch, DISCARD ALL) inside an extended-protocol
/// batch, behind a message that fails: the server would skip them, so the proxy refuses them
/// there instead of applying what never ran. Otherwise a skipped DISCARD ALL made the proxy
/// forget the statements the shared server still held, and every client of every tenant got
/// 42P05 for them; a skipped switch moved the policy to a tenant the server never got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_commands_behind_a_failing_unsynced_message_change_nothing() {
    let db = within(60, "database", tenant_database(true)).await;
    let read = "SELECT tenant_id FROM orders WHERE tenant_id = $1";
    let run = |name: &str, tenant: &[u8]| {
        [
            pipeline::parse(name, read, &[]),
            pipeline::bind("", name, &[], &[Some(tenant)]),
            pipeline::execute("", 0),
            pipeline::close(b'S', name),
            pipeline::sync(),
        ]
        .concat()
    };
    let behind_failure = |sql: &str| {
        [
            pipeline::parse("", "SELECT 1/0", &[]),
            pipeline::bind("", "", &[], &[]),
            pipeline::execute("", 0),
            pipeline::query(sql),
            pipeline::sync(),
        ]
        .concat()
    };
    let rows = |replies: &[wire::BackendMessage]| {
        pipeline::summarize(replies)
            .into_iter()
            .filter(|m| m.starts_with("Row"))
            .count()
    };
    within(60, "session commands", async {
        // DISCARD ALL, transaction mode, one shared server.
        let proxy = TestProxy::start(tenant_config(&db, PoolMode::Transaction, 1)).await;
        let mut acme = raw_login(&proxy, ACME_USER, ACME_PASSWORD).await;
        let mut globex = raw_login(&proxy, GLOBEX_USER, GLOBEX_PASSWORD).await;
        let replies = pipeline::round_trip(&mut acme, &run("a", b"acme"), 1)
            .await
            .unwrap();
        assert_eq!(rows(&replies), 3);
        let replies = pipeline::round_trip(&mut acme, &behind_failure("DISCARD ALL"), 1)
            .await
            .unwrap();
        assert_eq!(
            pipeline::summarize(&replies),
            ["ParseComplete", "Error 22012", "Ready I"]
        );
        for round in 0..3 {
            let replies = pipeline::round_trip(&mut globex, &run("g", b"globex"), 1)
                .await
                .unwrap();
            let seen = pipeline::summarize(&replies);
            assert_eq!(rows(&replies), 3, "globex, round {round}: {seen:?}");
        }
        // A tenant switch, both pool modes.
        for mode in [PoolMode::Transaction, PoolMode::Session] {
            let proxy = TestProxy::start(tenant_config(&db, mode, 1)).await;
            let mut switch = raw_login(&proxy, SWITCH_USER, SWITCH_PASSWORD).await;
            let set = |t: &str| pipeline::query(&format!("SET tenantgate.tenant = '{t}'"));
            let replies = pipeline::round_trip(&mut switch, &set("acme"), 1)
                .await
                .unwrap();
            assert!(pipeline::first_error(&replies).is_none(), "{mode:?}");
            let sql = "SET tenantgate.tenant = 'globex'";
            let replies = pipeline::round_trip(&mut switch, &behind_failure(sql), 1)
                .await
                .unwrap();
            assert_eq!(
                pipeline::summarize(&replies),
                ["ParseComplete", "Error 22012", "Ready I"]
            );
            let replies = pipeline::round_trip(&mut switch, &run("s", b"acme"), 1)
                .await
                .unwrap();
            let seen = pipeline::summarize(&replies);
            assert_eq!(rows(&replies), 3, "{mode:?}: still acme: {seen:?}");
        }
    })
    .await;
}

/// A switch pipelined behind simple queries the server has not answered yet must be applied to
/// the state they leave, not to the last answered one. `BEGIN; SET tenantgate.tenant =
/// 'globex'; ROLLBACK` in one write once switched the proxy (and its policy) while the
/// ROLLBACK undid the switch on the server. The switch (and DISCARD ALL) now waits for the
/// replies before it, as Postgres would run it after them: inside the transaction it is
/// refused (25001), after a plain query it applies in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_pipelined_behind_unanswered_queries_waits_for_their_replies() {
    let db = within(60, "database", tenant_database(true)).await;
    within(60, "pipelined switch", async {
        for mode in [PoolMode::Transaction, PoolMode::Session] {
            let proxy = TestProxy::start(tenant_config(&db, mode, 1)).await;
            let mut switch = raw_login(&proxy, SWITCH_USER, SWITCH_PASSWORD).await;
            let q = |sql: &str| pipeline::query(sql);
            let replies =
                pipeline::round_trip(&mut switch, &q("SET tenantgate.tenant = 'acme'"), 1)
                    .await
                    .unwrap();
            assert!(pipeline::first_error(&replies).is_none(), "{mode:?}");
            for command in ["SET tenantgate.tenant = 'globex'", "DISCARD ALL"] {
                let batch = [q("BEGIN"), q(command), q("ROLLBACK")].concat();
                let replies = pipeline::round_trip(&mut switch, &batch, 3).await.unwrap();
                assert_eq!(
                    pipeline::summarize(&replies),
                    [
                        "Complete BEGIN",
                        "Ready T",
                        "Error 25001",
                        "Ready E",
                        "Complete ROLLBACK",
                        "Ready I"
                    ],
                    "{mode:?}: {command}"
                );
            }
            let tenant = "SELECT current_setting('app.current_tenant')";
            let replies = pipeline::round_trip(&mut switch, &q(tenant), 1)
                .await
                .unwrap();
            let seen = pipeline::summarize(&replies);
            assert!(
                seen.iter().any(|m| m.contains("acme")),
                "{mode:?}: not acme any more: {seen:?}"
            );
            // Behind a plain query the switch applies in order, for what follows it.
            let batch = [q(tenant), q("SET tenantgate.tenant = 'globex'"), q(tenant)].concat();
            let replies = pipeline::round_trip(&mut switch, &batch, 3).await.unwrap();
            let seen = pipeline::summarize(&replies);
            let rows: Vec<&String> = seen.iter().filter(|m| m.starts_with("Row")).collect();
            assert_eq!(rows.len(), 2, "{mode:?}: {seen:?}");
            assert!(
                rows[0].contains("acme") && rows[1].contains("globex"),
                "{mode:?}: {seen:?}"
            );
        }
    })
    .await;
}
