//! Connections from the proxy to a Postgres server: TLS negotiation, startup, authentication.

use crate::cancel::CancelsInFlight;
use crate::conn::{ConnError, Framed};
use crate::io::Stream;
use crate::protocol::frame::BodyReader;
use crate::session::ServerStatements;
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_config::{DatabaseConfig, ServerTlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Where and how to log in to a server; built from a `[[databases]]` entry.
#[derive(Clone)]
pub struct ServerTarget {
    pub host: String,
    pub port: u16,
    /// Set when `host` is a directory: the server's Unix-domain socket in it.
    pub unix_socket: Option<PathBuf>,
    pub dbname: String,
    pub user: String,
    pub password: Option<String>,
    pub tls_mode: ServerTlsMode,
    pub tls: Option<tokio_rustls::TlsConnector>,
    pub connect_timeout: Duration,
    pub max_message: usize,
    /// Prepared statements kept per server in transaction mode.
    pub max_prepared: usize,
}

impl ServerTarget {
    pub fn from_config(
        db: &DatabaseConfig,
        max_message: usize,
        max_prepared: usize,
    ) -> Result<ServerTarget, crate::tls::TlsSetupError> {
        Ok(ServerTarget {
            host: db.host.clone(),
            port: db.port,
            unix_socket: db.unix_socket(),
            dbname: db.server_dbname().to_string(),
            user: db.user.clone(),
            password: db.password.clone(),
            tls_mode: db.server_tls,
            tls: crate::tls::connector(db.server_tls, db.server_tls_ca.as_deref())?,
            connect_timeout: db.server_connect_timeout(),
            max_message,
            max_prepared,
        })
    }

    /// Where the server is, for messages: `host:port` or the socket's path.
    pub fn addr(&self) -> String {
        match &self.unix_socket {
            Some(path) => path.display().to_string(),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// A new connection to the server, TLS negotiated as configured.
    async fn open(&self) -> Result<Stream, ServerError> {
        let connect_error = |source| ServerError::Connect {
            addr: self.addr(),
            source,
        };
        if let Some(path) = &self.unix_socket {
            // Like libpq, no TLS on a local socket: validation refuses a mode that requires it.
            let unix = UnixStream::connect(path).await.map_err(connect_error)?;
            return Ok(Stream::Unix(unix));
        }
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(connect_error)?;
        tcp.set_nodelay(true).ok();
        negotiate_tls(tcp, self).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to server {0}")]
    Timeout(String),
    #[error("server does not support TLS but server_tls requires it")]
    TlsUnavailable,
    #[error("TLS handshake with server failed: {0}")]
    Tls(std::io::Error),
    #[error("server rejected login: {0}")]
    Rejected(ServerMessage),
    #[error("server authentication failed: {0}")]
    Auth(String),
    #[error("unexpected server message {0:?} during startup")]
    Unexpected(char),
    #[error(transparent)]
    Conn(#[from] ConnError),
}

/// The fields of a server ErrorResponse or NoticeResponse that we log or relay.
#[derive(Debug, Clone, Default)]
pub struct ServerMessage {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

impl ServerMessage {
    pub fn parse(body: &[u8]) -> ServerMessage {
        let mut m = ServerMessage::default();
        let mut r = BodyReader::new(body);
        while let Ok(code) = r.u8() {
            if code == 0 {
                break;
            }
            let Ok(value) = r.cstr_bytes() else { break };
            let value = String::from_utf8_lossy(value).into_owned();
            match code {
                b'V' => m.severity = value,
                b'S' if m.severity.is_empty() => m.severity = value,
                b'C' => m.code = value,
                b'M' => m.message = value,
                _ => {}
            }
        }
        m
    }
}

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// A logged-in server connection, idle at ReadyForQuery when it is in a pool.
pub struct ServerConn {
    pub id: u64,
    pub conn: Framed,
    pub params: Vec<(String, String)>,
    /// A digest of `params`, whatever their order: a session whose client was told values
    /// with this digest need not compare them at its next ReadyForQuery (servers change
    /// hands at every transaction, their values seldom differ).
    pub params_digest: u64,
    /// The server's own BackendKeyData, for forwarding cancels.
    pub backend_pid: i32,
    pub backend_secret: i32,
    pub created: Instant,
    pub last_used: Instant,
    /// Transaction status from the last ReadyForQuery.
    pub tx_status: u8,
    /// Session-level settings (`pg_settings.source = 'session'`) the server has.
    pub session_settings: Vec<(String, String)>,
    /// Proxy-global prepared statements the server has (transaction mode).
    pub(crate) statements: ServerStatements,
    /// Database isolation: this server's share of `max_database_connections`.
    pub(crate) slot: Option<crate::tenant_pools::ServerSlot>,
    /// The key of `session_settings`, set by the pool when the server is released.
    pub(crate) affinity: crate::pool::Affinity,
    /// Cancels forwarded to this server's backend and not finished: until they are, it must
    /// not serve another client.
    pub(crate) cancels: Arc<CancelsInFlight>,
    /// Transaction mode: a client's statement may have drawn sequence values on it since its
    /// last `DISCARD SEQUENCES` (sent ahead of the next client's request).
    pub(crate) sequences_drawn: bool,
}

impl ServerConn {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn set_param(&mut self, name: &str, value: &str) {
        match self.params.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.params.push((name.to_string(), value.to_string())),
        }
        self.params_digest = params_digest(&self.params);
    }

    /// Runs a simple query whose results nobody needs (resets, SETs) and waits for
    /// ReadyForQuery. Any ErrorResponse is returned as an error after the server is ready.
    pub async fn exec_quiet(&mut self, sql: &str) -> Result<(), ServerError> {
        self.query_rows(sql).await.map(|_| ())
    }

    /// Runs a simple query and returns its rows as text (NULL as None). Any ErrorResponse is
    /// returned as an error once the server is ready again.
    pub async fn query_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| ServerError::Auth(e.to_string()))?;
        self.conn.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            let frame = self.conn.read_frame().await?;
            match frame.tag {
                b'D' => rows.push(parse_data_row(frame.body())),
                b'Z' => {
                    self.tx_status = frame.body().first().copied().unwrap_or(b'I');
                    break;
                }
                b'E' => failure = Some(ServerMessage::parse(frame.body())),
                b'S' => self.record_parameter_status(frame.body()),
                _ => {}
            }
        }
        match failure {
            Some(m) => Err(ServerError::Rejected(m)),
            None => Ok(rows),
        }
    }

    /// Reads the session-level settings (see `session::settings::read_session_settings`). It
    /// runs under the client's own `statement_timeout`, which may be tiny: a cancelled read is
    /// retried a few times before the server is given up on.
    /// Runs the proxy's settings statement ([`crate::session::settings::guarded`]), again when
    /// it was cancelled (57014) before it committed: by a statement timeout the statement itself
    /// sets (a client's `SET statement_timeout = 1` arms for the rest of the string on a busy
    /// machine), or by a client's cancel that landed on it.
    pub async fn apply_settings(&mut self, sql: &str) -> Result<(), ServerError> {
        let mut attempt = 0;
        loop {
            match self.exec_quiet(sql).await {
                Err(ServerError::Rejected(m)) if m.code == "57014" && attempt < 4 => {
                    attempt += 1;
                    if self.tx_status != b'I' {
                        self.exec_quiet("ROLLBACK").await?;
                    }
                }
                other => return other,
            }
        }
    }

    pub async fn read_settings(
        &mut self,
        custom: &[String],
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let sql = crate::session::settings::read_session_settings(custom);
        let mut attempt = 0;
        loop {
            match self.query_rows(&sql).await {
                Err(ServerError::Rejected(m)) if m.code == "57014" && attempt < 4 => attempt += 1,
                other => return other,
            }
        }
    }

    pub fn record_parameter_status(&mut self, body: &[u8]) {
        let mut r = BodyReader::new(body);
        if let (Ok(k), Ok(v)) = (r.cstr(), r.cstr()) {
            let (k, v) = (k.to_string(), v.to_string());
            self.set_param(&k, &v);
        }
    }
}

/// An order-independent digest of ParameterStatus values, keyed per process (a client cannot
/// choose values that collide with another set's). Never 0, which stands for "none".
pub fn params_digest(params: &[(String, String)]) -> u64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    params
        .iter()
        .fold(0u64, |sum, entry| sum.wrapping_add(keys.hash_one(entry)))
        .max(1)
}

fn parse_data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut r = BodyReader::new(body);
    let n = r.i16().unwrap_or(0).max(0);
    let mut row = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let Ok(len) = r.i32() else { break };
        if len < 0 {
            row.push(None);
            continue;
        }
        let Ok(bytes) = r.bytes(len as usize) else {
            break;
        };
        row.push(Some(String::from_utf8_lossy(bytes).into_owned()));
    }
    row
}

/// Opens, secures and logs in a new server connection.
pub async fn connect(
    target: &ServerTarget,
    startup_params: &[(&str, &str)],
) -> Result<ServerConn, ServerError> {
    let fut = async {
        let stream = target.open().await?;
        login(
            Framed::new(stream, target.max_message),
            target,
            startup_params,
        )
        .await
    };
    tokio::time::timeout(target.connect_timeout, fut)
        .await
        .map_err(|_| ServerError::Timeout(target.addr()))?
}

async fn negotiate_tls(mut tcp: TcpStream, target: &ServerTarget) -> Result<Stream, ServerError> {
    let Some(connector) = &target.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    tcp.write_all(&out).await.map_err(ConnError::Io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(ConnError::Io)?;
    match answer[0] {
        b'S' => {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| ServerError::Tls(std::io::Error::other(e.to_string())))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(ServerError::Tls)?;
            Ok(Stream::ClientTls(Box::new(tls)))
        }
        b'N' if target.tls_mode == ServerTlsMode::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(ServerError::TlsUnavailable),
        other => Err(ServerError::Unexpected(other as char)),
    }
}

async fn login(
    mut conn: Framed,
    target: &ServerTarget,
    startup_params: &[(&str, &str)],
) -> Result<ServerConn, ServerError> {
    let mut params: Vec<(&str, &str)> = vec![
        ("user", target.user.as_str()),
        ("database", target.dbname.as_str()),
        ("client_encoding", "UTF8"),
    ];
    params.extend(startup_params.iter().copied());
    let mut out = BytesMut::new();
    frontend::startup_message(params, &mut out).map_err(|e| ServerError::Auth(e.to_string()))?;
    conn.write_all(&out).await?;
    authenticate(&mut conn, target).await?;

    let mut server = ServerConn {
        id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
        conn,
        params: Vec::new(),
        params_digest: 0,
        backend_pid: 0,
        backend_secret: 0,
        created: Instant::now(),
        last_used: Instant::now(),
        tx_status: b'I',
        session_settings: Vec::new(),
        statements: ServerStatements::new(target.max_prepared),
        slot: None,
        affinity: crate::pool::Affinity::NONE,
        cancels: Arc::default(),
        sequences_drawn: false,
    };
    loop {
        let frame = server.conn.read_frame().await?;
        match frame.tag {
            b'S' => server.record_parameter_status(frame.body()),
            b'K' => {
                let mut r = BodyReader::new(frame.body());
                server.backend_pid = r.i32().unwrap_or(0);
                server.backend_secret = r.i32().unwrap_or(0);
            }
            b'Z' => return Ok(server),
            b'E' => return Err(ServerError::Rejected(ServerMessage::parse(frame.body()))),
            b'N' => {}
            other => return Err(ServerError::Unexpected(other as char)),
        }
    }
}

async fn authenticate(conn: &mut Framed, target: &ServerTarget) -> Result<(), ServerError> {
    let password = target.password.as_deref().unwrap_or("");
    let mut scram: Option<ScramSha256> = None;
    loop {
        let frame = conn.read_frame().await?;
        if frame.tag == b'E' {
            return Err(ServerError::Rejected(ServerMessage::parse(frame.body())));
        }
        if frame.tag != b'R' {
            return Err(ServerError::Unexpected(frame.tag as char));
        }
        let mut r = BodyReader::new(frame.body());
        let code = r
            .i32()
            .map_err(|_| ServerError::Auth("malformed message".into()))?;
        let mut out = BytesMut::new();
        match code {
            0 => return Ok(()),
            3 => frontend::password_message(password.as_bytes(), &mut out)
                .map_err(|e| ServerError::Auth(e.to_string()))?,
            5 => {
                let salt = r
                    .bytes(4)
                    .map_err(|_| ServerError::Auth("malformed md5 salt".into()))?;
                let salt = [salt[0], salt[1], salt[2], salt[3]];
                let hash = postgres_protocol::authentication::md5_hash(
                    target.user.as_bytes(),
                    password.as_bytes(),
                    salt,
                );
                frontend::password_message(hash.as_bytes(), &mut out)
                    .map_err(|e| ServerError::Auth(e.to_string()))?;
            }
            10 => {
                let mechs = r.rest();
                if !mechs.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256") {
                    return Err(ServerError::Auth("server offers no SCRAM-SHA-256".into()));
                }
                let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)
                    .map_err(|e| ServerError::Auth(e.to_string()))?;
                scram = Some(s);
            }
            11 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| ServerError::Auth("unexpected SASL continue".into()))?;
                s.update(r.rest())
                    .map_err(|e| ServerError::Auth(e.to_string()))?;
                frontend::sasl_response(s.message(), &mut out)
                    .map_err(|e| ServerError::Auth(e.to_string()))?;
            }
            12 => {
                let mut s = scram
                    .take()
                    .ok_or_else(|| ServerError::Auth("unexpected SASL final".into()))?;
                s.finish(r.rest())
                    .map_err(|e| ServerError::Auth(e.to_string()))?;
                continue;
            }
            other => {
                return Err(ServerError::Auth(format!(
                    "unsupported authentication method {other}"
                )))
            }
        }
        conn.write_all(&out).await?;
    }
}

/// Sends a CancelRequest for `pid`/`secret` on a new connection to the target.
pub async fn send_cancel(target: &ServerTarget, pid: i32, secret: i32) -> Result<(), ServerError> {
    let fut = async {
        let mut stream = target.open().await?;
        let mut out = BytesMut::new();
        frontend::cancel_request(pid, secret, &mut out);
        stream.write_all(&out).await.map_err(ConnError::Io)?;
        stream.flush().await.map_err(ConnError::Io)?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 1];
        let _ = stream.read(&mut sink).await;
        Ok(())
    };
    tokio::time::timeout(target.connect_timeout, fut)
        .await
        .map_err(|_| ServerError::Timeout(target.addr()))?
}
