//! Minimal reproductions of divergences between transaction pooling and a direct connection,
//! found by the differential test (`differential.rs`) or by hand: each script runs against
//! PostgreSQL (one connection per client) and through the proxy (clients sharing one server),
//! and the replies must be the same.

use super::*;
use pipeline::query;

/// One step: which client sends `batch`, and how many ReadyForQuery it brings.
struct Step(usize, Vec<u8>, usize);

/// Runs `steps` with `clients` clients directly and through a proxy with `config`; asserts
/// that every reply is the same.
async fn same_as_direct(config: Config, clients: usize, steps: &[Step]) {
    let proxy = TestProxy::start(config).await;
    within(60, "script", async {
        let mut direct = Vec::new();
        let mut proxied = Vec::new();
        for _ in 0..clients {
            direct.push(raw_direct().await);
            proxied.push(raw_proxy(&proxy).await);
        }
        for (i, Step(who, batch, readies)) in steps.iter().enumerate() {
            let d = pipeline::round_trip(&mut direct[*who], batch, *readies)
                .await
                .unwrap();
            let p = pipeline::round_trip(&mut proxied[*who], batch, *readies)
                .await
                .unwrap();
            assert_eq!(
                pipeline::summarize(&p),
                pipeline::summarize(&d),
                "step {i} (client {who}): proxy (left) and PostgreSQL (right) differ"
            );
        }
    })
    .await;
}

fn run(statement: &str) -> Vec<u8> {
    [bind("", statement, &[], &[]), execute("", 0), sync()].concat()
}

/// A simple Query drops the unnamed statement (PostgreSQL's `exec_simple_query`): a later Bind
/// or Describe of it fails with 26000, also when the server changed in between.
#[tokio::test]
async fn a_simple_query_drops_the_unnamed_statement() {
    let steps = [
        Step(0, [parse("", "SELECT 1", &[]), sync()].concat(), 1),
        Step(0, query("SELECT 2"), 1),
        Step(0, run(""), 1),
        Step(0, [parse("", "SELECT 3", &[]), sync()].concat(), 1),
        Step(1, query("SELECT 4"), 1),
        Step(0, query("SELECT 5"), 1),
        Step(0, [describe(b'S', ""), sync()].concat(), 1),
    ];
    same_as_direct(transaction_mode(1), 2, &steps).await;
}

/// A simple Query that PostgreSQL skips, because an earlier message of its segment failed,
/// drops nothing: the unnamed statement parsed before it still runs, also after another
/// client's Query dropped it on the shared server (with and without
/// `cache_unnamed_statements`).
#[tokio::test]
async fn a_skipped_simple_query_keeps_the_unnamed_statement() {
    let skipped_query = [execute("nope", 0), query("SELECT 2"), sync()].concat();
    let steps = [
        Step(0, [parse("", "SELECT 1", &[]), sync()].concat(), 1),
        Step(0, skipped_query.clone(), 1),
        Step(0, run(""), 1),
        Step(1, query("SELECT 4"), 1),
        Step(0, skipped_query, 1),
        Step(0, run(""), 1),
        // Behind a skipped Query, a Parse replaces it as usual.
        Step(
            0,
            [
                execute("nope", 0),
                query("SELECT 5"),
                sync(),
                parse("", "SELECT 6", &[]),
                sync(),
            ]
            .concat(),
            2,
        ),
        Step(0, run(""), 1),
        // A Query that runs (and fails) drops it.
        Step(0, query("SELECT 1/0"), 1),
        Step(0, run(""), 1),
    ];
    for cache_unnamed in [false, true] {
        let mut config = transaction_mode(1);
        config.proxy.cache_unnamed_statements = cache_unnamed;
        same_as_direct(config, 2, &steps).await;
    }
}

/// A Parse that PostgreSQL skips because an earlier message of its segment failed creates no
/// statement, also when the server already held the statement's text under its global name
/// (the proxy answers such a Parse itself); a Close skipped that way closes nothing.
#[tokio::test]
async fn a_parse_skipped_after_an_error_creates_no_statement() {
    let failing = [
        parse("", "SELECT 1/0", &[]),
        bind("", "", &[], &[]),
        execute("", 0),
    ]
    .concat();
    let steps = [
        // Client 0 leaves the text prepared on the only server.
        Step(0, [parse("s1", "SELECT 1", &[]), sync()].concat(), 1),
        Step(
            1,
            [failing, parse("s1", "SELECT 1", &[]), sync()].concat(),
            1,
        ),
        Step(1, run("s1"), 1),
        Step(1, [parse("s1", "SELECT 1", &[]), sync()].concat(), 1),
        Step(1, run("s1"), 1),
    ];
    same_as_direct(transaction_mode(1), 2, &steps).await;
}

/// With a statement cache of one, preparing a second statement evicts the first (the proxy
/// closes it on the server). If an earlier error makes the server skip that Close, the server
/// still holds the first statement, and using it again must not fail with 42P05.
#[tokio::test]
async fn an_eviction_close_skipped_after_an_error_leaves_no_duplicate() {
    let mut config = transaction_mode(1);
    config.proxy.max_prepared_statements = 1;
    let steps = [
        Step(0, [parse("a", "SELECT 1", &[]), sync()].concat(), 1),
        Step(
            0,
            [
                bind("", "a", &[], &[]),
                execute("", 0),
                execute("nope", 0),
                parse("b", "SELECT 2", &[]),
                sync(),
            ]
            .concat(),
            1,
        ),
        Step(0, run("a"), 1),
        Step(0, [parse("b", "SELECT 2", &[]), sync()].concat(), 1),
        Step(0, run("b"), 1),
        Step(0, run("a"), 1),
    ];
    same_as_direct(config, 1, &steps).await;
}

/// In a failed transaction block PostgreSQL refuses a Parse with 25P02 (and creates nothing),
/// even of a text the server has prepared already.
#[tokio::test]
async fn a_parse_in_a_failed_transaction_block_fails_with_25p02() {
    let steps = [
        Step(0, [parse("s0", "SELECT 1", &[]), sync()].concat(), 1),
        Step(1, query("BEGIN"), 1),
        Step(1, query("SELECT 1/0"), 1),
        Step(1, [parse("s1", "SELECT 1", &[]), sync()].concat(), 1),
        // The empty query and ROLLBACK are allowed there.
        Step(1, [parse("s2", "", &[]), sync()].concat(), 1),
        Step(1, query("ROLLBACK"), 1),
        Step(1, run("s1"), 1),
        Step(1, run("s2"), 1),
    ];
    same_as_direct(transaction_mode(1), 2, &steps).await;
}

/// `DEALLOCATE` in a failed transaction block fails with 25P02 and deallocates nothing.
#[tokio::test]
async fn deallocate_in_a_failed_transaction_block_fails_with_25p02() {
    let steps = [
        Step(0, [parse("s1", "SELECT 1", &[]), sync()].concat(), 1),
        Step(0, query("BEGIN"), 1),
        Step(0, query("SELECT 1/0"), 1),
        Step(0, query("DEALLOCATE s1"), 1),
        Step(0, query("DEALLOCATE nope"), 1),
        Step(0, query("DEALLOCATE ALL"), 1),
        Step(0, query("ROLLBACK"), 1),
        Step(0, run("s1"), 1),
    ];
    same_as_direct(transaction_mode(1), 1, &steps).await;
}

/// A Close of a name whose own Parse, earlier in the same segment, is skipped after an error:
/// PostgreSQL skips both, so the name never exists. The proxy must not put the Parse's
/// statement back when it learns that the Close was skipped.
#[tokio::test]
async fn a_close_behind_a_skipped_parse_of_its_name_restores_nothing() {
    let steps = [
        Step(
            0,
            [
                parse("", "SELECT 1/$1::int", &[]),
                bind("", "", &[], &[Some(b"0")]),
                execute("", 0),
                parse("s2", "SELECT 2", &[]),
                close(b'S', "s2"),
                sync(),
            ]
            .concat(),
            1,
        ),
        Step(0, run("s2"), 1),
    ];
    same_as_direct(transaction_mode(1), 1, &steps).await;
}

/// A simple query that fails while it runs leaves its unnamed portal in the aborted
/// transaction (PostgreSQL drops it only at the ROLLBACK), so an Execute of the unnamed portal
/// then fails with 25P02, not 34000. The proxy answers `DEALLOCATE nope` itself and sends a
/// statement that fails in its place: that statement must fail at execution too (seed 23).
#[tokio::test]
async fn a_refused_simple_query_leaves_its_portal_as_postgres_does() {
    let steps = [
        Step(0, query("BEGIN"), 1),
        Step(0, query("DEALLOCATE nope"), 1),
        Step(0, [execute("", 0), sync()].concat(), 1),
        Step(0, query("ROLLBACK"), 1),
    ];
    same_as_direct(transaction_mode(1), 1, &steps).await;
}

/// An unnamed Parse that PostgreSQL skips after an earlier error of its segment leaves no
/// unnamed statement when a simple Query dropped the last one: a Bind of it sent right behind
/// the Sync gets 26000 (seed 225). The proxy must not replay the skipped Parse for it.
#[tokio::test]
async fn a_bind_behind_a_skipped_unnamed_parse_finds_no_statement() {
    let steps = [
        Step(0, [parse("", "SELECT 1 AS a", &[]), sync()].concat(), 1),
        Step(0, query("SELECT 2"), 1),
        Step(
            0,
            [
                describe(b'P', ""),
                parse("", "SELECT 3 AS c", &[]),
                sync(),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ]
            .concat(),
            2,
        ),
    ];
    same_as_direct(transaction_mode(1), 1, &steps).await;
}

/// A Parse the proxy answers itself (the server has the text already) that PostgreSQL skips
/// after an error creates no name, so a Parse of the same name right behind the Sync succeeds
/// (seed 845). The proxy must wait for the replies before it treats the name as taken.
#[tokio::test]
async fn a_parse_behind_a_skipped_answered_parse_of_its_name_succeeds() {
    let steps = [
        // The server gets the text prepared; the client's name goes, the server's stays.
        Step(0, [parse("s9", "SELECT 5", &[]), sync()].concat(), 1),
        Step(0, [close(b'S', "s9"), sync()].concat(), 1),
        Step(
            0,
            [
                execute("p1", 0),
                parse("s2", "SELECT 5", &[]),
                sync(),
                parse("s2", "SELECT 6", &[]),
                sync(),
            ]
            .concat(),
            2,
        ),
        Step(0, run("s2"), 1),
    ];
    same_as_direct(transaction_mode(1), 1, &steps).await;
}
