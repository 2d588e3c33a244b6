//! A seeded, randomized differential test of transaction pooling: sequences of frontend messages
//! drawn from a small alphabet (Parse, Bind, Describe, Execute with and without a row limit,
//! Close, Flush, Sync, simple Queries) are sent by several clients, each both to its own direct
//! PostgreSQL connection and through the proxy, where the clients share one or two servers. The
//! replies must be the same message for message (`pipeline::summarize`: tags, SQLSTATEs, rows).
//!
//! `TENANTGATE_DIFF_CASES` sets the number of sequences per proxy configuration (default 40),
//! `TENANTGATE_DIFF_SEED` runs the one sequence of that seed.
//!
//! Left out on purpose: SQL-level `PREPARE`/`EXECUTE` (refused with 0A000 in transaction mode,
//! see README, "Session-only features"), COPY, and a Flush that ends a batch (how many replies
//! it brings cannot be known without waiting; `messages_after_a_flushed_error_are_skipped_up_to_the_sync`
//! covers flushed errors).

use super::*;

/// xorshift64*: tiny, deterministic, and enough to pick from small lists.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero, and different seeds diverge from the first draw.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Statement texts, with the parameters each needs: a plain one, one with a parameter, a
/// multi-row one (for row limits), one that fails at Parse, one that fails at Execute when its
/// parameter is 0, and the empty query.
const TEXTS: &[(&str, usize)] = &[
    ("SELECT 1 AS a", 0),
    ("SELECT $1::int + 1 AS b", 1),
    ("SELECT g FROM generate_series(1, 4) g", 0),
    ("SELEC 1", 0),
    ("SELECT 10 / $1::int AS d", 1),
    ("", 0),
];

/// Simple queries: transaction control, errors, `DEALLOCATE` (which the proxy answers itself
/// in transaction mode), and a cursor, whose portal the extended protocol can execute.
const QUERIES: &[&str] = &[
    "BEGIN",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SELECT 1",
    "SELECT 1/0",
    "DEALLOCATE s1",
    "DEALLOCATE ALL",
    "DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 3) g",
    "SELECT 2; SELECT 3",
];

const STATEMENTS: &[&str] = &["", "", "s1", "s2"];
const PORTALS: &[&str] = &["", "", "p1"];

/// What the generator believes each client has prepared (best effort: a failed Parse is not
/// noticed), so that most Binds send the right number of parameters.
#[derive(Default, Clone)]
struct Model {
    params: std::collections::HashMap<&'static str, usize>,
}

/// One batch: its bytes, a readable form for failure reports, and its number of ReadyForQuery.
struct Batch {
    bytes: Vec<u8>,
    text: Vec<String>,
    readies: usize,
}

fn gen_message(rng: &mut Rng, model: &mut Model, out: &mut Batch) {
    let (bytes, text) = match rng.below(100) {
        0..=21 => {
            let name = *rng.pick(STATEMENTS);
            let text = rng.below(TEXTS.len());
            let (sql, n) = TEXTS[text];
            // Declared parameter types make another global statement of the same text.
            let types: &[u32] = if n == 1 && rng.chance(30) { &[23] } else { &[] };
            model.params.insert(name, n);
            (
                parse(name, sql, types),
                format!("P({name:?}, {sql:?}, {types:?})"),
            )
        }
        22..=43 => {
            let portal = *rng.pick(PORTALS);
            let stmt = if rng.chance(5) {
                "nope"
            } else {
                *rng.pick(STATEMENTS)
            };
            let mut n = model.params.get(stmt).copied().unwrap_or(0);
            if rng.chance(10) {
                n = 1 - n.min(1);
            }
            let value: &[u8] = if rng.chance(25) { b"0" } else { b"2" };
            let params: Vec<Option<&[u8]>> = (0..n).map(|_| Some(value)).collect();
            let shown = String::from_utf8_lossy(value);
            (
                bind(portal, stmt, &[], &params),
                format!("B({portal:?}, {stmt:?}, {n}x{shown})"),
            )
        }
        44..=53 => {
            let (kind, name) = if rng.chance(50) {
                (b'S', *rng.pick(STATEMENTS))
            } else {
                (b'P', *rng.pick(&["", "", "p1", "c"]))
            };
            (
                describe(kind, name),
                format!("D({}, {name:?})", kind as char),
            )
        }
        54..=77 => {
            let portal = *rng.pick(&["", "", "", "p1", "c"]);
            let rows = *rng.pick(&[0, 0, 1, 2]);
            (execute(portal, rows), format!("E({portal:?}, {rows})"))
        }
        78..=89 => {
            let (kind, name) = if rng.chance(60) {
                (b'S', *rng.pick(STATEMENTS))
            } else {
                (b'P', *rng.pick(&["", "p1", "c"]))
            };
            (close(kind, name), format!("C({}, {name:?})", kind as char))
        }
        90..=94 => (pipeline::flush(), "H".to_string()),
        _ => {
            out.readies += 1;
            (sync(), "S".to_string())
        }
    };
    out.bytes.extend_from_slice(&bytes);
    out.text.push(text);
}

/// A batch that ends with a Sync (one to three segments), or one simple Query. `in_tx`: the
/// client is inside a transaction block, which should end sooner or later.
fn gen_batch(rng: &mut Rng, model: &mut Model, in_tx: bool) -> Batch {
    let mut batch = Batch {
        bytes: Vec::new(),
        text: Vec::new(),
        readies: 0,
    };
    if rng.chance(if in_tx { 40 } else { 25 }) {
        let sql = if in_tx && rng.chance(50) {
            *rng.pick(&["COMMIT", "ROLLBACK"])
        } else {
            *rng.pick(QUERIES)
        };
        if sql.starts_with("DEALLOCATE") {
            model.params.retain(|name, _| name.is_empty());
        }
        batch.bytes = pipeline::query(sql);
        batch.text.push(format!("Q({sql:?})"));
        batch.readies = 1;
        return batch;
    }
    for _ in 0..1 + rng.below(5) {
        gen_message(rng, model, &mut batch);
    }
    if batch.text.last().is_none_or(|t| t != "S") {
        batch.bytes.extend_from_slice(&sync());
        batch.text.push("S".into());
        batch.readies += 1;
    }
    batch
}

/// One client's two connections.
struct Pair {
    direct: RawConn,
    proxied: RawConn,
    model: Model,
    /// Transaction status after its last batch (from PostgreSQL).
    status: u8,
}

/// Runs the sequence of `seed` with `clients` clients through `proxy`, whose pool has
/// `pool_size` servers; Err describes the first divergence.
async fn run_case(
    proxy: &TestProxy,
    seed: u64,
    clients: usize,
    pool_size: usize,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut pairs = Vec::new();
    for _ in 0..clients {
        pairs.push(Pair {
            direct: raw_direct().await,
            proxied: raw_proxy(proxy).await,
            model: Model::default(),
            status: b'I',
        });
    }
    let mut log: Vec<String> = Vec::new();
    for _ in 0..6 + rng.below(10) {
        // A client inside a transaction block holds a server: with fewer servers than
        // clients, the others would wait for it, so it goes on until it ends the block.
        let in_tx: Vec<usize> = (0..clients).filter(|&i| pairs[i].status != b'I').collect();
        let who = if in_tx.len() >= pool_size {
            *rng.pick(&in_tx)
        } else {
            rng.below(clients)
        };
        let pair = &mut pairs[who];
        let batch = gen_batch(&mut rng, &mut pair.model, pair.status != b'I');
        log.push(format!("client {who}: {}", batch.text.join(" ")));
        let direct = pipeline::round_trip(&mut pair.direct, &batch.bytes, batch.readies)
            .await
            .map_err(|e| format!("direct: {e:#}\n{}", log.join("\n")))?;
        let proxied = pipeline::round_trip(&mut pair.proxied, &batch.bytes, batch.readies)
            .await
            .map_err(|e| format!("proxy: {e:#}\n{}", log.join("\n")))?;
        let (direct, proxied) = (pipeline::summarize(&direct), pipeline::summarize(&proxied));
        if direct != proxied {
            return Err(format!(
                "seed {seed}: replies differ\n{}\n  direct: {direct:?}\n  proxy:  {proxied:?}",
                log.join("\n")
            ));
        }
        pair.status = match direct.last().map(String::as_str) {
            Some("Ready T") => b'T',
            Some("Ready E") => b'E',
            _ => b'I',
        };
    }
    Ok(())
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs the sequences (`TENANTGATE_DIFF_CASES`, default `default_cases`; or the one of
/// `TENANTGATE_DIFF_SEED`) through a proxy with `config`.
async fn run_cases(config: Config, clients: usize, pool_size: usize, default_cases: u64) {
    let cases = env_number("TENANTGATE_DIFF_CASES").unwrap_or(default_cases);
    let seeds: Vec<u64> = match env_number("TENANTGATE_DIFF_SEED") {
        Some(seed) => vec![seed],
        None => (1..=cases).collect(),
    };
    let started = std::time::Instant::now();
    let proxy = TestProxy::start(config).await;
    let mut failures = Vec::new();
    for &seed in &seeds {
        let case = run_case(&proxy, seed, clients, pool_size);
        if let Err(e) = within(120, "differential case", case).await {
            failures.push(e);
            if failures.len() >= 3 {
                break;
            }
        }
    }
    eprintln!("{} sequences in {:?}", seeds.len(), started.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// One server for two clients: every transaction may meet the other client's statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_pipelines_one_server_two_clients() {
    run_cases(transaction_mode(1), 2, 1, 40).await;
}

/// Two servers for three clients, a statement cache of two (statements are evicted while
/// clients still use them) and cached unnamed statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_pipelines_two_servers_tiny_cache_unnamed_cached() {
    let mut config = transaction_mode(2);
    config.proxy.max_prepared_statements = 2;
    config.proxy.cache_unnamed_statements = true;
    run_cases(config, 3, 2, 60).await;
}
