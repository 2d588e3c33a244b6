//! One client connection: handshake state machine, authentication, then the session.

use crate::app::{App, ClientGuard};
use crate::auth::{self, AuthError};
use crate::conn::{ConnError, Framed};
use crate::io::{Peer, Stream};
use crate::protocol::backend;
use crate::protocol::sqlstate;
use crate::protocol::startup::{read_startup, StartupError, StartupPacket};
use crate::protocol::PgError;
use crate::session::{self, ClientIdentity};
use bytes::BytesMut;
use std::sync::Arc;
use tenantgate_config::TlsMode;
use tokio::io::AsyncWriteExt;

/// The largest message (header included) a client may send during authentication: a password,
/// a JWT or a SCRAM message.
const MAX_AUTH_MESSAGE: usize = 65_536;

/// What the handshake produced: a (possibly TLS) stream and the startup parameters.
struct Startup {
    stream: Stream,
    params: Vec<(String, String)>,
}

/// A client that passed authentication.
enum LoggedIn {
    Session(Framed, ClientIdentity),
    Admin(Framed, crate::admin::AdminIdentity),
}

enum Handshake {
    Startup(Startup),
    /// A cancel request was served or the client went away; nothing more to do.
    Done,
}

pub async fn handle(app: Arc<App>, stream: Stream, peer: Peer, _guard: ClientGuard) {
    let timeout = app.config().proxy.auth_timeout();
    // Boxed: the handshake's and authentication's state is freed once the client is logged
    // in, instead of staying part of the task for the session's lifetime (session::run).
    let login = Box::pin(tokio::time::timeout(timeout, async {
        match handshake(&app, stream).await {
            Ok(Handshake::Startup(s)) => login(&app, s, peer).await,
            Ok(Handshake::Done) => None,
            Err((stream, e)) => {
                tracing::debug!(%peer, error = %e, "handshake failed");
                crate::metrics::error(crate::metrics::ErrorKind::Protocol);
                if let Some(mut stream) = stream {
                    let code = match e {
                        StartupError::UnsupportedProtocol { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
                        _ => sqlstate::PROTOCOL_VIOLATION,
                    };
                    send_fatal(&mut stream, PgError::fatal(code, e.to_string())).await;
                }
                None
            }
        }
    }))
    .await;
    match login {
        Ok(Some(LoggedIn::Session(conn, identity))) => session::run(app, conn, identity).await,
        Ok(Some(LoggedIn::Admin(conn, identity))) => {
            Box::pin(crate::admin::run(app, conn, identity)).await
        }
        Ok(None) => {}
        Err(_) => tracing::info!(%peer, "client did not finish startup within auth_timeout"),
    }
}

async fn send_fatal(stream: &mut Stream, err: PgError) {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// SSLRequest / GSSENCRequest / CancelRequest / StartupMessage, in any legal order.
async fn handshake(
    app: &App,
    mut stream: Stream,
) -> Result<Handshake, (Option<Stream>, StartupError)> {
    let mut gss_refused = false;
    loop {
        let packet = match read_startup(&mut stream).await {
            Ok(p) => p,
            Err(StartupError::Closed) => return Ok(Handshake::Done),
            Err(e) => return Err((Some(stream), e)),
        };
        match packet {
            StartupPacket::SslRequest if !stream.is_tls() => {
                stream = match upgrade_tls(app, stream).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return Ok(Handshake::Done);
                    }
                };
            }
            StartupPacket::GssEncRequest if !gss_refused && !stream.is_tls() => {
                gss_refused = true;
                if stream.write_all(b"N").await.is_err() {
                    return Ok(Handshake::Done);
                }
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                return Err((Some(stream), StartupError::Malformed));
            }
            StartupPacket::Cancel { pid, secret } => {
                app.cancel.cancel(pid, secret).await;
                return Ok(Handshake::Done);
            }
            StartupPacket::Startup { minor, params } => {
                if minor > 0 {
                    let unsupported = params
                        .iter()
                        .filter(|(k, _)| k.starts_with("_pq_."))
                        .map(|(k, _)| k.clone())
                        .collect();
                    let mut out = BytesMut::new();
                    backend::negotiate_protocol_version(unsupported, &mut out);
                    if stream.write_all(&out).await.is_err() {
                        return Ok(Handshake::Done);
                    }
                }
                let params = params
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("_pq_."))
                    .collect();
                return Ok(Handshake::Startup(Startup { stream, params }));
            }
        }
    }
}

async fn upgrade_tls(app: &App, mut stream: Stream) -> std::io::Result<Stream> {
    // Like Postgres, no TLS on a Unix-domain socket.
    let (Some(acceptor), Stream::Plain(_)) = (app.tls_acceptor(), &stream) else {
        stream.write_all(b"N").await?;
        return Ok(stream);
    };
    stream.write_all(b"S").await?;
    let Stream::Plain(tcp) = stream else {
        return Ok(stream);
    };
    let tls = acceptor.accept(tcp).await?;
    Ok(Stream::ServerTls(Box::new(tls)))
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Checks limits and credentials; on success the client has received AuthenticationOk.
async fn login(app: &Arc<App>, startup: Startup, peer: Peer) -> Option<LoggedIn> {
    let config = app.config();
    // Authentication messages are small: a client that declares a long one is refused before
    // anything is reserved for it (Postgres allows 65535 bytes too). The configured limit
    // applies from AuthenticationOk on.
    let mut conn = Framed::new(
        startup.stream,
        MAX_AUTH_MESSAGE.min(config.proxy.max_message_size),
    );
    let params = startup.params;
    let reject = |code, msg: String| PgError::fatal(code, msg);

    if app.clients() > config.proxy.max_client_connections {
        crate::metrics::error(crate::metrics::ErrorKind::ClientLimit);
        let msg = format!(
            "too many connections (max_client_connections = {})",
            config.proxy.max_client_connections
        );
        send_fatal(
            &mut conn.stream,
            reject(sqlstate::TOO_MANY_CONNECTIONS, msg),
        )
        .await;
        return None;
    }
    // A local client on the Unix socket is exempt, as PgBouncer does (no TLS there).
    if config.proxy.tls_mode == TlsMode::Require && !conn.stream.is_tls() && peer != Peer::Unix {
        send_fatal(
            &mut conn.stream,
            reject(sqlstate::INVALID_AUTHORIZATION, "SSL required".into()),
        )
        .await;
        return None;
    }
    let Some(user) = param(&params, "user")
        .filter(|u| !u.is_empty())
        .map(str::to_string)
    else {
        let e = reject(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet".into(),
        );
        send_fatal(&mut conn.stream, e).await;
        return None;
    };
    let database = param(&params, "database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_string();
    if param(&params, "replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        let e = reject(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported".into(),
        );
        send_fatal(&mut conn.stream, e).await;
        return None;
    }

    // Unknown user, unknown database and a user not allowed on the database all look like a
    // wrong password to the client; the log says which.
    let entry = app.user(&user);
    // The admin console authenticates any user; who may use it is checked after that.
    let admin_db = database == crate::admin::DATABASE;
    let allowed = entry.as_ref().is_some_and(|u| {
        admin_db
            || app.pool(&database).is_some()
                && (u.config.databases.is_empty()
                    || u.config.databases.iter().any(|d| d == &database))
    });
    let credential = entry.as_ref().filter(|_| allowed).map(|u| &u.credential);
    let token_tenant = match auth::authenticate(&mut conn, &user, credential).await {
        Ok(t) => t,
        Err(AuthError::Failed) => {
            crate::metrics::error(crate::metrics::ErrorKind::AuthFailure);
            tracing::info!(%peer, %user, %database, known_user = entry.is_some(), database_allowed = allowed, "authentication failed");
            if let Some(audit) = app.audit() {
                audit
                    .record(crate::audit::AuditEvent {
                        kind: crate::audit::AuditKind::AuthFailure,
                        conn: app.next_conn_id(),
                        client_addr: peer,
                        user: user.clone(),
                        database: database.clone(),
                        tenant: None,
                        isolation: None,
                    })
                    .await;
            }
            let msg = format!("password authentication failed for user \"{user}\"");
            send_fatal(&mut conn.stream, reject(sqlstate::INVALID_PASSWORD, msg)).await;
            return None;
        }
        Err(AuthError::Protocol(m)) => {
            crate::metrics::error(crate::metrics::ErrorKind::Protocol);
            send_fatal(
                &mut conn.stream,
                reject(sqlstate::PROTOCOL_VIOLATION, m.to_string()),
            )
            .await;
            return None;
        }
        Err(AuthError::Conn(ConnError::Frame(e))) => {
            crate::metrics::error(crate::metrics::ErrorKind::Protocol);
            send_fatal(
                &mut conn.stream,
                reject(sqlstate::PROTOCOL_VIOLATION, format!("tenantgate: {e}")),
            )
            .await;
            return None;
        }
        Err(AuthError::Conn(e)) => {
            tracing::debug!(%peer, error = %e, "client left during authentication");
            return None;
        }
    };
    conn.max_message = config.proxy.max_message_size;
    let mut out = BytesMut::new();
    backend::auth_ok(&mut out);
    if conn.write_all(&out).await.is_err() {
        return None;
    }
    let entry = entry?;
    if admin_db {
        return admin_login(app, conn, user, peer).await;
    }
    let pool = app.pool(&database)?;
    Some(LoggedIn::Session(
        conn,
        ClientIdentity {
            conn_id: app.next_conn_id(),
            peer,
            user,
            database,
            user_config: entry,
            pool,
            params,
            token_tenant,
        },
    ))
}

/// An authenticated client of the admin database: an admin gets the console, anyone else
/// FATAL 42501.
async fn admin_login(
    app: &Arc<App>,
    mut conn: Framed,
    user: String,
    peer: Peer,
) -> Option<LoggedIn> {
    if !app.config().proxy.admin_users.contains(&user) {
        tracing::info!(%peer, %user, "admin console refused: not in admin_users");
        let msg = format!("tenantgate: user \"{user}\" is not allowed to use the admin console");
        let err = PgError::fatal(sqlstate::INSUFFICIENT_PRIVILEGE, msg)
            .with_hint("add the user to [proxy] admin_users");
        send_fatal(&mut conn.stream, err).await;
        return None;
    }
    let identity = crate::admin::AdminIdentity {
        conn_id: app.next_conn_id(),
        user,
        peer,
    };
    Some(LoggedIn::Admin(conn, identity))
}
