//! `psql` and `pgbench` as subprocesses, each bounded by a timeout (the process is killed when it
//! expires) so a hang fails the test instead of blocking CI.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// Result of a finished tool run.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A client binary from the newest `/usr/lib/postgresql/*/bin`, else `/usr/bin`.
pub fn client_bin(name: &str) -> PathBuf {
    crate::pg::pg_bin_dir()
        .map(|d| d.join(name))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin").join(name))
}

/// Runs `program args…` with `PGPASSWORD` (if given) and `PGCONNECT_TIMEOUT=10`, no other `PG*`
/// variables, and kills it after `timeout`.
pub async fn run(
    program: &str,
    args: &[&str],
    password: Option<&str>,
    timeout: Duration,
) -> Result<Output> {
    let bin = client_bin(program);
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGCONNECT_TIMEOUT", "10");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out?,
        Err(_) => bail!("{program} {args:?} did not finish within {timeout:?}"),
    };
    Ok(Output {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `psql -X -A -t -v ON_ERROR_STOP=1 -d CONNINFO -c SQL` (unaligned, tuples only).
pub async fn psql(conninfo: &str, password: Option<&str>, sql: &str) -> Result<Output> {
    run(
        "psql",
        &[
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ],
        password,
        Duration::from_secs(60),
    )
    .await
}

/// `pgbench ARGS… CONNINFO`-style run; `args` should include `-h/-p/-U` and the database name.
pub async fn pgbench(args: &[&str], password: Option<&str>, timeout: Duration) -> Result<Output> {
    run("pgbench", args, password, timeout).await
}

/// "number of failed transactions: N" from pgbench ≥ 15 output, if present.
pub fn pgbench_failed_transactions(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// "number of transactions actually processed: N/…" from pgbench output.
pub fn pgbench_processed_transactions(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed:"))
        .and_then(|rest| rest.trim().split('/').next())
        .and_then(|n| n.trim().parse().ok())
}
