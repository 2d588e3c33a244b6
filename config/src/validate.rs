//! Every rule a configuration must satisfy, each reported with its field path.

use crate::{
    unix_socket_path, Config, ConfigError, DatabaseConfig, ServerTlsMode, TablesSpec, TenantSource,
    TlsMode, UserConfig, MAX_UNIX_SOCKET_PATH,
};
use std::collections::HashSet;
use std::net::SocketAddr;

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
    fn check(&mut self, ok: bool, path: impl Into<String>, message: &str) {
        if !ok {
            self.push(path, message);
        }
    }
}

pub(crate) fn validate(config: &Config) -> Vec<ConfigError> {
    let mut e = Errors(Vec::new());
    proxy(config, &mut e);
    let mut names = HashSet::new();
    for (i, db) in config.databases.iter().enumerate() {
        database(&format!("databases[{i}]"), db, &mut e);
        if !names.insert(db.name.as_str()) {
            e.push(
                format!("databases[{i}].name"),
                format!("duplicate database {:?}", db.name),
            );
        }
        if db.name == "tenantgate" {
            e.push(
                format!("databases[{i}].name"),
                "\"tenantgate\" is reserved for the admin console",
            );
        }
    }
    let mut users = HashSet::new();
    for (i, user) in config.users.iter().enumerate() {
        user_rules(&format!("users[{i}]"), user, config, &mut e);
        if !users.insert(user.name.as_str()) {
            e.push(
                format!("users[{i}].name"),
                format!("duplicate user {:?}", user.name),
            );
        }
    }
    tenancy(config, &mut e);
    isolation(config, &mut e);
    jwt(config, &mut e);
    policy(config, &mut e);
    audit(config, &mut e);
    e.0
}

fn proxy(config: &Config, e: &mut Errors) {
    let p = &config.proxy;
    e.check(
        p.listen.parse::<SocketAddr>().is_ok(),
        "proxy.listen",
        "must be an address like 127.0.0.1:6432",
    );
    if let Some(dir) = &p.unix_socket_dir {
        e.check(
            dir.is_absolute() && dir.is_dir(),
            "proxy.unix_socket_dir",
            &format!(
                "{} is not an existing directory (absolute path)",
                dir.display()
            ),
        );
        // Checked with the longest port, so that any `listen` port fits.
        socket_path_fits(&unix_socket_path(dir, u16::MAX), "proxy.unix_socket_dir", e);
    }
    e.check(
        p.unix_socket_mode <= 0o777,
        "proxy.unix_socket_mode",
        "must be permission bits, at most 0o777",
    );
    if let Some(m) = &p.metrics_listen {
        e.check(
            m.parse::<SocketAddr>().is_ok(),
            "proxy.metrics_listen",
            "must be an address like 127.0.0.1:9187",
        );
    }
    if p.tls_mode != TlsMode::Disable {
        e.check(
            p.tls_cert.is_some(),
            "proxy.tls_cert",
            "required when tls_mode is not \"disable\"",
        );
        e.check(
            p.tls_key.is_some(),
            "proxy.tls_key",
            "required when tls_mode is not \"disable\"",
        );
    }
    for (key, path) in [
        ("proxy.tls_cert", &p.tls_cert),
        ("proxy.tls_key", &p.tls_key),
    ] {
        if let Some(path) = path {
            e.check(
                path.is_file(),
                key,
                &format!("file {} does not exist", path.display()),
            );
        }
    }
    e.check(
        p.max_client_connections > 0,
        "proxy.max_client_connections",
        "must be > 0",
    );
    e.check(
        (1024..=1 << 30).contains(&p.max_message_size),
        "proxy.max_message_size",
        "must be between 1024 and 1073741824 bytes",
    );
    e.check(
        (1..=100_000).contains(&p.max_prepared_statements),
        "proxy.max_prepared_statements",
        "must be between 1 and 100000",
    );
    e.check(
        positive(p.auth_timeout),
        "proxy.auth_timeout",
        "must be > 0 seconds",
    );
    e.check(
        non_negative(p.shutdown_timeout),
        "proxy.shutdown_timeout",
        "must be >= 0 seconds",
    );
    e.check(
        (1..=100_000).contains(&p.metrics_max_tenants),
        "proxy.metrics_max_tenants",
        "must be between 1 and 100000",
    );
    for (i, admin) in p.admin_users.iter().enumerate() {
        e.check(
            config.user(admin).is_some(),
            format!("proxy.admin_users[{i}]"),
            &format!("user {admin:?} is not defined in [[users]]"),
        );
    }
}

/// A Unix-domain socket path within the length the kernel accepts.
fn socket_path_fits(socket: &std::path::Path, key: impl Into<String>, e: &mut Errors) {
    let len = socket.as_os_str().len();
    e.check(
        len <= MAX_UNIX_SOCKET_PATH,
        key,
        &format!(
            "Unix socket path {} is {len} bytes; the limit is {MAX_UNIX_SOCKET_PATH} \
             (the kernel's {MAX_UNIX_SOCKET_PATH}-byte limit on socket paths)",
            socket.display()
        ),
    );
}

fn database(path: &str, db: &DatabaseConfig, e: &mut Errors) {
    e.check(
        ident_ok(&db.name),
        format!("{path}.name"),
        "must be 1-63 characters, no NUL",
    );
    e.check(
        !db.host.is_empty(),
        format!("{path}.host"),
        "must not be empty",
    );
    e.check(db.port > 0, format!("{path}.port"), "must be > 0");
    e.check(
        ident_ok(&db.user),
        format!("{path}.user"),
        "must be 1-63 characters, no NUL",
    );
    e.check(db.pool_size > 0, format!("{path}.pool_size"), "must be > 0");
    e.check(
        db.min_pool_size <= db.pool_size,
        format!("{path}.min_pool_size"),
        "must be <= pool_size",
    );
    if db.password.is_some() && db.password_env.is_some() {
        e.push(
            format!("{path}.password_env"),
            "set either password or password_env, not both",
        );
    }
    for (key, v) in [
        ("server_idle_timeout", db.server_idle_timeout),
        ("server_lifetime", db.server_lifetime),
        ("query_wait_timeout", db.query_wait_timeout),
        ("idle_transaction_timeout", db.idle_transaction_timeout),
    ] {
        e.check(
            non_negative(v),
            format!("{path}.{key}"),
            "must be >= 0 seconds",
        );
    }
    e.check(
        positive(db.server_connect_timeout),
        format!("{path}.server_connect_timeout"),
        "must be > 0 seconds",
    );
    if let Some(socket) = db.unix_socket() {
        socket_path_fits(&socket, format!("{path}.host"), e);
        e.check(
            matches!(
                db.server_tls,
                ServerTlsMode::Disable | ServerTlsMode::Prefer
            ),
            format!("{path}.server_tls"),
            "TLS is not used on a Unix-domain socket (host starts with '/'); \
             use \"disable\" or \"prefer\", or a TCP host",
        );
    }
    if let Some(ca) = &db.server_tls_ca {
        e.check(
            ca.is_file(),
            format!("{path}.server_tls_ca"),
            &format!("file {} does not exist", ca.display()),
        );
    }
}

fn user_rules(path: &str, user: &UserConfig, config: &Config, e: &mut Errors) {
    e.check(
        ident_ok(&user.name),
        format!("{path}.name"),
        "must be 1-63 characters, no NUL",
    );
    if user.password.is_some() && user.password_env.is_some() {
        e.push(
            format!("{path}.password_env"),
            "set either password or password_env, not both",
        );
    }
    let auth = user.auth_type.unwrap_or(config.proxy.auth_type);
    let jwt = user.tenant_from == Some(TenantSource::Jwt);
    if !jwt
        && auth != crate::AuthType::Trust
        && user.password.is_none()
        && user.password_env.is_none()
    {
        e.push(
            format!("{path}.password"),
            "required unless auth_type = \"trust\" (or use password_env)",
        );
    }
    if let Some(p) = &user.password {
        if let crate::StoredPassword::Scram(v) = crate::classify_password(p) {
            e.check(
                scram_verifier_shape_ok(v),
                format!("{path}.password"),
                "malformed SCRAM verifier, expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>",
            );
        }
    }
    let source = user.tenant_from.unwrap_or(TenantSource::Fixed);
    match source {
        TenantSource::Fixed => {
            if let Some(t) = &user.tenant {
                e.check(
                    tenant_ok(t),
                    format!("{path}.tenant"),
                    "must be 1-256 printable characters",
                );
            }
        }
        TenantSource::Jwt => {
            e.check(
                config.auth.jwt.is_some(),
                format!("{path}.tenant_from"),
                "\"jwt\" needs an [auth.jwt] section",
            );
            e.check(
                user.tenant.is_none() && user.password.is_none() && user.password_env.is_none(),
                format!("{path}.tenant_from"),
                "a \"jwt\" user has no tenant or password: both come from the token",
            );
        }
        TenantSource::Switch => {
            e.check(
                user.tenant.is_none(),
                format!("{path}.tenant"),
                "must not be set when tenant_from = \"switch\"",
            );
            e.check(
                !user.allowed_tenants.is_empty(),
                format!("{path}.allowed_tenants"),
                "required when tenant_from = \"switch\"",
            );
        }
    }
    if user.tenant.is_some() && user.bypass_policy {
        e.push(
            format!("{path}.bypass_policy"),
            "a user with a tenant cannot bypass the policy",
        );
    }
    if let Some(0) = user.max_tenant_connections {
        e.push(format!("{path}.max_tenant_connections"), "must be > 0");
    }
    for (i, db) in user.databases.iter().enumerate() {
        e.check(
            config.database(db).is_some(),
            format!("{path}.databases[{i}]"),
            &format!("database {db:?} is not defined in [[databases]]"),
        );
    }
}

fn tenancy(config: &Config, e: &mut Errors) {
    let t = &config.tenancy;
    e.check(
        t.setting.contains('.') && !t.setting.contains(['\0', '\'', ' ']),
        "tenancy.setting",
        "must be a custom setting name with a dot, like app.current_tenant",
    );
    e.check(
        ident_ok(&t.column),
        "tenancy.column",
        "must be 1-63 characters, no NUL",
    );
    match &t.tables {
        TablesSpec::Auto(s) if s != "auto" => e.push(
            "tenancy.tables",
            "must be \"auto\" or a list of table names",
        ),
        TablesSpec::List(list) => {
            for (i, name) in list.iter().enumerate() {
                e.check(
                    qualified_ok(name),
                    format!("tenancy.tables[{i}]"),
                    "must be table or schema.table",
                );
            }
        }
        TablesSpec::Auto(_) => {}
    }
    for (i, name) in t.shared_tables.iter().enumerate() {
        e.check(
            qualified_ok(name),
            format!("tenancy.shared_tables[{i}]"),
            "must be table or schema.table",
        );
    }
    for (i, o) in t.table_overrides.iter().enumerate() {
        e.check(
            qualified_ok(&o.name),
            format!("tenancy.table[{i}].name"),
            "must be table or schema.table",
        );
        e.check(
            ident_ok(&o.column),
            format!("tenancy.table[{i}].column"),
            "must be 1-63 characters",
        );
    }
}

fn isolation(config: &Config, e: &mut Errors) {
    use crate::{database_name_ok, schema_name_ok, Isolation};
    let t = &config.tenancy;
    let template_ok =
        |tpl: &str, ok: fn(&str) -> bool| tpl.contains("{tenant}") && ok(&crate::expand(tpl, "x"));
    if config.uses_isolation(Isolation::Schema) {
        e.check(
            template_ok(&t.schema, schema_name_ok),
            "tenancy.schema",
            "must contain {tenant} and make a schema name of lower-case letters, digits and _ (at most 63 bytes)",
        );
        for (i, s) in t.shared_schemas.iter().enumerate() {
            e.check(
                schema_name_ok(s) || s == "public",
                format!("tenancy.shared_schemas[{i}]"),
                "must be a schema name of lower-case letters, digits and _",
            );
        }
        if let Some(s) = &t.template_schema {
            e.check(
                schema_name_ok(s),
                "tenancy.template_schema",
                "must be a schema name of lower-case letters, digits and _",
            );
        }
    }
    if config.uses_isolation(Isolation::Database) {
        e.check(
            template_ok(&t.database, database_name_ok),
            "tenancy.database",
            "must contain {tenant} and make a database name of at most 63 bytes",
        );
    }
    e.check(
        (1..=10_000).contains(&t.max_database_connections),
        "tenancy.max_database_connections",
        "must be between 1 and 10000",
    );
    e.check(
        t.database_pool_size >= 1 && t.database_pool_size <= t.max_database_connections,
        "tenancy.database_pool_size",
        "must be between 1 and max_database_connections",
    );
    let mut ids = HashSet::new();
    for (i, tenant) in config.tenants.iter().enumerate() {
        let path = format!("tenants[{i}]");
        e.check(
            !tenant.id.is_empty() && !tenant.id.chars().any(char::is_control),
            format!("{path}.id"),
            "must be a non-empty tenant id without control characters",
        );
        if !ids.insert(tenant.id.as_str()) {
            e.push(
                format!("{path}.id"),
                format!("duplicate tenant {:?}", tenant.id),
            );
        }
        let iso = tenant.isolation(t.isolation);
        if tenant.schema.is_some() && iso != Isolation::Schema {
            e.push(
                format!("{path}.schema"),
                format!(
                    "is only used with isolation = \"schema\" (this tenant is {:?})",
                    iso.as_str()
                ),
            );
        }
        if tenant.database.is_some() && iso != Isolation::Database {
            e.push(
                format!("{path}.database"),
                format!(
                    "is only used with isolation = \"database\" (this tenant is {:?})",
                    iso.as_str()
                ),
            );
        }
        if let Err(message) = config.placement(&tenant.id) {
            e.push(path, message);
        }
    }
}

fn jwt(config: &Config, e: &mut Errors) {
    use crate::JwtAlgorithm::*;
    let Some(j) = &config.auth.jwt else { return };
    match j.algorithm {
        HS256 | HS384 | HS512 => e.check(
            j.secret.is_some() != j.secret_env.is_some(),
            "auth.jwt.secret",
            "HS* algorithms need exactly one of secret or secret_env",
        ),
        _ => match &j.public_key {
            Some(p) => e.check(
                p.is_file(),
                "auth.jwt.public_key",
                &format!("file {} does not exist", p.display()),
            ),
            None => e.push(
                "auth.jwt.public_key",
                "RS*/ES* algorithms need a PEM public_key file",
            ),
        },
    }
    e.check(
        !j.tenant_claim.is_empty(),
        "auth.jwt.tenant_claim",
        "must not be empty",
    );
}

fn policy(config: &Config, e: &mut Errors) {
    let p = &config.policy;
    e.check(
        p.max_query_length >= 64,
        "policy.max_query_length",
        "must be >= 64 bytes",
    );
    e.check(p.cache_entries > 0, "policy.cache_entries", "must be > 0");
}

fn audit(config: &Config, e: &mut Errors) {
    let a = &config.audit;
    e.check(
        a.allowed().is_some(),
        "audit.log_allowed",
        "must be \"all\", \"none\" or \"sample:N\" with N > 0",
    );
    e.check(
        a.fsync_policy().is_some(),
        "audit.fsync",
        "must be \"always\", \"never\" or milliseconds > 0",
    );
    e.check(a.queue_size > 0, "audit.queue_size", "must be > 0");
    e.check(a.rotate_keep > 0, "audit.rotate_keep", "must be > 0");
    if let Some(path) = &a.path {
        e.check(
            !path.is_empty() && !path.ends_with('/') && !path.contains('\0'),
            "audit.path",
            "must be a file path or \"-\" for stdout",
        );
    }
}

fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn non_negative(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

fn ident_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && !s.contains('\0')
}

fn tenant_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control)
}

fn qualified_ok(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    (1..=2).contains(&parts.len()) && parts.iter().all(|p| ident_ok(p))
}

fn scram_verifier_shape_ok(v: &str) -> bool {
    let Some(rest) = v.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((iter_salt, keys)) = rest.split_once('$') else {
        return false;
    };
    let Some((iter, salt)) = iter_salt.split_once(':') else {
        return false;
    };
    iter.parse::<u32>().is_ok_and(|n| n > 0) && !salt.is_empty() && keys.split(':').count() == 2
}
