//! The admin console: the virtual database `tenantgate`, for users in `[proxy] admin_users`.
//!
//! It speaks the simple query protocol only, with PgBouncer's commands and column names where
//! the concept matches (so dashboards and `pgbouncer_exporter`-style tools keep working):
//! `SHOW POOLS | CLIENTS | SERVERS | STATS | TENANTS | DATABASES | LISTS | CONFIG | VERSION |
//! HELP`, `PAUSE [db]`, `RESUME [db]`, `SHUTDOWN`, and `RELOAD` (re-reads the configuration
//! file). Anything else is `42601 unknown command`.

mod show;
pub mod table;

use crate::app::App;
use crate::conn::{ConnError, Framed};
use crate::protocol::backend;
use crate::protocol::frame::BodyReader;
use crate::protocol::sqlstate;
use crate::protocol::PgError;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The database name that selects the console.
pub const DATABASE: &str = "tenantgate";

/// An authenticated admin.
pub struct AdminIdentity {
    pub conn_id: u64,
    pub user: String,
    pub peer: crate::io::Peer,
}

/// What SHOW can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Pools,
    Clients,
    Servers,
    Stats,
    Tenants,
    Databases,
    Lists,
    Config,
    Version,
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty query string.
    Empty,
    Show(Show),
    /// All databases when None.
    Pause(Option<String>),
    Resume(Option<String>),
    Shutdown,
    Reload,
}

/// Parses one console command (case-insensitive, trailing `;` allowed).
pub fn parse(sql: &str) -> Result<Command, PgError> {
    let text = sql
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let (verb, rest) = match text.split_once(char::is_whitespace) {
        Some((v, r)) => (v.to_ascii_lowercase(), r.trim()),
        None => (text.to_ascii_lowercase(), ""),
    };
    let command = match (verb.as_str(), rest) {
        ("", _) => Command::Empty,
        ("show", what) => Command::Show(match what.to_ascii_lowercase().as_str() {
            "pools" => Show::Pools,
            "clients" => Show::Clients,
            "servers" => Show::Servers,
            "stats" => Show::Stats,
            "tenants" => Show::Tenants,
            "databases" => Show::Databases,
            "lists" => Show::Lists,
            "config" => Show::Config,
            "version" => Show::Version,
            "help" => Show::Help,
            _ => return Err(unknown(text)),
        }),
        ("pause", db) => Command::Pause(database_arg(db).ok_or_else(|| unknown(text))?),
        ("resume", db) => Command::Resume(database_arg(db).ok_or_else(|| unknown(text))?),
        ("shutdown", "") => Command::Shutdown,
        ("reload", "") => Command::Reload,
        _ => return Err(unknown(text)),
    };
    Ok(command)
}

/// The optional database of PAUSE/RESUME: one word, or a double-quoted identifier.
/// None when it is neither.
fn database_arg(arg: &str) -> Option<Option<String>> {
    if arg.is_empty() {
        return Some(None);
    }
    if let Some(inner) = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
        return Some(Some(inner.replace("\"\"", "\"")));
    }
    (!arg.contains(char::is_whitespace)).then(|| Some(arg.to_string()))
}

fn unknown(text: &str) -> PgError {
    let shown: String = text.chars().take(100).collect();
    PgError::error("42601", format!("tenantgate: unknown command: {shown}"))
        .with_hint("SHOW HELP lists the admin console commands")
}

/// Serves an admin console session until the client leaves or the proxy shuts down.
pub async fn run(app: Arc<App>, mut conn: Framed, id: AdminIdentity) {
    let cancel = app.cancel.register();
    let mut out = BytesMut::new();
    greeting(&id, &cancel, &mut out);
    backend::ready_for_query(b'I', &mut out);
    if conn.write_all(&out).await.is_err() {
        return;
    }
    tracing::info!(conn = id.conn_id, user = %id.user, peer = %id.peer, "admin console session");
    let shutdown = app.shutdown_token();
    let mut skip_until_sync = false;
    loop {
        let frame = tokio::select! {
            _ = shutdown.drained() => {
                let msg = "tenantgate: terminating connection due to administrator command";
                return send_fatal(&mut conn, PgError::fatal(sqlstate::ADMIN_SHUTDOWN, msg)).await;
            }
            // Cancel-safe: a partly read message stays in the buffer.
            frame = conn.read_client_frame() => frame,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(ConnError::Frame(e)) => {
                crate::metrics::error(crate::metrics::ErrorKind::Protocol);
                let err = PgError::fatal(sqlstate::PROTOCOL_VIOLATION, format!("tenantgate: {e}"));
                return send_fatal(&mut conn, err).await;
            }
            Err(_) => return,
        };
        out.clear();
        match frame.tag {
            b'X' => return,
            b'Q' => {
                let sql = BodyReader::new(frame.body()).cstr().unwrap_or("");
                if matches!(parse(sql), Ok(Command::Reload)) {
                    reload(&app, &id, &mut out).await;
                } else {
                    execute(&app, &id, sql, &mut out);
                }
                backend::ready_for_query(b'I', &mut out);
            }
            b'S' => {
                skip_until_sync = false;
                backend::ready_for_query(b'I', &mut out);
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {
                if !skip_until_sync {
                    skip_until_sync = true;
                    PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "tenantgate: the admin console supports the simple query protocol only",
                    )
                    .encode(&mut out);
                }
            }
            b'F' => {
                PgError::error(sqlstate::FEATURE_NOT_SUPPORTED, "tenantgate: not supported")
                    .encode(&mut out);
                backend::ready_for_query(b'I', &mut out);
            }
            other => {
                crate::metrics::error(crate::metrics::ErrorKind::Protocol);
                let msg = format!("tenantgate: unexpected message type {:?}", other as char);
                return send_fatal(&mut conn, PgError::fatal(sqlstate::PROTOCOL_VIOLATION, msg))
                    .await;
            }
        }
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// ParameterStatus values psql and drivers expect, and BackendKeyData.
fn greeting(id: &AdminIdentity, cancel: &crate::cancel::CancelKey, out: &mut BytesMut) {
    for (k, v) in [
        (
            "server_version",
            concat!("16.0 (tenantgate ", env!("CARGO_PKG_VERSION"), ")"),
        ),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "off"),
        ("session_authorization", id.user.as_str()),
    ] {
        backend::parameter_status(k, v, out);
    }
    backend::backend_key_data(cancel.pid, cancel.secret, out);
}

async fn send_fatal(conn: &mut Framed, err: PgError) {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = conn.stream.write_all(&out).await;
    let _ = conn.stream.shutdown().await;
}

/// Runs one command, writing its reply (without ReadyForQuery) to `out`.
/// RELOAD: re-read and apply the configuration file, or report every problem with it.
async fn reload(app: &App, id: &AdminIdentity, out: &mut BytesMut) {
    tracing::info!(user = %id.user, peer = %id.peer, "admin RELOAD");
    match app.reload().await {
        Ok(summary) => {
            backend::notice(&summary, out);
            backend::command_complete("RELOAD", out);
        }
        Err(errors) => PgError::error(
            "F0000",
            "tenantgate: new configuration refused; the previous one stays in force",
        )
        .with_detail(errors.join("\n"))
        .encode(out),
    }
}

fn execute(app: &App, id: &AdminIdentity, sql: &str, out: &mut BytesMut) {
    let command = match parse(sql) {
        Ok(c) => c,
        Err(e) => return e.encode(out),
    };
    let pause = matches!(command, Command::Pause(_));
    match command {
        Command::Empty => out.extend_from_slice(b"I\0\0\0\x04"),
        Command::Show(Show::Help) => {
            backend::notice(show::HELP, out);
            backend::command_complete("SHOW", out);
        }
        Command::Show(what) => show::table(app, what).encode("SHOW", out),
        Command::Pause(db) | Command::Resume(db) => {
            let mut pools: Vec<_> = match &db {
                Some(name) => app.pool(name).into_iter().collect(),
                None => app.pools(),
            };
            if !pools.is_empty() {
                // A database's tenant databases (database isolation) pause with it.
                pools.extend(
                    app.tenant_pools()
                        .pools()
                        .into_iter()
                        .filter(|p| db.as_ref().is_none_or(|name| &p.database == name)),
                );
            }
            if let (Some(name), true) = (&db, pools.is_empty()) {
                return PgError::error("3D000", format!("tenantgate: no such database: {name}"))
                    .encode(out);
            }
            for pool in pools {
                if pause {
                    pool.pause();
                } else {
                    pool.resume();
                }
            }
            let verb = if pause { "PAUSE" } else { "RESUME" };
            tracing::info!(user = %id.user, database = ?db, "admin {verb}");
            backend::command_complete(verb, out);
        }
        Command::Shutdown => {
            tracing::info!(user = %id.user, peer = %id.peer, "admin SHUTDOWN");
            backend::command_complete("SHUTDOWN", out);
            app.request_shutdown();
        }
        // Handled before execute (it waits for catalog discovery).
        Command::Reload => backend::command_complete("RELOAD", out),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("SHOW POOLS;").unwrap(), Command::Show(Show::Pools));
        assert_eq!(
            parse("  show   stats ").unwrap(),
            Command::Show(Show::Stats)
        );
        assert_eq!(parse("pause").unwrap(), Command::Pause(None));
        assert_eq!(
            parse("PAUSE app;").unwrap(),
            Command::Pause(Some("app".into()))
        );
        assert_eq!(
            parse("RESUME \"My Db\"").unwrap(),
            Command::Resume(Some("My Db".into()))
        );
        assert_eq!(parse("shutdown").unwrap(), Command::Shutdown);
        assert_eq!(parse("RELOAD;").unwrap(), Command::Reload);
        assert_eq!(parse(" ; ").unwrap(), Command::Empty);
        assert_eq!(parse("SHOW passwords").unwrap_err().code, "42601");
        assert_eq!(parse("SELECT 1").unwrap_err().code, "42601");
        assert_eq!(parse("PAUSE a b").unwrap_err().code, "42601");
    }
}
