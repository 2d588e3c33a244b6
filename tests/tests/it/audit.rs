//! The audit log through the real proxy (issue 7): concurrent tenant clients with allowed and
//! rejected statements; after a graceful shutdown every rejection is in the log, the hash
//! chain verifies (across rotated files too), and no literal value, Bind value or password
//! appears in it.

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tenantgate_config::Config;
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::*;
use tenantgate_tests::within;

const LITERAL_SECRET: &str = "hunter2-secret";
const BIND_SECRET: &str = "bind-secret-7f3a";
const WRONG_PASSWORD: &str = "wrong-password-secret-91";

const SCHEMA: &str = "
SET ROLE tg_server;
CREATE TABLE notes (tenant_id text NOT NULL, id bigint NOT NULL, secret text,
                    PRIMARY KEY (tenant_id, id));
INSERT INTO notes VALUES ('acme', 1, 'a'), ('globex', 2, 'b');
RESET ROLE;
";

/// A database of its own with a tenant table (created before the proxy reads the catalog).
async fn audit_database() -> String {
    PgServer::shared().new_database("audit", &[SCHEMA]).await
}

fn audit_config(db: &str, log: &Path) -> Config {
    let mut config = base_config(PgServer::shared());
    config.databases[0].dbname = Some(db.to_string());
    config.audit.path = Some(log.display().to_string());
    config
}

/// Per client, in every four statements: two rejected (no tenant filter; a literal), one
/// allowed and one whose Bind carries another tenant (Parse allowed, Bind rejected).
async fn run_client(client: tokio_postgres::Client, statements: usize) {
    let bound = "SELECT id FROM notes WHERE tenant_id = $1 AND secret = $2";
    let literal = format!(
        "SELECT id FROM notes WHERE tenant_id = current_setting('app.current_tenant') AND secret = '{LITERAL_SECRET}'"
    );
    for i in 0..statements {
        match i % 4 {
            0 => assert!(client.simple_query("SELECT id FROM notes").await.is_err()),
            1 => assert!(client.simple_query(&literal).await.is_err()),
            2 => {
                client.query(bound, &[&"acme", &BIND_SECRET]).await.unwrap();
            }
            _ => assert!(client
                .query(bound, &[&"globex", &BIND_SECRET])
                .await
                .is_err()),
        }
    }
}

/// Connects `clients` acme clients (plus one failed login), runs the workload concurrently
/// and shuts the proxy down.
async fn run_workload(config: Config, clients: usize, statements: usize) {
    let proxy = TestProxy::start(config).await;
    let err = proxy
        .connect(ACME_USER, WRONG_PASSWORD, pg::APP_DB)
        .await
        .err();
    assert!(err.is_some(), "a wrong password was accepted");
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = proxy.connect_acme().await;
        tasks.push(tokio::spawn(run_client(client, statements)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    proxy.shutdown().await.unwrap();
}

struct Log {
    files: Vec<PathBuf>,
    text: String,
    records: Vec<Value>,
}

fn read_log(path: &Path) -> Log {
    let files = tenantgate::audit::log_files(path).unwrap();
    let mut text = String::new();
    for f in &files {
        text.push_str(&std::fs::read_to_string(f).unwrap());
    }
    let records = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Log {
        files,
        text,
        records,
    }
}

impl Log {
    /// Records per `event/decision/rule`.
    fn counts(&self) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for r in &self.records {
            let key = format!(
                "{}/{}/{}",
                r["event"].as_str().unwrap_or(""),
                r["decision"].as_str().unwrap_or(""),
                r["rule"].as_str().unwrap_or("")
            );
            *counts.entry(key).or_default() += 1;
        }
        counts
    }

    fn dropped(&self) -> u64 {
        self.records
            .iter()
            .filter(|r| r["event"] == "dropped")
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    }

    /// Every rejection present, allowed records written or counted as dropped, the chain
    /// intact, and no secret anywhere.
    fn check(&self, clients: usize, statements: usize) {
        let per_kind = (clients * statements / 4) as u64;
        let counts = self.counts();
        let get = |k: &str| counts.get(k).copied().unwrap_or(0);
        assert_eq!(
            get("statement/reject/tenant-filter-missing"),
            per_kind,
            "{counts:?}"
        );
        assert_eq!(
            get("statement/reject/literal-not-parameter"),
            per_kind,
            "{counts:?}"
        );
        assert_eq!(
            get("bind/reject/tenant-value-mismatch"),
            per_kind,
            "{counts:?}"
        );
        assert_eq!(
            get("statement/allow/allowed") + self.dropped(),
            2 * per_kind,
            "{counts:?}"
        );
        assert_eq!(get("connect//"), clients as u64, "{counts:?}");
        assert_eq!(get("disconnect//"), clients as u64, "{counts:?}");
        assert_eq!(get("auth_failure//"), 1, "{counts:?}");
        let verified = tenantgate::audit::verify(&self.files)
            .unwrap_or_else(|e| panic!("audit chain does not verify: {e}"));
        assert_eq!(verified.records, self.records.len() as u64);
        assert!(verified.from_genesis);
        for secret in [LITERAL_SECRET, BIND_SECRET, WRONG_PASSWORD, ACME_PASSWORD] {
            assert!(
                !self.text.contains(secret),
                "{secret:?} appears in the audit log"
            );
        }
        let literal = self
            .records
            .iter()
            .find(|r| r["rule"] == "literal-not-parameter")
            .unwrap();
        assert!(
            literal["query"].as_str().unwrap().contains("secret = $"),
            "{literal}"
        );
        assert_eq!(literal["tenant"], ACME_TENANT);
        assert_eq!(literal["sqlstate"], "42501");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_logged_chained_and_free_of_secrets() {
    const CLIENTS: usize = 20;
    const STATEMENTS: usize = 1000;
    let db = within(60, "audit database", audit_database()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    within(
        240,
        "audit workload",
        run_workload(audit_config(&db, &path), CLIENTS, STATEMENTS),
    )
    .await;
    let log = read_log(&path);
    assert_eq!(log.files.len(), 1);
    log.check(CLIENTS, STATEMENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_keeps_the_chain() {
    const CLIENTS: usize = 10;
    const STATEMENTS: usize = 100;
    let db = within(60, "audit database", audit_database()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut config = audit_config(&db, &path);
    config.audit.rotate_bytes = 32 * 1024;
    config.audit.rotate_keep = 1000;
    config.audit.fsync = "always".into();
    within(
        240,
        "audit workload",
        run_workload(config, CLIENTS, STATEMENTS),
    )
    .await;
    let log = read_log(&path);
    assert!(log.files.len() > 3, "{:?}", log.files);
    let headers = log
        .records
        .iter()
        .filter(|r| r["event"] == "header")
        .count();
    assert_eq!(headers, log.files.len() - 1);
    log.check(CLIENTS, STATEMENTS);
}
