//! The container demo (docker-compose.yml, Dockerfile, .dockerignore, examples/docker/) is
//! consistent with itself and with the non-container demo (examples/demo/, scripts/demo.sh).
//!
//! No Docker engine runs where these tests run, so this is what checks the container files: every
//! referenced file exists, the mounted configuration validates, ports, host names, paths and
//! credentials agree between the files, and the demo data (tenants, logins, policy) is the same as
//! in `scripts/demo.sh`. Pure file checks: no PostgreSQL needed.

use serde_yaml::Value as Yaml;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tenantgate_config::Config;

#[macro_use]
mod model;
use model::*;

const COMPOSE: &str = "docker-compose.yml";
const DOCKERFILE: &str = "Dockerfile";
const DOCKERIGNORE: &str = ".dockerignore";
const DEMO_CONFIG: &str = "examples/demo/tenantgate.toml";
const DEMO_SCHEMA: &str = "examples/demo/schema.sql";
/// PostgreSQL's port inside the official image.
const POSTGRES_CONTAINER_PORT: u16 = 5432;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn load_config(rel: &str) -> Config {
    let config =
        Config::from_toml(&read(rel)).unwrap_or_else(|e| panic!("{rel} does not parse:\n{e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{rel} does not validate:\n{e}"));
    config
}

fn port_of(addr: &str, what: &str) -> SocketAddr {
    addr.parse()
        .unwrap_or_else(|e| panic!("{what} = {addr:?} is not an address: {e}"))
}

#[test]
fn compose_references_existing_files_and_declared_volumes() {
    let compose = Compose::load();
    let names = compose.service_names();
    for wanted in ["postgres", "tenantgate", "prometheus"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{COMPOSE}: no {wanted} service"
        );
    }
    let declared: Vec<String> = compose.doc["volumes"]
        .as_mapping()
        .map(|m| {
            m.keys()
                .map(|k| k.as_str().expect("volume name").to_string())
                .collect()
        })
        .unwrap_or_default();
    for service in &names {
        for mount in compose.mounts(service) {
            assert!(
                mount.target.starts_with('/'),
                "{service}: mount target {} is not absolute",
                mount.target
            );
            if mount.is_bind() {
                assert!(
                    mount.source.starts_with("./"),
                    "{service}: bind mount {} must be relative to the repository (./…)",
                    mount.source
                );
                let path = repo().join(mount.repo_path());
                assert!(
                    path.exists(),
                    "{service}: mounted {} does not exist",
                    mount.source
                );
            } else {
                assert!(
                    declared.contains(&mount.source),
                    "{service}: named volume {} is not declared under top-level volumes:",
                    mount.source
                );
            }
        }
        for p in compose.ports(service) {
            assert!(host_reachable(&p), "{service}: publish {p:?} on 127.0.0.1");
        }
    }
    // The image is built from this repository's Dockerfile.
    let build = &compose.service("tenantgate")["build"];
    let (context, dockerfile) = match build {
        Yaml::String(context) => (context.clone(), "Dockerfile".to_string()),
        Yaml::Mapping(_) => (
            build["context"].as_str().unwrap_or(".").to_string(),
            build["dockerfile"]
                .as_str()
                .unwrap_or("Dockerfile")
                .to_string(),
        ),
        other => panic!("{COMPOSE}: tenantgate.build: {other:?}"),
    };
    assert_eq!(context, ".", "tenantgate is built from the repository root");
    assert_eq!(dockerfile, DOCKERFILE);
    assert!(repo().join(&dockerfile).is_file());
    assert!(repo().join(DOCKERIGNORE).is_file());
}

#[test]
fn container_config_validates_and_matches_compose() {
    let s = setup();
    let (compose, config) = (&s.compose, &s.config);
    assert_eq!(s.config_source, "examples/docker/tenantgate.toml");

    // Clients: listen on all interfaces inside the container, published on the demo's port.
    let listen = port_of(&config.proxy.listen, "proxy.listen");
    assert!(
        listen.ip().is_unspecified(),
        "proxy.listen {listen} must be 0.0.0.0 in a container (a published port does not reach loopback)"
    );
    let published = compose.published("tenantgate", listen.port());
    let demo_listen = port_of(&s.demo.proxy.listen, "demo proxy.listen");
    assert_eq!(
        published.host,
        demo_listen.port(),
        "clients connect to the same port as in scripts/demo.sh"
    );

    // Metrics: listened on, published, exposed and scraped on the same port.
    let metrics = port_of(
        config
            .proxy
            .metrics_listen
            .as_deref()
            .expect("proxy.metrics_listen is set in the container config"),
        "proxy.metrics_listen",
    );
    assert!(
        metrics.ip().is_unspecified(),
        "metrics_listen must be 0.0.0.0"
    );
    assert_ne!(metrics.port(), listen.port());
    compose.published("tenantgate", metrics.port());

    // The server: the postgres service, by its service name, on the image's port.
    let db = &config.databases[0];
    assert_eq!(config.databases.len(), 1);
    assert_eq!(db.host, "postgres", "database host is the postgres service");
    assert!(compose.service_names().contains(&db.host));
    assert_eq!(db.port, POSTGRES_CONTAINER_PORT);
    compose.published("postgres", POSTGRES_CONTAINER_PORT);
    assert_eq!(
        compose.env("postgres", "POSTGRES_DB").as_deref(),
        Some(db.dbname.as_deref().unwrap_or(&db.name)),
        "POSTGRES_DB is the database the schema is loaded into and tenantgate connects to"
    );
    assert!(
        compose
            .env("postgres", "POSTGRES_PASSWORD")
            .is_some_and(|p| !p.is_empty()),
        "the postgres image requires POSTGRES_PASSWORD"
    );
    let superuser = compose
        .env("postgres", "POSTGRES_USER")
        .unwrap_or_else(|| "postgres".into());
    assert_ne!(
        superuser, db.user,
        "tenantgate must not log in as the superuser (RLS would not apply)"
    );

    // tenantgate starts once Postgres is healthy, and Postgres is healthy only after init.
    assert_eq!(
        compose.service("tenantgate")["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    let health: Vec<String> = compose.service("postgres")["healthcheck"]["test"]
        .as_sequence()
        .expect("postgres healthcheck test as a list")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect();
    assert!(health.iter().any(|a| a == "pg_isready"), "{health:?}");
    // TCP, not the Unix socket the entrypoint's temporary init server listens on.
    let h = health
        .iter()
        .position(|a| a == "-h")
        .expect("pg_isready -h");
    assert_eq!(health[h + 1], "127.0.0.1");

    // The audit log is written where the image's user may write: a volume at its directory.
    let audit = config.audit.path.as_deref().expect("audit.path");
    if audit != "-" {
        let dir = Path::new(audit)
            .parent()
            .and_then(|d| d.to_str())
            .expect("audit dir");
        assert!(
            audit.starts_with('/'),
            "audit.path must be absolute in the container"
        );
        let volume = compose.mount_at("tenantgate", dir);
        assert!(!volume.is_bind() && !volume.read_only);
        let runtime = s.stages.last().expect("stage");
        assert!(
            runtime
                .all("RUN")
                .any(|r| r.contains("mkdir -p") && r.contains(dir) && r.contains("chown")),
            "{DOCKERFILE}: the runtime stage must create {dir} owned by the tenantgate user"
        );
    }
    assert!(
        config.proxy.tls_cert.is_none(),
        "TLS files are not part of the repository; mount them to enable TLS"
    );
}

/// A config section as JSON, to compare whole sections.
macro_rules! json {
    ($e:expr) => {
        serde_json::to_value(&$e).expect("serializable")
    };
}

#[test]
fn container_config_is_the_demo() {
    let s = setup();
    let (config, demo) = (&s.config, &s.demo);
    assert_eq!(json!(config.users), json!(demo.users), "[[users]] differ");
    assert_eq!(
        json!(config.tenancy),
        json!(demo.tenancy),
        "[tenancy] differs"
    );
    assert_eq!(
        json!(config.tenants),
        json!(demo.tenants),
        "[[tenants]] differ"
    );
    assert_eq!(json!(config.policy), json!(demo.policy), "[policy] differs");
    assert_eq!(json!(config.auth), json!(demo.auth), "[auth] differs");
    assert_eq!(config.databases.len(), demo.databases.len());
    for (c, d) in config.databases.iter().zip(&demo.databases) {
        let strip = |db: &tenantgate_config::DatabaseConfig| {
            let mut v = serde_json::to_value(db).unwrap();
            let map = v.as_object_mut().unwrap();
            map.remove("host");
            map.remove("port");
            v
        };
        assert_eq!(
            strip(c),
            strip(d),
            "[[databases]] {} differs beyond host/port",
            c.name
        );
        // The demo's Postgres port is the one postgres is published on, for superuser access.
        assert_eq!(
            s.compose.published("postgres", c.port).host,
            d.port,
            "postgres is published on the demo's port"
        );
    }
    assert_eq!(config.proxy.auth_type, demo.proxy.auth_type);
    assert_eq!(config.proxy.log_level, demo.proxy.log_level);
    assert_eq!(config.proxy.tls_mode, demo.proxy.tls_mode);
    assert_eq!(config.audit.log_allowed, demo.audit.log_allowed);
}

#[test]
fn postgres_init_loads_the_demo_schema() {
    let s = setup();
    let compose = &s.compose;
    let image = compose.image("postgres");
    assert!(
        image == "postgres:15" || image.starts_with("postgres:15."),
        "PostgreSQL 15 as in the demo, got {image}"
    );
    let init: Vec<Mount> = compose
        .mounts("postgres")
        .into_iter()
        .filter(|m| m.target.starts_with("/docker-entrypoint-initdb.d/"))
        .collect();
    assert_eq!(init.len(), 1, "one init script: {init:?}");
    let init = &init[0];
    assert_eq!(init.repo_path(), DEMO_SCHEMA, "the demo's own schema file");
    assert!(
        init.target.ends_with(".sql"),
        "the entrypoint runs *.sql with psql"
    );

    // The entrypoint runs it with `psql -v ON_ERROR_STOP=1 --username $POSTGRES_USER --dbname
    // $POSTGRES_DB`: it must need no psql variables and no other database.
    let schema = read(DEMO_SCHEMA);
    for line in schema.lines() {
        let t = line.trim_start();
        if t.starts_with('\\') {
            assert_eq!(
                t.trim(),
                "\\set ON_ERROR_STOP on",
                "unexpected psql command {t}"
            );
        }
        let upper = t.to_ascii_uppercase();
        assert!(
            !upper.starts_with("CREATE DATABASE") && !upper.starts_with("\\C "),
            "the schema must load into POSTGRES_DB: {t}"
        );
        assert!(
            !t.contains(":'") && !t.contains(":\""),
            "psql variable in {t}"
        );
    }
    // It creates the role tenantgate logs in as, with the configured password.
    let db = &s.config.databases[0];
    let password = db.password.as_deref().expect("database password");
    for needle in [
        format!(
            "CREATE ROLE {} LOGIN NOBYPASSRLS PASSWORD '{password}'",
            db.user
        ),
        format!(
            "ALTER ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '{password}'",
            db.user
        ),
        format!("TO {}", db.user),
    ] {
        assert!(schema.contains(&needle), "{DEMO_SCHEMA} lacks {needle:?}");
    }
    let data = compose.mount_at("postgres", "/var/lib/postgresql/data");
    assert!(!data.is_bind(), "postgres data on a named volume");
}

#[test]
fn prometheus_scrapes_tenantgate_metrics() {
    let s = setup();
    let compose = &s.compose;
    assert!(compose.image("prometheus").starts_with("prom/prometheus"));
    let mount = compose.mount_at("prometheus", "/etc/prometheus/prometheus.yml");
    assert!(mount.is_bind() && mount.read_only);
    assert_eq!(mount.repo_path(), "examples/docker/prometheus.yml");
    compose.published("prometheus", 9090);

    let metrics = port_of(
        s.config
            .proxy
            .metrics_listen
            .as_deref()
            .expect("metrics_listen"),
        "proxy.metrics_listen",
    );
    let wanted = format!("tenantgate:{}", metrics.port());
    let prom: Yaml = serde_yaml::from_str(&read(mount.repo_path())).expect("prometheus.yml YAML");
    let jobs = prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| {
            j["static_configs"]
                .as_sequence()
                .into_iter()
                .flatten()
                .flat_map(|sc| sc["targets"].as_sequence().into_iter().flatten())
                .any(|t| t.as_str() == Some(wanted.as_str()))
        })
        .unwrap_or_else(|| panic!("prometheus.yml does not scrape {wanted}"));
    let path = job["metrics_path"].as_str().unwrap_or("/metrics");
    assert_eq!(path, "/metrics");
    assert!(compose.service_names().iter().any(|n| n == "tenantgate"));
}

#[test]
fn dockerfile_builds_and_runs_the_tenantgate_binary() {
    let s = setup();
    let stages = &s.stages;
    assert!(stages.len() >= 2, "{DOCKERFILE}: multi-stage build");
    let builder = stages
        .iter()
        .find(|st| st.name.as_deref() == Some("builder"))
        .unwrap_or_else(|| panic!("{DOCKERFILE}: no stage `AS builder`"));
    let runtime = stages.last().expect("stage");
    assert!(runtime.name.as_deref() != Some("builder"));

    // Debian 12 on both sides, so the binary's glibc matches.
    assert!(
        builder.image.starts_with("rust:") && builder.image.ends_with("-bookworm"),
        "builder {}",
        builder.image
    );
    assert_eq!(runtime.image, "debian:bookworm-slim");

    // pg_query's build needs libclang (bindgen) and a C compiler.
    let builder_runs: Vec<&str> = builder.all("RUN").collect();
    let installs = builder_runs
        .iter()
        .find(|r| r.contains("apt-get install"))
        .expect("builder apt-get install");
    for pkg in ["libclang-dev", "clang"] {
        assert!(
            installs.split(' ').any(|w| w == pkg),
            "builder does not install {pkg}"
        );
    }
    assert!(installs.contains("apt-get update"));

    // cargo build --release --locked -p <package that has the binary>.
    let build = builder_runs
        .iter()
        .find(|r| r.contains("cargo build"))
        .expect("builder runs cargo build");
    let words: Vec<&str> = build.split(' ').collect();
    assert!(
        words.contains(&"--release") && words.contains(&"--locked"),
        "{build}"
    );
    let package = words
        .iter()
        .position(|w| *w == "-p" || *w == "--package")
        .map(|i| words[i + 1])
        .expect("cargo build -p <package>");
    let entrypoint = runtime.exec_form("ENTRYPOINT");
    assert_eq!(
        entrypoint.len(),
        1,
        "ENTRYPOINT is the binary alone: {entrypoint:?}"
    );
    let binary = entrypoint[0].as_str();
    let (dir, _, bins) = packages()
        .into_iter()
        .find(|(_, name, _)| name == package)
        .unwrap_or_else(|| panic!("-p {package} is not a workspace package"));
    assert!(
        bins.iter().any(|b| b == binary),
        "{dir}/Cargo.toml has no [[bin]] {binary} (bins: {bins:?})"
    );
    let built = format!("target/release/{binary}");
    assert!(build.contains(&built), "the build step must take {built}");

    // The runtime copies exactly what the builder left in its image, into PATH.
    let copies: Vec<_> = runtime
        .all("COPY")
        .map(parse_copy)
        .filter(|(from, _, _)| from.as_deref() == Some("builder"))
        .collect();
    assert_eq!(copies.len(), 1, "one COPY --from=builder: {copies:?}");
    let (_, sources, dest) = &copies[0];
    assert_eq!(sources.len(), 1);
    let source = &sources[0];
    assert_eq!(
        dest,
        &format!("/usr/local/bin/{binary}"),
        "the binary goes into PATH"
    );
    let workdir = builder.workdir().expect("builder WORKDIR");
    let cache_target = format!("--mount=type=cache,target={workdir}/target");
    if build.contains(&cache_target) {
        // target/ is a cache mount, absent from the image: the binary must be copied out of it.
        assert!(
            !source.starts_with(&format!("{workdir}/target/")),
            "COPY --from=builder {source}: {workdir}/target is a cache mount, not in the image"
        );
        assert!(
            build.contains(&format!("{built} {source}")),
            "the build step must copy {built} to {source}"
        );
    } else {
        assert_eq!(source, &format!("{workdir}/{built}"));
    }
    assert!(
        builder.all("COPY").any(|c| c == ". ."),
        "builder copies the build context into {workdir}"
    );

    // Runs as a non-root user, with the ports the container config listens on.
    let user = runtime.last("USER").expect("USER");
    assert!(user != "root" && user != "0", "USER {user}");
    assert!(
        runtime
            .all("RUN")
            .any(|r| r.contains("useradd") && r.contains(user)),
        "the runtime stage creates user {user}"
    );
    let exposed: Vec<u16> = runtime
        .all("EXPOSE")
        .flat_map(|e| e.split(' '))
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    let listen = port_of(&s.config.proxy.listen, "proxy.listen").port();
    let metrics = port_of(s.config.proxy.metrics_listen.as_deref().unwrap(), "metrics").port();
    assert!(
        exposed.contains(&listen) && exposed.contains(&metrics),
        "EXPOSE {exposed:?}"
    );

    let cmd = runtime.exec_form("CMD");
    assert_eq!(
        cmd.first().map(String::as_str),
        Some("serve"),
        "CMD {cmd:?}"
    );
    assert_eq!(s.config_target, "/etc/tenantgate/tenantgate.toml");
}

/// Docker's .dockerignore matching (moby/patternmatcher): a path is excluded when the last
/// pattern that matches it or one of its parent directories is not a `!` exception.
fn dockerignored(patterns: &[String], path: &str) -> bool {
    fn glob(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
            (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
            _ => false,
        }
    }
    fn components(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => components(&p[1..], s) || (!s.is_empty() && components(p, &s[1..])),
            (Some(a), Some(b)) if glob(a.as_bytes(), b.as_bytes()) => components(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let parts: Vec<&str> = path.split('/').collect();
    let mut excluded = false;
    for pattern in patterns {
        let (negate, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern.as_str()),
        };
        let pat: Vec<&str> = pattern
            .trim_start_matches('/')
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let hit = (1..=parts.len()).any(|n| components(&pat, &parts[..n]));
        if hit {
            excluded = !negate;
        }
    }
    excluded
}

#[test]
fn dockerignore_keeps_the_build_inputs() {
    let patterns: Vec<String> = read(DOCKERIGNORE)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    // The matcher itself.
    assert!(dockerignored(&["target*".into()], "target-policy/x"));
    assert!(dockerignored(&["**/target".into()], "policy/fuzz/target/a"));
    assert!(!dockerignored(&["target*".into()], "tests/target.rs"));
    assert!(!dockerignored(&["a".into(), "!a/b".into()], "a/b"));

    // Kept: the workspace manifest, the lock file and every source file of every member.
    let mut needed = vec!["Cargo.toml".to_string(), "Cargo.lock".to_string()];
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(root.join(rel)).expect("read_dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().into_string().expect("utf-8 name");
            let rel = format!("{rel}/{name}");
            let ty = entry.file_type().expect("file type");
            if ty.is_dir() && name != "target" && !name.starts_with('.') {
                walk(root, &rel, out);
            } else if ty.is_file() && (name.ends_with(".rs") || name == "Cargo.toml") {
                out.push(rel);
            }
        }
    }
    for member in workspace_members() {
        walk(&repo(), &member, &mut needed);
    }
    assert!(needed.iter().any(|p| p == "proxy/src/main.rs"));
    assert!(needed.iter().any(|p| p == "policy/benches/policy.rs"));
    for path in &needed {
        assert!(
            !dockerignored(&patterns, path),
            "{DOCKERIGNORE} excludes {path}, which the build needs"
        );
    }
    // Left out: build output, VCS data and local demo state (they would make the context huge).
    for path in [
        ".git/HEAD",
        "target/release/tenantgate",
        ".demo/pg/PG_VERSION",
    ] {
        assert!(
            dockerignored(&patterns, path),
            "{DOCKERIGNORE} should exclude {path}"
        );
    }
}
