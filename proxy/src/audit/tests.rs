#![allow(clippy::unwrap_used)]

use super::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tg-audit-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn log(&self) -> PathBuf {
        self.0.join("audit.jsonl")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(path: &Path) -> AuditConfig {
    AuditConfig {
        path: Some(path.display().to_string()),
        ..AuditConfig::default()
    }
}

fn event(kind: AuditKind) -> AuditEvent {
    AuditEvent {
        kind,
        conn: 7,
        client_addr: crate::io::Peer::Tcp("127.0.0.1:40000".parse().unwrap()),
        user: "acme_app".into(),
        database: "app".into(),
        tenant: Some("acme".into()),
        isolation: Some("row"),
    }
}

fn statement(decision: &'static str, n: usize) -> AuditEvent {
    event(AuditKind::Statement {
        decision,
        rule: if decision == "allow" {
            "allowed"
        } else {
            "tenant-filter-missing"
        },
        reason: "no tenant filter on orders".into(),
        fingerprint: format!("{n:016x}"),
        query: format!("SELECT * FROM orders WHERE id = $1 /* {n} */"),
        sqlstate: if decision == "allow" {
            "00000"
        } else {
            "42501"
        },
    })
}

async fn write(config: &AuditConfig, events: impl IntoIterator<Item = AuditEvent>) {
    let log = AuditLog::start(config).unwrap().unwrap();
    for e in events {
        log.record(e).await;
    }
    log.shutdown().await;
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<String>)) {
    let mut l = lines(path);
    edit(&mut l);
    std::fs::write(path, l.join("\n") + "\n").unwrap();
}

fn broken_line(result: Result<Verified, VerifyError>) -> (String, u64, String) {
    match result {
        Err(VerifyError::Broken {
            file,
            line,
            problem,
        }) => (file, line, problem),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

/// 10 records: connect, 8 statements (allowed and rejected), disconnect.
async fn ten_records(path: &Path) {
    let mut events = vec![event(AuditKind::Connect)];
    events.extend((0..8).map(|n| statement(if n % 2 == 0 { "allow" } else { "reject" }, n)));
    events.push(event(AuditKind::Disconnect));
    write(&config(path), events).await;
}

#[tokio::test]
async fn chain_verifies_and_lines_follow_the_documented_format() {
    let dir = TempDir::new();
    let path = dir.log();
    ten_records(&path).await;
    let v = verify(std::slice::from_ref(&path)).unwrap();
    assert_eq!((v.records, v.first_seq, v.last_seq), (10, 1, 10));
    assert!(v.from_genesis);
    assert!(v.to_string().starts_with("ok: 10 records, chain intact"));
    let l = lines(&path);
    let first = json(&l[0]);
    assert_eq!(first["prev_hash"], ZERO_HASH);
    assert_eq!(first["event"], "connect");
    assert_eq!(first["tenant"], "acme");
    assert!(l[0].starts_with("{\"ts\":\"") && l[0].contains("Z\",\"seq\":1,\"conn\":7,"));
    let reject = json(&l[2]);
    assert_eq!(reject["event"], "statement");
    assert_eq!(reject["decision"], "reject");
    assert_eq!(reject["rule"], "tenant-filter-missing");
    assert_eq!(reject["sqlstate"], "42501");
    assert_eq!(reject["prev_hash"], json(&l[1])["hash"]);
    let keys: Vec<&str> = [
        "\"ts\"",
        "\"seq\"",
        "\"conn\"",
        "\"client_addr\"",
        "\"user\"",
    ]
    .into_iter()
    .chain([
        "\"database\"",
        "\"tenant\"",
        "\"event\"",
        "\"decision\"",
        "\"rule\"",
    ])
    .chain(["\"reason\"", "\"fingerprint\"", "\"query\"", "\"sqlstate\""])
    .chain(["\"prev_hash\"", "\"hash\""])
    .collect();
    let positions: Vec<usize> = keys.iter().map(|k| l[2].find(k).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{}", l[2]);
}

#[tokio::test]
async fn an_edited_byte_is_named_by_line() {
    let dir = TempDir::new();
    let path = dir.log();
    ten_records(&path).await;
    rewrite(&path, |l| l[4] = l[4].replacen("orders", "orderz", 1));
    let (file, line, problem) = broken_line(verify(std::slice::from_ref(&path)));
    assert_eq!((file.as_str(), line), (path.to_str().unwrap(), 5));
    assert!(problem.contains("altered"), "{problem}");

    // An edited hash: that line again, not the next.
    ten_records(&dir.0.join("b.jsonl")).await;
    let path = dir.0.join("b.jsonl");
    rewrite(&path, |l| {
        let at = l[3].len() - 5;
        let c = if &l[3][at..at + 1] == "0" { "1" } else { "0" };
        l[3].replace_range(at..at + 1, c);
    });
    assert_eq!(broken_line(verify(std::slice::from_ref(&path))).1, 4);
}

#[tokio::test]
async fn a_deleted_line_is_named() {
    let dir = TempDir::new();
    let path = dir.log();
    ten_records(&path).await;
    rewrite(&path, |l| {
        l.remove(3);
    });
    let (_, line, problem) = broken_line(verify(std::slice::from_ref(&path)));
    assert_eq!(line, 4);
    assert!(problem.contains("record seq 4 missing"), "{problem}");

    // Deleting the first record: the chain no longer starts a log.
    rewrite(&path, |l| {
        l.remove(0);
    });
    assert_eq!(broken_line(verify(std::slice::from_ref(&path))).1, 1);
}

#[tokio::test]
async fn a_truncated_final_line_is_reported_as_a_crash_not_tampering() {
    let dir = TempDir::new();
    let path = dir.log();
    ten_records(&path).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.len() - 40;
    std::fs::write(&path, &text[..cut]).unwrap();
    let err = verify(std::slice::from_ref(&path)).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Truncated {
                line: 10,
                records: 9,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("truncated final line 10 (crash during write?)"));
}

#[tokio::test]
async fn a_restart_continues_the_chain_and_rotates_a_crashed_file() {
    let dir = TempDir::new();
    let path = dir.log();
    ten_records(&path).await;
    // A clean restart appends and continues the sequence.
    write(&config(&path), [statement("reject", 100)]).await;
    let v = verify(&log_files(&path).unwrap()).unwrap();
    assert_eq!((v.records, v.last_seq), (11, 11));

    // Killed mid-write: the partial line stays final in its (rotated) file.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() - 30]).unwrap();
    write(&config(&path), [statement("reject", 101)]).await;
    let files = log_files(&path).unwrap();
    assert_eq!(files.len(), 2);
    let header = json(&lines(&path)[0]);
    assert_eq!(header["event"], "header");
    assert_eq!(header["seq"], 11);
    assert_eq!(header["prev_file"], "audit.jsonl.000001");
    let err = verify(&files).unwrap_err();
    assert!(
        matches!(&err, VerifyError::Truncated { line: 11, records: 12, file } if file.ends_with(".000001")),
        "{err:?}"
    );
}

#[tokio::test]
async fn rotation_keeps_the_chain_across_files() {
    let dir = TempDir::new();
    let path = dir.log();
    let mut cfg = config(&path);
    cfg.rotate_bytes = 2000;
    cfg.rotate_keep = 1000;
    write(&cfg, (0..200).map(|n| statement("reject", n))).await;
    let files = log_files(&path).unwrap();
    assert!(files.len() > 10, "{files:?}");
    for pair in files.windows(2) {
        let header = json(&lines(&pair[1])[0]);
        assert_eq!(header["event"], "header");
        assert_eq!(
            header["prev_file"],
            pair[0].file_name().unwrap().to_str().unwrap()
        );
        let before = lines(&pair[0]);
        assert_eq!(header["prev_hash"], json(before.last().unwrap())["hash"]);
    }
    let v = verify(&files).unwrap();
    assert_eq!(v.records, 200 + files.len() as u64 - 1);
    assert!(v.from_genesis);
    // Swapping two files breaks it.
    let mut swapped = files.clone();
    swapped.swap(1, 2);
    broken_line(verify(&swapped));

    // Keeping only two rotated files: what is left still verifies, from a header.
    cfg.rotate_keep = 2;
    write(&cfg, (0..100).map(|n| statement("reject", n))).await;
    let files = log_files(&path).unwrap();
    assert_eq!(files.len(), 3);
    let v = verify(&files).unwrap();
    assert!(!v.from_genesis);
    assert!(v.to_string().contains("the files before it were not given"));
}

#[tokio::test]
async fn allowed_statements_are_sampled() {
    let dir = TempDir::new();
    let path = dir.log();
    let mut cfg = config(&path);
    cfg.log_allowed = "sample:4".into();
    let events = (0..20).map(|n| statement("allow", n));
    write(&cfg, events.chain([statement("reject", 99)])).await;
    let decisions: Vec<String> = lines(&path)
        .iter()
        .map(|l| json(l)["decision"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(decisions.iter().filter(|d| *d == "allow").count(), 5);
    assert_eq!(decisions.iter().filter(|d| *d == "reject").count(), 1);

    let path = dir.0.join("none.jsonl");
    let mut cfg = config(&path);
    cfg.log_allowed = "none".into();
    let events = (0..20).map(|n| statement("allow", n));
    write(&cfg, events.chain([statement("would-reject", 99)])).await;
    let l = lines(&path);
    assert_eq!(l.len(), 1);
    assert_eq!(json(&l[0])["decision"], "would-reject");
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_allowed_records_but_rejections_wait() {
    let dir = TempDir::new();
    let path = dir.log();
    let mut cfg = config(&path);
    cfg.queue_size = 4;
    let (release, hold) = oneshot::channel();
    let log = AuditLog::start_held(&cfg, Some(hold)).unwrap().unwrap();
    for n in 0..10 {
        log.record(statement("allow", n)).await;
    }
    // The queue is full: a rejection waits for room instead of being dropped.
    let waiting = tokio::spawn({
        let log = log.clone();
        async move { log.record(statement("reject", 10)).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    release.send(()).unwrap();
    waiting.await.unwrap();
    log.shutdown().await;
    let l = lines(&path);
    let events: Vec<serde_json::Value> = l.iter().map(|l| json(l)).collect();
    let count = |d: &str| events.iter().filter(|e| e["decision"] == d).count();
    assert_eq!((count("allow"), count("reject")), (4, 1));
    let dropped: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "dropped").collect();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0]["count"], 6);
    assert_eq!(verify(&[path]).unwrap().records, 6);
}

#[tokio::test]
async fn reopen_follows_an_external_rename() {
    let dir = TempDir::new();
    let path = dir.log();
    let log = AuditLog::start(&config(&path)).unwrap().unwrap();
    for n in 0..3 {
        log.record(statement("reject", n)).await;
    }
    // Let the writer catch up, then rotate the file the way logrotate does.
    while std::fs::metadata(&path).map_or(0, |m| m.len()) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let old = dir.0.join("audit.jsonl-20240101");
    std::fs::rename(&path, &old).unwrap();
    log.reopen();
    for n in 3..6 {
        log.record(statement("reject", n)).await;
    }
    log.shutdown().await;
    let header = json(&lines(&path)[0]);
    assert_eq!(header["event"], "header");
    let v = verify(&[old, path]).unwrap();
    assert_eq!(v.records, 7);
}

#[tokio::test]
async fn no_path_means_no_log_and_no_records_is_an_error() {
    assert!(AuditLog::start(&AuditConfig::default()).unwrap().is_none());
    let dir = TempDir::new();
    std::fs::write(dir.log(), "").unwrap();
    assert!(matches!(verify(&[dir.log()]), Err(VerifyError::Empty)));
    let mut cfg = config(&dir.log());
    cfg.fsync = "sometimes".into();
    assert!(AuditLog::start(&cfg).is_err());
    // Standard output: no file, no rotation; shutdown still returns.
    let mut cfg = config(Path::new("-"));
    cfg.rotate_bytes = 1;
    write(&cfg, [statement("reject", 1), statement("reject", 2)]).await;
    assert!(!Path::new("-").exists());
}

#[tokio::test]
async fn session_events_carry_their_own_fields() {
    let dir = TempDir::new();
    let path = dir.log();
    let switch = event(AuditKind::TenantSwitch {
        from: Some("acme".into()),
        to: None,
    });
    let mut failure = event(AuditKind::AuthFailure);
    failure.tenant = None;
    failure.isolation = None;
    write(&config(&path), [failure, switch]).await;
    let l = lines(&path);
    assert!(l[0].contains("\"tenant\":null,\"event\":\"auth_failure\",\"prev_hash\""));
    assert!(l[1].contains("\"event\":\"tenant_switch\",\"from\":\"acme\",\"to\":null,"));
    assert!(l[1].contains(",\"isolation\":\"row\",\"prev_hash\""));
    assert_eq!(verify(&[path]).unwrap().records, 2);
}
