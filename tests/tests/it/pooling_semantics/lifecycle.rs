//! The statement-lifecycle script run against the proxy and against Postgres.

use super::*;

/// One step of the statement-lifecycle script: a batch and its number of Syncs.
pub(super) struct Step {
    pub(super) what: &'static str,
    pub(super) batch: Vec<u8>,
    pub(super) syncs: usize,
    /// Lines the reply must contain (so the script tests what it says), besides being equal to
    /// PostgreSQL's own reply.
    pub(super) must_contain: &'static [&'static str],
}

pub(super) fn lifecycle_steps() -> Vec<Step> {
    vec![
        Step {
            what: "Parse named, Describe statement and portal",
            batch: [
                parse("s1", "SELECT $1::int4 AS a, 'x'::text AS b", &[]),
                describe(b'S', "s1"),
                bind("p1", "s1", &[], &[Some(b"42")]),
                describe(b'P', "p1"),
                execute("p1", 0),
                sync(),
            ]
            .concat(),
            syncs: 1,
            must_contain: &["Params[23]", "Fields[a:23,b:25]", "Row[42,x]"],
        },
        Step {
            what: "named statement is still there in a later transaction",
            batch: [bind("", "s1", &[], &[Some(b"7")]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Row[7,x]"],
        },
        Step {
            what: "duplicate Parse of a name without Close",
            batch: [parse("s1", "SELECT 2", &[]), sync()].concat(),
            syncs: 1,
            must_contain: &["Error 42P05"],
        },
        Step {
            what: "the original statement survives the failed duplicate",
            batch: [bind("", "s1", &[], &[Some(b"8")]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Row[8,x]"],
        },
        Step {
            what: "Close statement",
            batch: [close(b'S', "s1"), sync()].concat(),
            syncs: 1,
            must_contain: &["CloseComplete"],
        },
        Step {
            what: "Bind to the closed statement",
            batch: [bind("", "s1", &[], &[Some(b"9")]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Error 26000"],
        },
        Step {
            what: "re-Parse the closed name with other text",
            batch: [
                parse("s1", "SELECT 'reused'::text AS r", &[]),
                describe(b'S', "s1"),
                bind("", "s1", &[], &[]),
                execute("", 0),
                sync(),
            ]
            .concat(),
            syncs: 1,
            must_contain: &["Fields[r:25]", "Row[reused]"],
        },
        Step {
            what: "Bind to a never-prepared name",
            batch: [bind("", "never_prepared", &[], &[]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Error 26000"],
        },
        Step {
            what: "Describe a never-prepared statement",
            batch: [describe(b'S', "never_prepared"), sync()].concat(),
            syncs: 1,
            must_contain: &["Error 26000"],
        },
        Step {
            what: "Close a never-prepared statement (not an error)",
            batch: [close(b'S', "never_prepared"), sync()].concat(),
            syncs: 1,
            must_contain: &["CloseComplete"],
        },
        Step {
            what: "unnamed statements replace each other within a batch",
            batch: [
                parse("", "SELECT $1::text AS t", &[]),
                bind("", "", &[], &[Some(b"u1")]),
                execute("", 0),
                parse("", "SELECT 5::int4 AS five", &[]),
                bind("", "", &[], &[]),
                describe(b'P', ""),
                execute("", 0),
                sync(),
            ]
            .concat(),
            syncs: 1,
            must_contain: &["Row[u1]", "Fields[five:23]", "Row[5]"],
        },
        Step {
            what: "the unnamed statement lasts until the next Parse or Query",
            batch: [bind("", "", &[], &[]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Row[5]"],
        },
        Step {
            what: "the unnamed statement survives a failed Bind",
            batch: [
                parse("", "SELECT $1::int4 AS n", &[]),
                bind("", "", &[], &[Some(b"abc")]),
                execute("", 0),
                sync(),
                bind("", "", &[], &[Some(b"6")]),
                execute("", 0),
                sync(),
            ]
            .concat(),
            syncs: 2,
            must_contain: &["Error 22P02", "Row[6]"],
        },
        Step {
            what: "Describe the unnamed statement",
            batch: [
                parse("", "SELECT $1::int8 + 1 AS n", &[]),
                describe(b'S', ""),
                sync(),
            ]
            .concat(),
            syncs: 1,
            must_contain: &["ParseComplete", "Fields[n:20]"],
        },
        Step {
            what: "Close the unnamed statement, then Bind it",
            batch: [
                parse("", "SELECT 7", &[]),
                close(b'S', ""),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ]
            .concat(),
            syncs: 1,
            must_contain: &["CloseComplete", "Error 26000"],
        },
        Step {
            what: "a closed unnamed statement stays closed in the next transaction",
            batch: [bind("", "", &[], &[]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Error 26000"],
        },
        Step {
            what: "a failed Parse drops the unnamed statement",
            batch: [
                parse("", "SELECT 8", &[]),
                sync(),
                parse("", "SELEC 8", &[]),
                sync(),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ]
            .concat(),
            syncs: 3,
            must_contain: &["Error 42601", "Error 26000"],
        },
        Step {
            what: "a failed Parse of the unnamed statement",
            batch: [parse("", "SELEC 9", &[]), sync()].concat(),
            syncs: 1,
            must_contain: &["Error 42601"],
        },
        Step {
            what: "… drops it for later transactions too",
            batch: [bind("", "", &[], &[]), execute("", 0), sync()].concat(),
            syncs: 1,
            must_contain: &["Error 26000"],
        },
        Step {
            what: "Close portal, then Describe it",
            batch: [
                parse("s2", "SELECT 1", &[]),
                bind("p2", "s2", &[], &[]),
                close(b'P', "p2"),
                describe(b'P', "p2"),
                sync(),
            ]
            .concat(),
            syncs: 1,
            must_contain: &["Error 34000"],
        },
        Step {
            what: "partial Execute (max rows) inside a transaction",
            batch: [
                pipeline::query("BEGIN"),
                parse("s3", "SELECT g FROM generate_series(1, 5) g", &[]),
                bind("p3", "s3", &[], &[]),
                execute("p3", 2),
                execute("p3", 2),
                execute("p3", 2),
                sync(),
                pipeline::query("COMMIT"),
            ]
            .concat(),
            syncs: 3,
            must_contain: &["PortalSuspended", "Ready T", "Complete SELECT 1"],
        },
        Step {
            what: "statements named like another client's",
            batch: [
                parse("s2", "SELECT 'dup'", &[]),
                sync(),
                bind("", "s2", &[], &[]),
                execute("", 0),
                sync(),
            ]
            .concat(),
            syncs: 2,
            must_contain: &["Error 42P05", "Row[1]"],
        },
    ]
}

/// Runs the lifecycle script on `main`; before each step `other` (another client that, through
/// the proxy, shares the single server) uses the same statement names for other text.
pub(super) async fn run_lifecycle(
    main: &mut RawConn,
    other: &mut RawConn,
) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (n, step) in lifecycle_steps().into_iter().enumerate() {
        let noise = [
            parse("s1", &format!("SELECT 'other-{n}'::text, $1::int8"), &[]),
            parse("s2", "SELECT 'other-s2'", &[]),
            bind("", "s1", &[], &[Some(b"1")]),
            execute("", 0),
            close(b'S', "s1"),
            close(b'S', "s2"),
            parse("", "SELECT 'other unnamed'", &[]),
            sync(),
        ]
        .concat();
        let o = pipeline::round_trip(other, &noise, 1).await.unwrap();
        assert!(
            !o.iter().any(|m| m.tag == b'E'),
            "other client failed: {:?}",
            pipeline::summarize(&o)
        );
        let replies = pipeline::round_trip(main, &step.batch, step.syncs)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", step.what));
        out.push((step.what.to_string(), pipeline::summarize(&replies)));
    }
    out
}
