//! A logged-in client: server attachment, the relay loop, and cleanup.

use crate::app::{App, UserEntry};
use crate::cancel::CancelTarget;
use crate::conn::Framed;
use crate::pool::{Pool, PoolError};
use crate::protocol::backend;
use crate::protocol::sqlstate;
use crate::protocol::PgError;
use crate::relay::{Relay, RelayEnd};
use crate::server::{ServerConn, ServerError};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Who the client is, established by the handshake.
pub struct ClientIdentity {
    pub peer: SocketAddr,
    pub user: String,
    pub database: String,
    pub user_config: Arc<UserEntry>,
    pub pool: Arc<Pool>,
    pub params: Vec<(String, String)>,
}

/// Startup parameters that are part of the protocol, not session settings.
const PROTOCOL_PARAMS: &[&str] = &[
    "user",
    "database",
    "client_encoding",
    "replication",
    "options",
];

/// Settings a client may not choose at startup: the proxy owns them.
fn reserved_setting(app: &App, name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == app.config().tenancy.setting.to_ascii_lowercase()
        || n.starts_with("tenantgate.")
        || matches!(
            n.as_str(),
            "role" | "session_authorization" | "is_superuser" | "row_security"
        )
}

/// The SET statements that give a server this client's startup settings.
fn startup_settings(app: &App, id: &ClientIdentity) -> Result<Vec<(String, String)>, PgError> {
    let mut settings = Vec::new();
    for (name, value) in &id.params {
        if PROTOCOL_PARAMS.contains(&name.as_str()) {
            continue;
        }
        if reserved_setting(app, name) {
            return Err(PgError::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("tenantgate: startup parameter \"{name}\" is reserved"),
            ));
        }
        settings.push((name.clone(), value.clone()));
    }
    if let Some(options) = id
        .params
        .iter()
        .find(|(k, _)| k == "options")
        .map(|(_, v)| v)
    {
        let forward = app
            .config()
            .database(&id.database)
            .is_some_and(|d| d.forward_options);
        if !options.trim().is_empty() {
            if !forward {
                return Err(PgError::fatal(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "unsupported startup parameter: options",
                )
                .with_hint("set forward_options = true for this database to allow it"));
            }
            for (name, value) in parse_options(options)? {
                if reserved_setting(app, &name) {
                    return Err(PgError::fatal(
                        sqlstate::INSUFFICIENT_PRIVILEGE,
                        format!("tenantgate: setting \"{name}\" in options is reserved"),
                    ));
                }
                settings.push((name, value));
            }
        }
    }
    Ok(settings)
}

/// Parses libpq `options`: `-c name=value` and `--name=value`, with backslash escapes.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let bad = || {
        PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "invalid options startup parameter",
        )
    };
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let pair = if w == "-c" {
            it.next().ok_or_else(bad)?
        } else if let Some(rest) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            rest.to_string()
        } else {
            return Err(bad());
        };
        let (k, v) = pair.split_once('=').ok_or_else(bad)?;
        out.push((k.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

/// Quotes a string as an escape-string literal, safe whatever standard_conforming_strings is.
pub fn quote_literal(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 4);
    q.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => q.push_str("''"),
            '\\' => q.push_str("\\\\"),
            c => q.push(c),
        }
    }
    q.push('\'');
    q
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn settings_sql(settings: &[(String, String)]) -> String {
    settings
        .iter()
        .map(|(k, v)| format!("SET {} = {}", quote_ident(k), quote_literal(v)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn pool_error(e: &PoolError) -> PgError {
    match e {
        PoolError::WaitTimeout => PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            "tenantgate: no server connection available (query_wait_timeout)",
        ),
        PoolError::Closed => PgError::fatal(sqlstate::ADMIN_SHUTDOWN, "tenantgate: pool is closed"),
        PoolError::Server(ServerError::Rejected(m)) => PgError::fatal(
            sqlstate::CANNOT_CONNECT,
            format!("tenantgate: server login failed: {}", m.message),
        ),
        PoolError::Server(e) => PgError::fatal(
            sqlstate::CANNOT_CONNECT,
            format!("tenantgate: cannot connect to server: {e}"),
        ),
    }
}

async fn fail(client: &mut Framed, err: PgError) {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = client.stream.write_all(&out).await;
    let _ = client.stream.shutdown().await;
}

/// Runs a logged-in session until the client leaves or the proxy shuts down.
pub async fn run(app: Arc<App>, mut client: Framed, id: ClientIdentity) {
    let key = app.cancel.register();
    let settings = match startup_settings(&app, &id) {
        Ok(s) => s,
        Err(e) => return fail(&mut client, e).await,
    };
    let mut server = match id.pool.acquire().await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(user = %id.user, database = %id.database, error = %e, "no server for client");
            return fail(&mut client, pool_error(&e)).await;
        }
    };
    if !settings.is_empty() {
        if let Err(e) = server.exec_quiet(&settings_sql(&settings)).await {
            let err = match &e {
                ServerError::Rejected(m) => {
                    PgError::fatal(sqlstate::PROTOCOL_VIOLATION, m.message.clone())
                }
                other => PgError::fatal(sqlstate::CONNECTION_FAILURE, other.to_string()),
            };
            finish_server(&id.pool, server, false).await;
            return fail(&mut client, err).await;
        }
    }
    let mut out = BytesMut::new();
    for (k, v) in &server.params {
        backend::parameter_status(k, v, &mut out);
    }
    backend::backend_key_data(key.pid, key.secret, &mut out);
    backend::ready_for_query(b'I', &mut out);
    if client.write_all(&out).await.is_err() {
        finish_server(&id.pool, server, true).await;
        return;
    }
    key.slot.set(Some(CancelTarget {
        target: id.pool.settings().target.clone(),
        pid: server.backend_pid,
        secret: server.backend_secret,
    }));
    tracing::debug!(user = %id.user, database = %id.database, peer = %id.peer, tenant = ?id.user_config.config.tenant, server = server.id, "session started");

    let mut relay = Relay::new(&mut client, &mut server, app.shutdown_token());
    let end = relay.run().await;
    let reusable = relay.settle().await;
    key.slot.set(None);
    match end {
        RelayEnd::ServerGone => {
            fail(
                &mut client,
                PgError::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    "tenantgate: server closed the connection unexpectedly",
                ),
            )
            .await;
        }
        RelayEnd::Shutdown => {
            fail(
                &mut client,
                PgError::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "tenantgate: terminating connection due to administrator command",
                ),
            )
            .await;
        }
        RelayEnd::ClientProtocol(e) => {
            fail(&mut client, PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e)).await;
        }
        RelayEnd::ClientGone => {}
    }
    finish_server(&id.pool, server, reusable).await;
}

/// Returns a server to its pool clean (rolled back, DISCARD ALL), or closes it.
async fn finish_server(pool: &Pool, mut server: ServerConn, reusable: bool) {
    if reusable {
        let reset = async {
            if server.tx_status != b'I' {
                server.exec_quiet("ROLLBACK").await?;
            }
            server.exec_quiet("DISCARD ALL").await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), reset).await {
            Ok(Ok(())) if server.tx_status == b'I' => return pool.release(server),
            Ok(r) => {
                tracing::debug!(server = server.id, result = ?r.err(), "server reset failed; closing it")
            }
            Err(_) => tracing::debug!(server = server.id, "server reset timed out; closing it"),
        }
    }
    drop(server);
    pool.forget_one();
}
