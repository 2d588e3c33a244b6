//! The `tenantgate explain` command applies the strategy of the tenant's placement and says
//! which (no server needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

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
///
/// Each call writes its own config file: tests run in parallel threads, and a file shared
/// between them can be read while another call has truncated it (an empty config is valid
/// for `explain` and places every tenant in row isolation).
fn explain(tenant: &str, extra: &[&str], sql: &str) -> (i32, String) {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tg-cli-{}-{n}", std::process::id()));
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
    let _ = std::fs::remove_dir_all(&dir);
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

/// `tenantgate serve` runs on the configured runtime (`workers = 1`: one thread; `2`: a pool)
/// and answers on its admin console, which needs no database server.
#[test]
fn serve_runs_with_one_or_several_workers() {
    for workers in [1, 2] {
        let (port, _dir, mut child) = serve(
            &format!("serve-{workers}"),
            &format!("workers = {workers}\n"),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let version = rt.block_on(async {
            let conninfo = format!("host=127.0.0.1 port={port} user=admin dbname=tenantgate");
            // Generous: a loaded 2-core machine may take a while to start the process.
            for _ in 0..300 {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let rows = client.simple_query("SHOW VERSION").await.unwrap();
                    return rows.len();
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            0
        });
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            version > 0,
            "workers = {workers}: no answer from the admin console"
        );
    }
}

/// The first SIGINT stops accepting, which removes the Unix socket and its lock file while
/// sessions drain; a second one exits at once (130), and nothing is left for the next start.
#[test]
fn sigint_removes_the_socket_files_and_a_second_one_exits_at_once() {
    let tmp = std::env::temp_dir().join(format!("tg-sig-{}", std::process::id()));
    let (port, dir, mut child) = serve(
        "sig",
        &format!(
            "unix_socket_dir = \"{}\"\nshutdown_timeout = 60\n",
            tmp.display()
        ),
    );
    assert_eq!(dir, tmp);
    let socket = dir.join(format!(".s.PGSQL.{port}"));
    let lock = dir.join(format!(".s.PGSQL.{port}.lock"));
    let wait_for = |what: &dyn Fn() -> bool| {
        for _ in 0..300 {
            if what() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    };
    assert!(wait_for(&|| socket.exists()), "no socket file");
    // A client in the middle of its login keeps the graceful shutdown waiting.
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = child.id().to_string();
    let sigint = || {
        let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(sent.success());
    };
    sigint();
    assert!(
        wait_for(&|| !socket.exists() && !lock.exists()),
        "socket files left while draining"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited at the first SIGINT"
    );
    sigint();
    let code = exit_code(&mut child);
    assert_eq!(code, Some(130), "a second SIGINT exits at once with 130");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A log reader that goes away (a `| tee` that died, a restarted log collector) leaves the
/// proxy's stderr a broken pipe: log lines are lost, but the proxy keeps serving and still
/// shuts down on SIGTERM (a failed log write used to panic the task that logged).
#[test]
fn a_broken_log_pipe_does_not_stop_serving_or_shutting_down() {
    let (port, dir, mut child) = serve_with("epipe", "", std::process::Stdio::piped());
    drop(child.stderr.take());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answered = rt.block_on(async {
        let conninfo = format!("host=127.0.0.1 port={port} user=admin dbname=tenantgate");
        for _ in 0..300 {
            if let Ok((client, conn)) =
                tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                // An unknown command logs a warning, written to the broken pipe.
                let _ = client.simple_query("NO SUCH COMMAND").await;
                return client.simple_query("SHOW VERSION").await.is_ok();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    });
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let code = exit_code(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(answered, "the admin console did not answer");
    assert_eq!(code, Some(0), "SIGTERM did not shut the proxy down");
}

/// The exit code of `child` once it exits, within 10 s; None (and the process killed) if it
/// does not.
fn exit_code(child: &mut std::process::Child) -> Option<i32> {
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Starts `tenantgate serve` on a free port with an admin console and one unreachable
/// database, `proxy` added to its `[proxy]` section; its config lives in
/// `{tmp}/tg-{tag}-{pid}`. Returns the port, that directory and the process.
fn serve(tag: &str, proxy: &str) -> (u16, std::path::PathBuf, std::process::Child) {
    serve_with(tag, proxy, std::process::Stdio::null())
}

/// [`serve`] with the process's stderr (its log) going to `stderr`.
fn serve_with(
    tag: &str,
    proxy: &str,
    stderr: std::process::Stdio,
) -> (u16, std::path::PathBuf, std::process::Child) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("tg-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tenantgate.toml");
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\n{proxy}admin_users = [\"admin\"]\n\n\
         [[databases]]\nname = \"app\"\nport = 1\nuser = \"nobody\"\n\n\
         [[users]]\nname = \"admin\"\nauth_type = \"trust\"\nbypass_policy = true\n"
    );
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(["serve", "-c"])
        .arg(&path)
        .stderr(stderr)
        .spawn()
        .unwrap();
    (port, dir, child)
}
