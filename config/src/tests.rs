#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:6432"
admin_users = ["admin"]

[[databases]]
name = "app"
user = "app_rw"
password = "secret"
pool_mode = "transaction"

[[users]]
name = "acme_app"
password = "pw"
tenant = "acme"

[[users]]
name = "admin"
password = "md5a3556571e93b0d20722ba62be61e8c2d"
bypass_policy = true
"#;

#[test]
fn good_config_parses_and_validates() {
    let c = Config::from_toml(GOOD).unwrap();
    c.validate().unwrap();
    let db = c.database("app").unwrap();
    assert_eq!(db.pool_mode, PoolMode::Transaction);
    assert_eq!(db.port, 5432);
    assert_eq!(db.server_dbname(), "app");
    assert_eq!(c.tenancy.setting, "app.current_tenant");
    assert!(matches!(
        c.user("admin").unwrap().stored_password(),
        Some(StoredPassword::Md5(_))
    ));
    assert!(matches!(
        c.user("acme_app").unwrap().stored_password(),
        Some(StoredPassword::Plain("pw"))
    ));
}

#[test]
fn unknown_keys_are_rejected_with_location() {
    let err =
        Config::from_toml("[proxy]\nlisten = \"127.0.0.1:1\"\nlisten_port = 5\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("listen_port"), "{text}");
    assert!(text.contains("line 3"), "{text}");
}

#[test]
fn every_error_is_reported_with_its_path() {
    let text = r#"
[proxy]
listen = "nowhere"
tls_mode = "require"
admin_users = ["ghost"]

[[databases]]
name = "app"
user = "u"
pool_size = 0

[[databases]]
name = "app"
user = "u"
pool_size = 2
min_pool_size = 3

[[users]]
name = "x"
tenant_from = "switch"

[audit]
log_allowed = "sample:0"
"#;
    let c = Config::from_toml(text).unwrap();
    let errs = c.validate().unwrap_err().to_string();
    for expected in [
        "proxy.listen: must be an address",
        "proxy.tls_cert: required",
        "proxy.tls_key: required",
        "proxy.admin_users[0]: user \"ghost\" is not defined",
        "databases[0].pool_size: must be > 0",
        "databases[1].name: duplicate database",
        "databases[1].min_pool_size: must be <= pool_size",
        "users[0].password: required",
        "users[0].allowed_tenants: required",
        "audit.log_allowed",
    ] {
        assert!(errs.contains(expected), "missing {expected:?} in:\n{errs}");
    }
}

#[test]
fn password_env_is_resolved_or_reported() {
    let text = r#"
[[databases]]
name = "app"
user = "u"
password_env = "TG_TEST_DB_PW"

[[users]]
name = "a"
password_env = "TG_TEST_MISSING"
"#;
    let mut c = Config::from_toml(text).unwrap();
    let err = c
        .resolve_secrets_with(|v| (v == "TG_TEST_DB_PW").then(|| "s3cret".to_string()))
        .unwrap_err();
    assert_eq!(c.databases[0].password.as_deref(), Some("s3cret"));
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].path, "users[0].password_env");
}

#[test]
fn malformed_scram_verifier_is_reported() {
    let text = "[[users]]\nname = \"a\"\npassword = \"SCRAM-SHA-256$garbage\"\n";
    let errs = Config::from_toml(text).unwrap().validate().unwrap_err();
    assert_eq!(errs.0[0].path, "users[0].password");
}

#[test]
fn load_reports_missing_file_precisely() {
    let err = load(std::path::Path::new("/nonexistent/tenantgate.toml")).unwrap_err();
    assert!(err
        .to_string()
        .contains("cannot read /nonexistent/tenantgate.toml"));
}

#[test]
fn example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tenantgate.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::from_toml(&text).unwrap();
    c.validate().unwrap();
}

#[test]
fn tenants_are_placed_by_default_and_by_override() {
    let text = format!(
        "{GOOD}\n[tenancy]\nisolation = \"row\"\n\n\
         [[tenants]]\nid = \"bigco\"\ndatabase = \"bigco_db\"\n\n\
         [[tenants]]\nid = \"midco\"\nisolation = \"schema\"\n\n\
         [[tenants]]\nid = \"oddco\"\nschema = \"tenant_odd\"\n"
    );
    let c = Config::from_toml(&text).unwrap();
    c.validate().unwrap();
    assert_eq!(c.placement("acme").unwrap(), Placement::Row);
    assert_eq!(
        c.placement("bigco").unwrap(),
        Placement::Database("bigco_db".into())
    );
    assert_eq!(
        c.placement("midco").unwrap(),
        Placement::Schema("tenant_midco".into())
    );
    assert_eq!(
        c.placement("oddco").unwrap(),
        Placement::Schema("tenant_odd".into())
    );
    assert!(c.uses_isolation(Isolation::Schema) && c.uses_isolation(Isolation::Database));
}

#[test]
fn templates_apply_to_unlisted_tenants_and_bad_names_are_refused() {
    let text = format!("{GOOD}\n[tenancy]\nisolation = \"schema\"\n");
    let c = Config::from_toml(&text).unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.placement("acme").unwrap(),
        Placement::Schema("tenant_acme".into())
    );
    // A tenant id that does not make a plain identifier has no schema (never quoted into one).
    for bad in ["Acme", "a-b", "x\"; DROP", &"x".repeat(60)] {
        let e = c.placement(bad).unwrap_err();
        assert!(e.contains("no valid schema name"), "{bad}: {e}");
    }
    let text = format!("{GOOD}\n[tenancy]\nisolation = \"database\"\n");
    let c = Config::from_toml(&text).unwrap();
    assert_eq!(
        c.placement("acme").unwrap(),
        Placement::Database("acme_db".into())
    );
    assert!(c.placement(&"x".repeat(70)).is_err());
}

#[test]
fn isolation_settings_are_validated_with_paths() {
    let text = format!(
        "{GOOD}\n[tenancy]\nisolation = \"schema\"\nschema = \"Tenants\"\n\
         max_database_connections = 0\n\n\
         [[tenants]]\nid = \"bigco\"\nisolation = \"row\"\nschema = \"tenant_big\"\n\n\
         [[tenants]]\nid = \"bigco\"\n\n\
         [[tenants]]\nid = \"x\"\nschema = \"pg_catalog\"\n"
    );
    let errors = Config::from_toml(&text).unwrap().validate().unwrap_err();
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "tenancy.schema",
        "tenancy.max_database_connections",
        "tenancy.database_pool_size",
        "tenants[0].schema",
        "tenants[1].id",
        "tenants[2]",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
}

#[test]
fn placements_never_share_a_schema_or_database_with_someone_else() {
    let text = format!(
        "{GOOD}\n[tenancy]\nisolation = \"schema\"\nschema = \"{{tenant}}\"\n\
         database = \"{{tenant}}\"\ntemplate_schema = \"template\"\n\n\
         [[tenants]]\nid = \"bigco\"\nschema = \"midco\"\n\n\
         [[tenants]]\nid = \"dbco\"\ndatabase = \"app\"\n"
    );
    let c = Config::from_toml(&text).unwrap();
    for (tenant, owner) in [
        ("public", "a shared schema"),
        ("template", "the template schema"),
        ("midco", "tenant \"bigco\"'s schema"),
    ] {
        let e = c.placement(tenant).unwrap_err();
        assert!(e.contains(owner), "{tenant}: {e}");
    }
    assert!(c.placement("acme").is_ok());
    let e = c.placement("dbco").unwrap_err();
    assert!(e.contains("[[databases]] \"app\""), "{e}");
    let errors = c.validate().unwrap_err();
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"tenants[1]"), "{paths:?}");
    // Database isolation by template: system databases are never a tenant's.
    let text = format!("{GOOD}\n[tenancy]\nisolation = \"database\"\ndatabase = \"{{tenant}}\"\n");
    let c = Config::from_toml(&text).unwrap();
    assert!(c.placement("postgres").is_err());
    assert!(c.placement("template1").is_err());
    assert!(c.placement("app").is_err());
    assert_eq!(
        c.placement("acme").unwrap(),
        Placement::Database("acme".into())
    );
}

#[test]
fn a_host_starting_with_a_slash_is_a_unix_socket_directory() {
    let c = Config::from_toml(&GOOD.replace(
        "name = \"app\"\n",
        "name = \"app\"\nhost = \"/run/postgresql\"\nport = 5433\n",
    ))
    .unwrap();
    c.validate().unwrap();
    let db = c.database("app").unwrap();
    assert_eq!(
        db.unix_socket(),
        Some(std::path::PathBuf::from("/run/postgresql/.s.PGSQL.5433"))
    );
    let tcp = Config::from_toml(GOOD).unwrap();
    assert_eq!(tcp.database("app").unwrap().unix_socket(), None);
}

#[test]
fn unix_socket_hosts_refuse_required_tls_and_overlong_paths() {
    let tls = Config::from_toml(&GOOD.replace(
        "name = \"app\"\n",
        "name = \"app\"\nhost = \"/run/postgresql\"\nserver_tls = \"require\"\n",
    ))
    .unwrap();
    let text = tls.validate().unwrap_err().to_string();
    assert!(text.contains("databases[0].server_tls"), "{text}");
    assert!(text.contains("Unix-domain socket"), "{text}");

    let long = format!("/{}", "d".repeat(120));
    let long = Config::from_toml(&GOOD.replace(
        "name = \"app\"\n",
        &format!("name = \"app\"\nhost = \"{long}\"\n"),
    ))
    .unwrap();
    let text = long.validate().unwrap_err().to_string();
    assert!(text.contains("databases[0].host"), "{text}");
    assert!(text.contains("the limit is 107"), "{text}");
}

#[test]
fn unix_socket_dir_must_be_an_existing_short_directory() {
    let with = |extra: &str| {
        let text = GOOD.replace("admin_users", &format!("{extra}\nadmin_users"));
        Config::from_toml(&text).unwrap().validate()
    };
    assert!(with("unix_socket_dir = \"/tmp\"\nunix_socket_mode = 0o770").is_ok());
    for (extra, expect) in [
        (
            "unix_socket_dir = \"/nonexistent-tg-dir\"",
            "not an existing directory",
        ),
        ("unix_socket_dir = \"tmp\"", "not an existing directory"),
        ("unix_socket_mode = 0o1777", "at most 0o777"),
    ] {
        let text = with(extra).unwrap_err().to_string();
        assert!(text.contains("proxy.unix_socket_"), "{extra}: {text}");
        assert!(text.contains(expect), "{extra}: {text}");
    }
    let long = format!("/tmp/{}", "d".repeat(100));
    let text = with(&format!("unix_socket_dir = \"{long}\""))
        .unwrap_err()
        .to_string();
    assert!(text.contains("107-byte limit"), "{text}");
}
