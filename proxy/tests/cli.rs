//! The `tenantgate explain` command applies the strategy of the tenant's placement and says
//! which (no server needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const CONFIG: &str = r#"
[[databases]]
name = "app"
user = "app_rw"

[tenancy]
tables = ["orders"]

[[tenants]]
id = "midco"
isolation = "schema"

[[tenants]]
id = "bigco"
database = "bigco_db"
"#;

/// (exit code, stdout) of `tenantgate explain -c <config> --tenant <tenant> [extra] <sql>`.
fn explain(tenant: &str, extra: &[&str], sql: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("tg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tenantgate.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .arg("explain")
        .arg("-c")
        .arg(&path)
        .args(["--tenant", tenant])
        .args(extra)
        .arg(sql)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), stdout)
}

#[test]
fn explain_names_the_strategy_and_applies_it() {
    let sql = "SELECT id FROM orders";
    let (code, out) = explain("acme", &[], sql);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("isolation:   row\n"), "{out}");
    assert!(out.contains("rule:        tenant-filter-missing"), "{out}");

    let (code, out) = explain("midco", &[], sql);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("isolation:   schema (tenant_midco)\n"),
        "{out}"
    );

    let (code, out) = explain("bigco", &[], sql);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("isolation:   database (bigco_db)\n"),
        "{out}"
    );

    let (code, out) = explain("midco", &[], "SELECT id FROM tenant_bigco.orders");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("rule:        cross-tenant-schema"), "{out}");

    let (code, out) = explain("midco", &["--format", "json"], sql);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["isolation"], "schema");
    assert_eq!(v["placement"], "tenant_midco");
    assert_eq!(v["verdict"], "allow");
}

#[test]
fn explain_refuses_a_tenant_that_cannot_be_placed() {
    let (code, _) = explain("Mid-Co", &[], "SELECT 1");
    // Row isolation by default: any id is fine.
    assert_eq!(code, 0);
    let (code, out) = explain("midco", &[], "SET search_path = tenant_bigco");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("rule:        tenant-setting-write"), "{out}");
}
