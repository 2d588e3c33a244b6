//! The shipped configuration files parse and validate.

use std::path::{Path, PathBuf};
use tenantgate_config::{Config, PoolMode};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn load(rel: &str) -> Config {
    let path = repo_file(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{rel} does not parse:\n{e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{rel} does not validate:\n{e}"));
    config
}

#[test]
fn example_config_is_valid() {
    let config = load("tenantgate.example.toml");
    assert!(config.database("app").is_some());
}

#[test]
fn demo_config_is_valid() {
    let config = load("examples/demo/tenantgate.toml");
    let app = config.database("app").expect("database app");
    assert_eq!(app.user, "app_rw");
    assert_eq!(app.port, 5433);
    assert_eq!(app.pool_mode, PoolMode::Transaction);
    assert_eq!(config.proxy.listen, "127.0.0.1:6432");
    assert_eq!(
        config.user("acme_app").and_then(|u| u.tenant.as_deref()),
        Some("acme")
    );
    assert_eq!(
        config.user("globex_app").and_then(|u| u.tenant.as_deref()),
        Some("globex")
    );
    assert_eq!(config.tenancy.shared_tables, vec!["plans".to_string()]);
    assert_eq!(config.audit.path.as_deref(), Some(".demo/audit.jsonl"));
}

#[test]
fn demo_schema_defines_rls_for_both_tables() {
    let sql = std::fs::read_to_string(repo_file("examples/demo/schema.sql")).unwrap();
    for needle in [
        "ALTER TABLE customers ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE customers FORCE ROW LEVEL SECURITY",
        "ALTER TABLE orders ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE orders FORCE ROW LEVEL SECURITY",
        "current_setting('app.current_tenant', true)",
        "NOBYPASSRLS",
    ] {
        assert!(sql.contains(needle), "schema.sql lacks {needle:?}");
    }
}
