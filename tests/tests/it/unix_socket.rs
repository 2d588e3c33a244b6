//! Unix-domain sockets on both sides, as libpq and PgBouncer name them (`{dir}/.s.PGSQL.{port}`):
//! clients on the proxy's `unix_socket_dir`, and servers whose `host` is a directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tenantgate_config::Config;
use tenantgate_tests::pg::{self, PgServer};
use tenantgate_tests::proxy::*;
use tenantgate_tests::{tools, unique_name, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::transaction_pool::one_server_transaction_mode;

const ADMIN: &str = "tg_admin";

/// The base config listening on a Unix socket in `dir` too, with an admin console user.
fn local_socket_config(dir: &Path) -> Config {
    let mut config = base_config(PgServer::shared());
    config.proxy.unix_socket_dir = Some(dir.to_path_buf());
    let mut admin = config.users[0].clone();
    admin.name = ADMIN.into();
    admin.tenant = None;
    admin.bypass_policy = true;
    config.users.push(admin);
    config.proxy.admin_users = vec![ADMIN.into()];
    config
}

fn local_client_config(
    dir: &Path,
    port: u16,
    user: &str,
    password: &str,
) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host_path(dir)
        .port(port)
        .user(user)
        .password(password)
        .dbname(pg::APP_DB)
        .connect_timeout(Duration::from_secs(10));
    c
}

/// A client of the proxy's Unix socket in `dir` (the proxy listens on TCP `port`).
async fn connect_local(dir: &Path, port: u16, user: &str, password: &str) -> Client {
    connect(&local_client_config(dir, port, user, password))
        .await
        .unwrap_or_else(|e| panic!("{user} cannot connect on the unix socket: {e:?}"))
}

/// Starts the proxy with `config` and returns it with its Unix socket's path, once that exists
/// (the proxy binds it as it starts, after the TCP listener the test bound).
async fn start_local(config: Config) -> (TestProxy, PathBuf) {
    let dir = config
        .proxy
        .unix_socket_dir
        .clone()
        .expect("unix_socket_dir");
    let proxy = TestProxy::start(config).await;
    let socket = tenantgate_config::unix_socket_path(&dir, proxy.port());
    within(10, "the proxy's unix socket", async {
        while !socket.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    (proxy, socket)
}

fn first_row(msgs: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .expect("a row")
}

#[tokio::test]
async fn clients_on_the_unix_socket_log_in_and_are_shown_as_local() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, socket) = start_local(local_socket_config(dir.path())).await;
    within(60, "clients on the unix socket", async {
        // The tenant's login works as over TCP: the policy still applies.
        let acme = connect_local(dir.path(), proxy.port(), ACME_USER, ACME_PASSWORD).await;
        let tenant = first_row(
            &acme
                .simple_query("SELECT current_setting('app.current_tenant')")
                .await
                .unwrap(),
        );
        assert_eq!(tenant[0].as_deref(), Some(ACME_TENANT));
        let err = acme
            .simple_query("SELECT set_config('app.current_tenant', 'globex', false)")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err), Some("42501"), "{err:?}");

        // psql finds the socket from host=<dir> port=<port>.
        let conninfo = format!(
            "host={} port={} user={ACME_USER} dbname={}",
            dir.path().display(),
            proxy.port(),
            pg::APP_DB
        );
        let out = tools::psql(&conninfo, Some(ACME_PASSWORD), "select 40 + 2")
            .await
            .unwrap();
        assert!(out.success, "psql failed: {}", out.stderr);
        assert_eq!(out.stdout.trim(), "42");

        // SHOW CLIENTS gives the address as PgBouncer does for local clients.
        let mut admin_config = local_client_config(dir.path(), proxy.port(), ADMIN, ACME_PASSWORD);
        admin_config.dbname("tenantgate");
        let console = connect(&admin_config).await.unwrap();
        let rows = console.simple_query("SHOW CLIENTS").await.unwrap();
        let addrs: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get("addr").map(str::to_string),
                _ => None,
            })
            .collect();
        assert!(
            addrs.iter().any(|a| a == "unix"),
            "SHOW CLIENTS addr column: {addrs:?}"
        );

        // No TLS on a Unix socket, as in Postgres: SSLRequest is answered 'N'.
        let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
        raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .unwrap();
        let mut answer = [0u8; 1];
        raw.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
    })
    .await;
    proxy.shutdown().await.unwrap();
    assert!(!socket.exists(), "the socket file outlived the proxy");
}

#[tokio::test]
async fn tls_required_still_admits_local_clients() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ca = tenantgate_tests::tls::TestCa::new().unwrap();
    let files = ca.write_server_files(certs.path()).unwrap();
    let mut config = local_socket_config(dir.path());
    config.proxy.tls_mode = tenantgate_config::TlsMode::Require;
    config.proxy.tls_cert = Some(files.cert.clone());
    config.proxy.tls_key = Some(files.key.clone());
    let (proxy, _socket) = start_local(config).await;
    within(30, "tls_mode = require and the unix socket", async {
        let tcp = proxy.connect(ACME_USER, ACME_PASSWORD, pg::APP_DB).await;
        assert!(
            tcp.is_err(),
            "plaintext TCP must be refused when tls_mode = require"
        );
        let local = connect_local(dir.path(), proxy.port(), ACME_USER, ACME_PASSWORD).await;
        local.simple_query("SELECT 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_and_a_live_one_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket = tenantgate_config::unix_socket_path(dir.path(), port);
    let mut config = local_socket_config(dir.path());
    config.proxy.listen = format!("127.0.0.1:{port}");
    let config = Arc::new(config);

    // The proxy refuses to start where the socket's name is taken, naming the path.
    let refused = |listener: tokio::net::TcpListener| {
        let token = tokio_util::sync::CancellationToken::new();
        let run = tenantgate::run(config.clone(), listener, token);
        async move {
            let err = within(10, "refusing the socket path", run)
                .await
                .expect_err("started where the socket's name is taken");
            format!("{err:#}")
        }
    };
    // By some other file.
    std::fs::write(&socket, b"not a socket").unwrap();
    let text = refused(listener).await;
    assert!(text.contains("is not a socket"), "{text}");
    std::fs::remove_file(&socket).unwrap();
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .unwrap();

    // By a socket someone is listening on.
    let live = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let text = refused(listener).await;
    assert!(text.contains("another process is listening"), "{text}");
    assert!(text.contains(&socket.display().to_string()), "{text}");
    assert!(socket.exists(), "the other process's socket was removed");
    let lock = PathBuf::from(format!("{}.lock", socket.display()));
    assert!(
        !lock.exists(),
        "a proxy that did not start left its lock file"
    );

    // That process died and left its file: the proxy replaces it.
    drop(live);
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(tenantgate::run(config.clone(), listener, token.clone()));
    within(30, "replacing a stale socket", async {
        let client = loop {
            match connect(&local_client_config(
                dir.path(),
                port,
                SERVICE_CLIENT,
                SERVICE_CLIENT_PASSWORD,
            ))
            .await
            {
                Ok(c) => break c,
                Err(_) if !task.is_finished() => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("proxy did not start on a stale socket: {e:?}"),
            }
        };
        client.simple_query("SELECT 1").await.unwrap();
    })
    .await;
    token.cancel();
    within(30, "shutdown", task).await.unwrap().unwrap();
    assert!(!socket.exists(), "the socket file outlived the proxy");
}

/// `{socket}.lock` is held while the socket is in use, as Postgres holds `.s.PGSQL.{port}.lock`:
/// a second process starting on the same path is refused before it probes or binds, and the
/// file goes at shutdown.
#[tokio::test]
async fn the_socket_is_locked_while_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, socket) = start_local(local_socket_config(dir.path())).await;
    let lock = PathBuf::from(format!("{}.lock", socket.display()));
    let holder = std::fs::read_to_string(&lock).unwrap();
    assert_eq!(holder.trim(), std::process::id().to_string(), "{holder}");
    // A lock is per open file: this one, taken by another open, is refused as another process.
    let other = std::fs::File::open(&lock).unwrap();
    assert!(
        matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        "the lock file is not locked"
    );
    drop(other);
    proxy.shutdown().await.unwrap();
    assert!(!lock.exists(), "the lock file outlived the proxy");

    // Someone else holds the lock of the path a proxy is about to use: it does not start, and
    // leaves their files alone.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket = tenantgate_config::unix_socket_path(dir.path(), port);
    let lock = PathBuf::from(format!("{}.lock", socket.display()));
    let held = std::fs::File::create(&lock).unwrap();
    held.lock().unwrap();
    let mut config = local_socket_config(dir.path());
    config.proxy.listen = format!("127.0.0.1:{port}");
    let token = tokio_util::sync::CancellationToken::new();
    let run = tenantgate::run(Arc::new(config), listener, token);
    let err = within(10, "refusing a locked socket path", run)
        .await
        .expect_err("started on a locked socket path");
    let text = format!("{err:#}");
    assert!(
        text.contains("another process holds the lock file"),
        "{text}"
    );
    assert!(text.contains(&lock.display().to_string()), "{text}");
    assert!(lock.exists() && !socket.exists(), "{text}");

    // A symbolic link in its place is not followed.
    drop(held);
    std::fs::remove_file(&lock).unwrap();
    let target = dir.path().join("target");
    std::fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut config = local_socket_config(dir.path());
    config.proxy.listen = format!("127.0.0.1:{port}");
    let token = tokio_util::sync::CancellationToken::new();
    let run = tenantgate::run(Arc::new(config), listener, token);
    let err = within(10, "refusing a linked lock file", run)
        .await
        .expect_err("followed a symbolic link as its lock file");
    assert!(
        format!("{err:#}").contains("cannot open the lock file"),
        "{err:#}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}

/// `host` naming a directory puts the servers on Postgres' Unix-domain socket in it, as in libpq
/// and PgBouncer: pooling, prepared statements and cancel requests all go over the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_on_a_unix_socket_are_pooled_and_cancelled() {
    let pg = PgServer::shared();
    let mut config = one_server_transaction_mode();
    for db in &mut config.databases {
        db.host = pg.socket_dir().display().to_string();
    }
    let proxy = TestProxy::start(config).await;
    within(30, "servers on a unix socket", async {
        let a = proxy.connect_service().await;
        let b = proxy.connect_service().await;
        // Postgres reports client_port -1 for a session on its Unix-domain socket.
        let local: bool = a
            .query_one(
                "SELECT client_addr IS NULL AND client_port = -1 \
                 FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(local, "the server connection is not on the unix socket");
        let sa = a.prepare("SELECT $1::int4 * 2").await.unwrap();
        let sb = b.prepare("SELECT $1::int4 * 3").await.unwrap();
        for i in 0..5i32 {
            assert_eq!(
                a.query_one(&sa, &[&i]).await.unwrap().get::<_, i32>(0),
                i * 2
            );
            assert_eq!(
                b.query_one(&sb, &[&i]).await.unwrap().get::<_, i32>(0),
                i * 3
            );
        }

        let token = a.cancel_token();
        let query = tokio::spawn(async move {
            let r = a.simple_query("SELECT pg_sleep(30)").await;
            (r, a)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        let (result, a) = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .expect("cancelled query did not return")
            .unwrap();
        let err = result.expect_err("pg_sleep(30) finished instead of being cancelled");
        assert_eq!(sqlstate(&err), Some("57014"), "{err:?}");
        a.simple_query("SELECT 1").await.unwrap();
        b.simple_query("SELECT 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_missing_unix_socket_is_named_in_the_error() {
    let mut config = one_server_transaction_mode();
    let dir = format!("/nonexistent-{}", unique_name("sock"));
    for db in &mut config.databases {
        db.host = dir.clone();
        db.server_connect_timeout = 5.0;
    }
    let proxy = TestProxy::start(config).await;
    within(30, "missing unix socket", async {
        let text =
            match connect(&proxy.client_config(SERVICE_CLIENT, SERVICE_CLIENT_PASSWORD, "app"))
                .await
            {
                Err(e) => format!("{e:?}"),
                Ok(client) => {
                    let e = client.simple_query("SELECT 1").await.unwrap_err();
                    format!("{e:?}")
                }
            };
        let socket = format!("{dir}/.s.PGSQL.");
        assert!(
            text.contains(&socket),
            "error does not name {socket}: {text}"
        );
    })
    .await;
}

/// Malformed startup packets on the local socket get what they get over TCP: an ErrorResponse
/// or a close, within a timeout, and the socket keeps serving.
#[tokio::test]
async fn malformed_startups_on_the_unix_socket_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, socket) = start_local(local_socket_config(dir.path())).await;
    let cases: [(&str, Vec<u8>); 3] = [
        ("oversize length", vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]),
        ("unknown protocol", vec![0, 0, 0, 8, 0, 9, 0, 0]),
        ("length below the header", vec![0, 0, 0, 2, 0, 3, 0, 0]),
    ];
    for (what, bytes) in cases {
        let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let _ = raw.write_all(&bytes).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "{what}: neither answered nor closed within 10 s"
        );
        if let Some(&first) = got.first() {
            assert_eq!(
                first, b'E',
                "{what}: expected ErrorResponse or close: {got:?}"
            );
        }
    }
    within(30, "a good client after the bad ones", async {
        let c = connect_local(
            dir.path(),
            proxy.port(),
            SERVICE_CLIENT,
            SERVICE_CLIENT_PASSWORD,
        )
        .await;
        c.simple_query("SELECT 1").await.unwrap();
    })
    .await;
}
