//! A real PostgreSQL server on a free loopback port, in a temporary directory.
//!
//! One shared server per test binary ([`PgServer::shared`]); tests that must disturb the server
//! (restart it) start their own with [`PgServer::start_private`].
//!
//! Statics are never dropped, so the server must not depend on a destructor to die. It runs under
//! a small `sh` wrapper whose stdin is a pipe held only by this process: when the pipe reaches EOF
//! — on drop, on normal exit, or when the test process is killed — the wrapper stops postgres with
//! SIGINT (fast shutdown) and removes the directory. Writing `keep` first stops postgres but keeps
//! the directory (restart). No `unsafe` (no PDEATHSIG) needed.
//!
//! `initdb` refuses to run as root, so as root every server command runs as the `postgres` OS
//! user through `runuser`, and the directory is chowned to it.

use crate::tls::TestCa;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Server superuser (local socket, trust).
pub const SUPERUSER: &str = "postgres";
/// Service role the proxy logs in as by default: owns the test databases, not a superuser (so
/// Row-Level Security still means something when a test turns it on for a table it does not own).
pub const SERVICE_USER: &str = "tg_server";
pub const SERVICE_PASSWORD: &str = "tg_server_pw";
/// The application role of the demo: LOGIN, NOBYPASSRLS.
pub const APP_RW_USER: &str = "app_rw";
pub const APP_RW_PASSWORD: &str = "app_rw_pw";
/// Server roles authenticated with a specific method over TCP (see pg_hba.conf below).
pub const SCRAM_USER: &str = "scram_user";
pub const SCRAM_PASSWORD: &str = "scram_pw";
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASSWORD: &str = "md5_pw";
pub const TRUST_USER: &str = "trust_user";
/// Databases created by the harness.
pub const APP_DB: &str = "app";
/// Only the pgbench test writes here (`pgbench -i` drops and creates `pgbench_*` tables).
pub const BENCH_DB: &str = "bench";

const READY_TIMEOUT: Duration = Duration::from_secs(60);

const PG_HBA: &str = "\
# TYPE  DATABASE USER        ADDRESS       METHOD
local   all      all                       trust
host    all      scram_user  127.0.0.1/32  scram-sha-256
host    all      md5_user    127.0.0.1/32  md5
host    all      trust_user  127.0.0.1/32  trust
hostssl all      all         127.0.0.1/32  scram-sha-256
host    all      all         127.0.0.1/32  scram-sha-256
";

const SETUP_SQL: &str = "\
CREATE ROLE tg_server LOGIN CREATEDB CREATEROLE PASSWORD 'tg_server_pw';
GRANT pg_read_all_stats, pg_signal_backend TO tg_server;
CREATE ROLE app_rw LOGIN NOBYPASSRLS PASSWORD 'app_rw_pw';
CREATE ROLE scram_user LOGIN PASSWORD 'scram_pw';
CREATE ROLE trust_user LOGIN;
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'md5_pw';
RESET password_encryption;
CREATE DATABASE app OWNER tg_server;
CREATE DATABASE bench OWNER tg_server;
\\connect app
GRANT USAGE ON SCHEMA public TO app_rw;
ALTER DEFAULT PRIVILEGES FOR ROLE tg_server IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO app_rw;
";

/// Stops postgres on stdin EOF (or on a `keep` line, without removing the directory).
const WRAPPER: &str = r#"
pg="$1"; data="$2"; dir="$3"; port="$4"; log="$5"
"$pg" -D "$data" -p "$port" </dev/null >>"$log" 2>&1 &
pid=$!
read -r cmd || cmd=exit
kill -INT "$pid" 2>/dev/null
wait "$pid"
if [ "$cmd" != keep ]; then rm -rf "$dir"; fi
"#;

static SHARED: LazyLock<PgServer> = LazyLock::new(|| match PgServer::start_private() {
    Ok(pg) => pg,
    Err(e) => panic!("cannot start the test PostgreSQL server: {e:#}"),
});

pub struct PgServer {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    /// `Some("postgres")` when this process is root.
    run_as: Option<String>,
    ca: TestCa,
    running: Mutex<Option<Running>>,
}

struct Running {
    wrapper: Child,
    stdin: ChildStdin,
}

impl PgServer {
    /// The server shared by every test of this binary, started on first use. Tests that write
    /// use their own tables/schemas ([`crate::unique_name`]).
    pub fn shared() -> &'static PgServer {
        &SHARED
    }

    /// Creates a database of its own (named `{prefix}_…`, owned by the proxy's server role),
    /// runs each of `scripts` in it as the superuser, and returns its name.
    pub async fn new_database(&'static self, prefix: &str, scripts: &[&str]) -> String {
        let db = crate::unique_name(prefix);
        let name = db.clone();
        let scripts: Vec<String> = scripts.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            self.run_sql(
                "postgres",
                &format!("CREATE DATABASE {name} OWNER {SERVICE_USER}"),
            )?;
            scripts
                .iter()
                .try_for_each(|sql| self.run_sql(&name, sql).map(drop))
        })
        .await
        .expect("database setup task")
        .unwrap_or_else(|e| panic!("creating database {db}: {e:#}"));
        db
    }

    /// A server of one's own, stopped and removed on drop.
    pub fn start_private() -> Result<PgServer> {
        let bin = pg_bin_dir()?;
        let run_as = if current_uid()? == 0 {
            Some("postgres".to_string())
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("tenantgate-pg-")
            .tempdir_in("/tmp")
            .context("creating the server directory")?
            .keep();
        let ca = TestCa::new()?;
        let mut server = PgServer {
            dir,
            port: 0,
            bin,
            run_as,
            ca,
            running: Mutex::new(None),
        };
        let result = server.init().and_then(|()| server.start_on_free_port());
        if let Err(e) = result {
            let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
            // Drop removes the directory.
            return Err(e.context(format!("server log:\n{log}")));
        }
        server.run_sql("postgres", SETUP_SQL)?;
        Ok(server)
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory of the server's unix socket (superuser access, trust).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// PEM file of the CA that signed the server certificate (for `verify-full`); the certificate
    /// names `localhost` and `127.0.0.1`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// `postgresql://user:password@127.0.0.1:port/dbname` (TCP).
    pub fn psql_url(&self, user: &str, password: &str, dbname: &str) -> String {
        format!(
            "postgresql://{user}:{password}@{}:{}/{dbname}",
            self.host(),
            self.port
        )
    }

    /// Key/value conninfo for the superuser over the unix socket.
    pub fn superuser_conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={SUPERUSER} dbname={dbname}",
            self.dir.display(),
            self.port
        )
    }

    /// tokio-postgres config for `user` over TCP, bypassing the proxy.
    pub fn tcp_config(&self, user: &str, password: &str, dbname: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(self.host())
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// A superuser connection over the unix socket, for fixtures a test sets up directly.
    pub async fn superuser_client(&self, dbname: &str) -> Result<tokio_postgres::Client> {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.dir)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10));
        let (client, conn) = c.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Runs SQL (psql script syntax) as the superuser; blocking, for setup code.
    pub fn run_sql(&self, dbname: &str, sql: &str) -> Result<String> {
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.superuser_conninfo(dbname))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running psql")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(sql.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "psql failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops postgres (fast shutdown: sessions are terminated) and starts it again on the same
    /// port and data directory. Only for a server from [`PgServer::start_private`].
    pub fn restart(&self) -> Result<()> {
        self.stop(true)?;
        // The port was just released by this server; another process could take it, but nothing
        // else binds it on purpose, so a short retry is enough.
        let mut last = None;
        for _ in 0..5 {
            match self.start_postgres(self.port) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("restart failed")))
    }

    /// Stops postgres only (the directory stays), e.g. to test a server outage.
    pub fn stop_keep_data(&self) -> Result<()> {
        self.stop(true)
    }

    /// Starts postgres again after [`PgServer::stop_keep_data`].
    pub fn start_again(&self) -> Result<()> {
        self.start_postgres(self.port)
    }

    fn init(&mut self) -> Result<()> {
        if let Some(user) = &self.run_as {
            chown_to(&self.dir, user)?;
        }
        let data = self.data_dir();
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let conf = format!(
            "\n# tenantgate test harness\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             max_connections = 300\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             ssl = on\n\
             ssl_cert_file = 'server.crt'\n\
             ssl_key_file = 'server.key'\n\
             password_encryption = 'scram-sha-256'\n\
             log_min_messages = warning\n",
            self.dir.display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        f.write_all(conf.as_bytes())?;
        std::fs::write(data.join("pg_hba.conf"), PG_HBA)?;
        let (cert, key) = self.ca.issue(&["localhost", "127.0.0.1"])?;
        std::fs::write(data.join("server.crt"), cert)?;
        write_private(&data.join("server.key"), &key)?;
        std::fs::write(self.ca_cert_path(), self.ca.cert_pem())?;
        if let Some(user) = &self.run_as {
            for f in ["server.crt", "server.key", "pg_hba.conf", "postgresql.conf"] {
                chown_to(&data.join(f), user)?;
            }
            chown_to(&self.ca_cert_path(), user)?;
        }
        Ok(())
    }

    fn start_on_free_port(&mut self) -> Result<()> {
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            match self.start_postgres(port) {
                Ok(()) => {
                    self.port = port;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no free port")))
    }

    fn start_postgres(&self, port: u16) -> Result<()> {
        let log = self.log_path();
        let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut wrapper = self
            .server_command("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("tenantgate-pg")
            .arg(self.bin.join("postgres"))
            .arg(self.data_dir())
            .arg(&self.dir)
            .arg(port.to_string())
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting postgres")?;
        let stdin = wrapper
            .stdin
            .take()
            .ok_or_else(|| anyhow!("wrapper has no stdin"))?;
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running { wrapper, stdin });
        match self.wait_ready(&log, log_start) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.stop(true);
                Err(e)
            }
        }
    }

    fn wait_ready(&self, log: &Path, log_start: u64) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let text = std::fs::read(log).unwrap_or_default();
            let new = String::from_utf8_lossy(text.get(log_start as usize..).unwrap_or_default());
            if new.contains("database system is ready to accept connections") {
                return Ok(());
            }
            // "the database system is starting up" is a client being turned away, not a failure.
            let failed = new
                .lines()
                .any(|l| l.contains("FATAL") && !l.contains("the database system is"))
                || new.contains("database system is shut down");
            if failed {
                bail!("postgres failed to start:\n{new}");
            }
            if Instant::now() > deadline {
                bail!("postgres not ready after {READY_TIMEOUT:?}:\n{new}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&self, keep: bool) -> Result<()> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(Running {
            mut wrapper,
            mut stdin,
        }) = running
        {
            if keep {
                let _ = stdin.write_all(b"keep\n");
            }
            drop(stdin);
            wrapper.wait().context("waiting for postgres to stop")?;
        }
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn server_command(&self, program: &str) -> Command {
        let program = if program == "sh" {
            PathBuf::from("/bin/sh")
        } else {
            self.bin.join(program)
        };
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new(runuser());
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        // A server must not pick up a developer's PG* environment.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LANG", "C.UTF-8")
            .current_dir("/");
        cmd
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop(false);
        // The wrapper removed the directory unless it never started.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `bin` of the highest PostgreSQL major under `/usr/lib/postgresql` (`TENANTGATE_PG_BIN`
/// overrides). PATH and /usr/bin symlinks are not trusted: they may point at another major.
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TENANTGATE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(root)
        .with_context(|| format!("{} not found: install postgresql", root.display()))?
    {
        let entry = entry?;
        let Some(major) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("postgres").is_file() && best.as_ref().is_none_or(|(m, _)| major > *m) {
            best = Some((major, bin));
        }
    }
    best.map(|(_, bin)| bin)
        .ok_or_else(|| anyhow!("no PostgreSQL server binaries under {}", root.display()))
}

fn runuser() -> PathBuf {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

fn current_uid() -> Result<u32> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("parsing id -u")
}

fn user_ids(user: &str) -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").arg(flag).arg(user).output()?;
        if !out.status.success() {
            bail!(
                "OS user {user} does not exist (install postgresql): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

fn chown_to(path: &Path, user: &str) -> Result<()> {
    let (uid, gid) = user_ids(user)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// A loopback port nothing listens on right now (callers retry if it is taken before use).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
