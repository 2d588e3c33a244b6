//! ParameterStatus and session settings in transaction mode, compared with a direct connection:
//! a client sees exactly the ParameterStatus messages (and setting values) it would see on
//! Postgres itself, whatever SET form it uses and however often the proxy moves it to a server
//! another client left with other settings; and none of its settings reach that other client.

use super::*;
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tenantgate_tests::wire::BackendMessage;

/// Startup settings of the client under test: values as Postgres spells them, different from
/// the server's defaults and from the other client's.
const STARTUP: &[(&str, &str)] = &[
    ("TimeZone", "America/Sao_Paulo"),
    ("DateStyle", "ISO, DMY"),
    ("application_name", "x-app"),
    ("IntervalStyle", "postgres_verbose"),
];

/// What the other client sets on the shared server between the steps of the client under
/// test (so that each of its transactions starts on a server with other settings).
const OTHER_SETTINGS: &str = "SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'SQL, MDY'; \
     SET IntervalStyle = 'sql_standard'; SET application_name = 'other'; \
     SET default_transaction_isolation = 'repeatable read'; SET xmloption = 'document'; \
     SET search_path = pg_catalog";

/// [`pipeline::summarize`], with ParameterStatus kept as `S name=value`.
fn with_statuses(messages: &[BackendMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| {
            if m.tag == b'S' {
                let mut parts = m.body.split(|&b| b == 0);
                let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
                let value = String::from_utf8_lossy(parts.next().unwrap_or_default());
                return Some(format!("S {name}={value}"));
            }
            pipeline::summarize(std::slice::from_ref(m)).pop()
        })
        .collect()
}

/// A raw connection to `addr` with `extra` startup parameters; returns it and the startup
/// ParameterStatus values.
async fn connect_with(
    addr: SocketAddr,
    user: &str,
    password: &str,
    extra: &[(&str, &str)],
) -> (RawConn, std::collections::HashMap<String, String>) {
    let mut c = RawConn::connect(addr).await.unwrap();
    let mut params = vec![
        ("user", user),
        ("database", pg::APP_DB),
        ("client_encoding", "UTF8"),
    ];
    params.extend_from_slice(extra);
    let mut buf = BytesMut::new();
    frontend::startup_message(params, &mut buf).unwrap();
    c.send(&buf).await.unwrap();
    let info = c.authenticate(user, Some(password)).await.unwrap();
    (c, info.parameters)
}

async fn run(conn: &mut RawConn, sql: &str) -> Vec<String> {
    let replies = pipeline::round_trip(conn, &pipeline::query(sql), 1)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut out = vec![format!("> {sql}")];
    out.extend(with_statuses(&replies));
    out
}

/// Runs `steps` directly on Postgres and through a transaction-mode proxy with one server,
/// where another client takes the server (and puts its own settings on it) between any two
/// steps; returns both transcripts. The startup ParameterStatus values of the settings in
/// [`STARTUP`] are the first lines.
async fn direct_and_proxied(
    proxy: &TestProxy,
    startup: &[(&str, &str)],
    steps: &[&str],
) -> (Vec<String>, Vec<String>) {
    let startup_lines = |params: &std::collections::HashMap<String, String>| {
        let mut lines: Vec<String> = startup
            .iter()
            .map(|(k, _)| {
                format!(
                    "startup {k}={}",
                    params.get(*k).cloned().unwrap_or_default()
                )
            })
            .collect();
        lines.sort();
        lines
    };
    let (mut direct, params) =
        connect_with(pg_addr(), pg::SERVICE_USER, pg::SERVICE_PASSWORD, startup).await;
    let mut want = startup_lines(&params);
    for step in steps {
        want.extend(run(&mut direct, step).await);
    }

    let (mut other, _) =
        connect_with(proxy.addr, SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, &[]).await;
    run(&mut other, OTHER_SETTINGS).await;
    let (mut client, params) =
        connect_with(proxy.addr, SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, startup).await;
    let mut got = startup_lines(&params);
    for step in steps {
        got.extend(run(&mut client, step).await);
        // Between transactions only: inside one, the client holds the server.
        let idle = got.last().is_some_and(|l| l == "Ready I");
        if idle {
            run(&mut other, "SELECT 1").await;
        }
    }
    (want, got)
}

async fn assert_same(proxy: &TestProxy, steps: &[&str]) {
    let (want, got) = direct_and_proxied(proxy, STARTUP, steps).await;
    assert_eq!(
        got,
        want,
        "through the proxy (left) and direct (right) differ:\n{}",
        side_by_side(&got, &want)
    );
}

fn side_by_side(got: &[String], want: &[String]) -> String {
    let n = got.len().max(want.len());
    (0..n)
        .map(|i| {
            let g = got.get(i).map(String::as_str).unwrap_or("");
            let w = want.get(i).map(String::as_str).unwrap_or("");
            let mark = if g == w { " " } else { "!" };
            format!("{mark} {g:<50} | {w}\n")
        })
        .collect()
}

/// The values of the settings the sequences change, as one row.
const SHOW_ALL: &str = "SELECT current_setting('TimeZone'), current_setting('DateStyle'), \
     current_setting('IntervalStyle'), current_setting('application_name'), \
     current_setting('default_transaction_isolation'), current_setting('xmloption'), \
     current_setting('search_path'), current_setting('client_encoding'), \
     current_setting('statement_timeout'), current_setting('extra_float_digits')";

/// SET and RESET of reported settings, at session level, with the client moved between
/// servers after each statement.
#[tokio::test]
async fn set_and_reset_report_as_on_postgres() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "SET and RESET", async {
        assert_same(
            &proxy,
            &[
                SHOW_ALL,
                "SET TimeZone = 'Europe/Paris'",
                "SELECT now() IS NOT NULL",
                "SET DateStyle = 'German'",
                "SET IntervalStyle = 'iso_8601'",
                "SET application_name = 'renamed'",
                SHOW_ALL,
                "SET TimeZone = 'Europe/Paris'",
                "RESET TimeZone",
                "SET DateStyle TO DEFAULT",
                "RESET application_name",
                SHOW_ALL,
                "SET TimeZone = 'UTC'; SET TimeZone = 'Europe/Paris'; SET TimeZone = 'UTC'",
                "SELECT 1",
                SHOW_ALL,
            ],
        )
        .await;
    })
    .await;
}

/// RESET ALL and DISCARD ALL go back to the startup values, as on Postgres.
#[tokio::test]
async fn reset_all_and_discard_all_report_as_on_postgres() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "RESET ALL and DISCARD ALL", async {
        assert_same(
            &proxy,
            &[
                "SET TimeZone = 'Europe/Paris'",
                "SET application_name = 'renamed'",
                "RESET ALL",
                SHOW_ALL,
                "SET DateStyle = 'German'",
                "DISCARD ALL",
                SHOW_ALL,
                "DISCARD ALL",
                SHOW_ALL,
                "BEGIN",
                "SET TimeZone = 'Europe/Paris'",
                "RESET ALL",
                SHOW_ALL,
                "COMMIT",
                SHOW_ALL,
            ],
        )
        .await;
    })
    .await;
}

/// Inside transactions: a rolled-back SET reports the value it reverts to, SET LOCAL ends at
/// COMMIT, ROLLBACK TO SAVEPOINT undoes a SET, a SET in an aborted transaction fails.
#[tokio::test]
async fn transactional_settings_report_as_on_postgres() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "transactional SET", async {
        assert_same(
            &proxy,
            &[
                "BEGIN",
                "SET TimeZone = 'Europe/Paris'",
                SHOW_ALL,
                "ROLLBACK",
                SHOW_ALL,
                "BEGIN",
                "SET LOCAL DateStyle = 'German'",
                "SET LOCAL application_name = 'local'",
                "COMMIT",
                SHOW_ALL,
                "BEGIN",
                "SAVEPOINT s",
                "SET application_name = 'inner'",
                "ROLLBACK TO SAVEPOINT s",
                "SET IntervalStyle = 'iso_8601'",
                "COMMIT",
                SHOW_ALL,
                "BEGIN",
                "SELECT 1/0",
                "SET TimeZone = 'Europe/Paris'",
                "ROLLBACK",
                SHOW_ALL,
                "BEGIN; SET TimeZone = 'Europe/Paris'; ROLLBACK",
                SHOW_ALL,
                "BEGIN; SET TimeZone = 'Europe/Paris'; COMMIT",
                SHOW_ALL,
                "BEGIN",
                "SELECT 1/0",
                "RESET TimeZone",
                "ROLLBACK",
                SHOW_ALL,
                "BEGIN",
                "SET LOCAL TimeZone TO DEFAULT",
                "RESET DateStyle",
                SHOW_ALL,
                "ROLLBACK",
                SHOW_ALL,
                "SET LOCAL IntervalStyle TO DEFAULT",
                SHOW_ALL,
            ],
        )
        .await;
    })
    .await;
}

/// The special SET forms and set_config.
#[tokio::test]
async fn set_forms_report_as_on_postgres() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "SET forms", async {
        assert_same(
            &proxy,
            &[
                "SET TIME ZONE 'UTC'",
                SHOW_ALL,
                "SET TIME ZONE LOCAL",
                SHOW_ALL,
                "SET TIME ZONE INTERVAL '+03:00' HOUR TO MINUTE",
                SHOW_ALL,
                "SET TIME ZONE DEFAULT",
                SHOW_ALL,
                "SET NAMES 'UTF8'",
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                "SET XML OPTION CONTENT",
                "SET SCHEMA 'public'",
                SHOW_ALL,
                "SELECT set_config('TimeZone', 'Europe/Paris', false)",
                "SELECT set_config('application_name', 'by-function', true)",
                SHOW_ALL,
                "SET SESSION application_name = 'session'",
                SHOW_ALL,
                "SET seed = 0.5",
                "SELECT 1",
            ],
        )
        .await;
    })
    .await;
}

/// The same, in the extended protocol (drivers prepare SET statements too).
#[tokio::test]
async fn extended_protocol_settings_report_as_on_postgres() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "extended SET", async {
        let steps = [
            "SET TimeZone = 'Europe/Paris'",
            "SELECT set_config('DateStyle', 'SQL, DMY', false)",
            SHOW_ALL,
            "RESET DateStyle",
            "SET TimeZone TO DEFAULT",
            SHOW_ALL,
        ];
        assert_same_extended(&proxy, &steps, &[]).await;
    })
    .await;
}

/// A reset in the extended protocol of a setting the client gave at startup.
#[tokio::test]
#[ignore = "a reset of a startup setting goes back to it only in a simple query of one statement \
            (README, Limitations): in the extended protocol the server's default is restored"]
async fn extended_protocol_reset_of_startup_settings() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "extended RESET", async {
        let steps = ["SET TimeZone = 'Europe/Paris'", "RESET TimeZone", SHOW_ALL];
        assert_same_extended(&proxy, &steps, STARTUP).await;
    })
    .await;
}

/// Runs `steps` as Parse/Bind/Execute/Sync directly and through the proxy, the client logged
/// in with `startup`, and compares the transcripts.
async fn assert_same_extended(proxy: &TestProxy, steps: &[&str], startup: &[(&str, &str)]) {
    {
        let extended = |conn: RawConn| async move {
            let mut conn = conn;
            let mut out = Vec::new();
            for sql in steps.iter().copied() {
                let replies =
                    pipeline::round_trip(&mut conn, &pipeline::simple_extended(sql, &[]), 1)
                        .await
                        .unwrap();
                out.push(format!("> {sql}"));
                out.extend(with_statuses(&replies));
            }
            out
        };
        let (direct, _) =
            connect_with(pg_addr(), pg::SERVICE_USER, pg::SERVICE_PASSWORD, startup).await;
        let want = extended(direct).await;
        let (client, _) =
            connect_with(proxy.addr, SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, startup).await;
        let got = extended(client).await;
        assert_eq!(got, want, "\n{}", side_by_side(&got, &want));
    }
}

/// Startup values Postgres normalizes (a lower-case DateStyle, a long application_name) are
/// reported as Postgres reports them, also when the proxy logs the client in without a
/// server (the pool's values known).
#[tokio::test]
#[ignore = "a login without a server reports startup values as the client wrote them; the \
            values Postgres normalizes follow before the first ReadyForQuery after a checkout"]
async fn startup_values_are_reported_as_postgres_normalizes_them() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "startup normalization", async {
        let long_name = "n".repeat(70);
        let startup = [
            ("DateStyle", "iso, dmy"),
            ("TimeZone", "utc"),
            ("application_name", long_name.as_str()),
        ];
        let steps = [
            SHOW_ALL,
            "SET DateStyle = 'ISO, DMY'",
            "SET TimeZone = 'UTC'",
        ];
        let (want, got) = direct_and_proxied(&proxy, &startup, &steps).await;
        assert_eq!(got, want, "\n{}", side_by_side(&got, &want));
    })
    .await;
}

/// Nothing of one client's settings, in any SET form, reaches the next client of its server.
#[tokio::test]
async fn no_set_form_reaches_the_next_client() {
    let proxy = TestProxy::start(transaction_mode(1)).await;
    within(60, "SET forms do not leak", async {
        let (mut fresh, _) =
            connect_with(proxy.addr, SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, &[]).await;
        let before = run(&mut fresh, SHOW_ALL).await;
        let show_all = run(&mut fresh, "SHOW ALL").await;
        for sql in [
            "SET TIME ZONE 'Europe/Paris'",
            "SET TIME ZONE INTERVAL '+03:00' HOUR TO MINUTE",
            "SET NAMES 'UTF8'",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET XML OPTION DOCUMENT",
            "SET SCHEMA 'pg_catalog'",
            "SET extra_float_digits = 1",
            "SELECT set_config('statement_timeout', '4242', false)",
            "SET DateStyle = 'German'; SET IntervalStyle = 'iso_8601'",
            "BEGIN; SET LOCAL work_mem = '1234kB'; SET lock_timeout = 4321; COMMIT",
            "BEGIN; SAVEPOINT a; SET application_name = 'kept'; RELEASE a; COMMIT",
            "RESET ALL; SET application_name = 'after reset all'",
        ] {
            let (mut client, _) =
                connect_with(proxy.addr, SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, &[]).await;
            let replies = run(&mut client, sql).await;
            assert!(
                !replies.iter().any(|l| l.starts_with("Error")),
                "{sql}: {replies:?}"
            );
            let mut after = run(&mut fresh, SHOW_ALL).await;
            // Without the ParameterStatus the proxy owes the client (none is expected).
            assert_eq!(after, before, "after {sql}");
            after = run(&mut fresh, "SHOW ALL").await;
            assert_eq!(after, show_all, "after {sql}");
        }
    })
    .await;
}

/// Session mode gives the startup settings to the server the same way: resets go back to them
/// there too.
#[tokio::test]
async fn session_mode_resets_report_as_on_postgres() {
    let proxy = TestProxy::start(base_config(PgServer::shared())).await;
    within(60, "session mode resets", async {
        assert_same(
            &proxy,
            &[
                "SET TimeZone = 'Europe/Paris'",
                "RESET TimeZone",
                "SET DateStyle = 'German'",
                "RESET ALL",
                SHOW_ALL,
                "SET application_name = 'renamed'",
                "DISCARD ALL",
                SHOW_ALL,
            ],
        )
        .await;
    })
    .await;
}
