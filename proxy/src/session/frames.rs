//! Per-message handling in the relay: client messages towards the server (renaming prepared
//! statements in transaction mode) and server messages back (tracking transaction state).

use super::extended::{
    bind_statement, global_statement, parse_parse, parse_target, put_target, rename_bind, Expect,
    Route, Statement,
};
use super::relay::RelayEnd;
use super::{settings, Session};
use crate::protocol::frame::{next_frame, Frame};
use crate::protocol::sqlstate;
use crate::protocol::{BodyReader, PgError};
use std::sync::Arc;

impl Session {
    /// Handles every complete client message in the buffer, attaching a server first when
    /// the client has none. Returns Some to end the session.
    pub(super) async fn client_frames(&mut self) -> Option<RelayEnd> {
        let max = self.client.max_message;
        loop {
            let frame = match next_frame(&mut self.client.rbuf, max) {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => {
                    return Some(RelayEnd::Fatal(PgError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("tenantgate: {e}"),
                    )))
                }
            };
            if frame.tag == b'X' {
                return Some(RelayEnd::ClientGone);
            }
            if self.server.is_none() {
                if !self.tx_mode {
                    return Some(RelayEnd::Fatal(PgError::fatal(
                        sqlstate::CONNECTION_FAILURE,
                        "tenantgate: server connection lost",
                    )));
                }
                if let Err(e) = self.attach().await {
                    return Some(RelayEnd::Fatal(e));
                }
            }
            if self.tx_mode {
                self.forward_pooled(frame);
                self.expected.flush_synthetic(&mut self.to_client);
            } else {
                self.forward_direct(&frame);
            }
        }
    }

    /// Session mode: the message goes through unchanged.
    fn forward_direct(&mut self, frame: &Frame) {
        let p = &mut self.progress;
        match frame.tag {
            b'Q' | b'F' => p.pending += 1,
            b'S' => {
                p.pending += 1;
                p.unsynced = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => p.unsynced = true,
            b'c' | b'f' => p.copy_in = false,
            _ => {}
        }
        self.to_server.extend_from_slice(&frame.raw);
    }

    /// Transaction mode: named statements are renamed, and every reply is accounted for.
    fn forward_pooled(&mut self, frame: Frame) {
        match frame.tag {
            b'Q' => {
                self.note_sql(query_text(&frame));
                self.progress.pending += 1;
                self.expected.push(Expect::Ready);
            }
            b'F' => {
                self.progress.pending += 1;
                self.expected.push(Expect::Ready);
            }
            b'S' => {
                self.progress.pending += 1;
                self.progress.unsynced = false;
                self.expected.push(Expect::Ready);
            }
            b'P' => return self.forward_parse(frame),
            b'B' => return self.forward_bind(frame),
            b'D' => return self.forward_describe(frame),
            b'C' => return self.forward_close(frame),
            b'E' => {
                self.progress.unsynced = true;
                self.expected.push(Expect::Execute);
            }
            b'H' => self.progress.unsynced = true,
            b'c' | b'f' => self.progress.copy_in = false,
            _ => {}
        }
        self.to_server.extend_from_slice(&frame.raw);
    }

    /// Flags statements that may change what the next checkout must restore.
    fn note_sql(&mut self, sql: &str) {
        let fx = settings::scan_session_effects(sql);
        self.progress.settings_dirty |= fx.settings;
        self.progress.statements_dirty |= fx.statements;
    }

    fn forward_parse(&mut self, frame: Frame) {
        self.progress.unsynced = true;
        let Some(msg) = parse_parse(&frame) else {
            // Malformed: the server reports it.
            self.expected.push(Expect::Parse {
                visible: true,
                global: None,
                client_name: None,
            });
            return self.to_server.extend_from_slice(&frame.raw);
        };
        let (name, query) = (msg.name.to_string(), msg.query.to_string());
        self.note_sql(&query);
        if name.is_empty() {
            self.progress.unnamed_parsed = true;
            self.statements.unnamed = Some(frame.raw.clone());
            self.expected.push(Expect::Parse {
                visible: true,
                global: None,
                client_name: None,
            });
            return self.to_server.extend_from_slice(&frame.raw);
        }
        let stmt = Arc::new(global_statement(&query, msg.types));
        if self.statements.get(&name).is_some() {
            // Re-using a name without Close: make the server raise "already exists" (42P05)
            // by preparing the global name twice, as a direct connection would fail.
            self.ensure_prepared(&stmt);
            self.expected.push(Expect::Parse {
                visible: true,
                global: None,
                client_name: None,
            });
            return self.to_server.extend_from_slice(&stmt.parse);
        }
        self.statements.insert(&name, stmt.clone());
        if self.server_has(&stmt.global) {
            self.expected.push(Expect::Synthetic(b'1'));
        } else {
            self.prepare(&stmt, true, Some(name));
        }
    }

    fn forward_bind(&mut self, frame: Frame) {
        self.progress.unsynced = true;
        match bind_statement(&frame) {
            Some("") => {
                self.ensure_unnamed();
                self.to_server.extend_from_slice(&frame.raw);
            }
            Some(name) => match self.statements.get(name).cloned() {
                Some(stmt) => {
                    self.ensure_prepared(&stmt);
                    if rename_bind(&frame, &stmt.global, &mut self.to_server).is_none() {
                        self.to_server.extend_from_slice(&frame.raw);
                    }
                }
                // Unknown to this client: the server answers "does not exist" as Postgres would.
                None => self.to_server.extend_from_slice(&frame.raw),
            },
            None => self.to_server.extend_from_slice(&frame.raw),
        }
        self.expected.push(Expect::Bind);
    }

    fn forward_describe(&mut self, frame: Frame) {
        self.progress.unsynced = true;
        match parse_target(&frame) {
            Some((b'S', "")) => {
                self.ensure_unnamed();
                self.to_server.extend_from_slice(&frame.raw);
            }
            Some((b'S', name)) => match self.statements.get(name).cloned() {
                Some(stmt) => {
                    self.ensure_prepared(&stmt);
                    put_target(&mut self.to_server, b'D', b'S', &stmt.global);
                }
                None => self.to_server.extend_from_slice(&frame.raw),
            },
            _ => self.to_server.extend_from_slice(&frame.raw),
        }
        self.expected.push(Expect::Describe);
    }

    fn forward_close(&mut self, frame: Frame) {
        self.progress.unsynced = true;
        match parse_target(&frame) {
            // Other clients may share the server-side statement: forget the client's name and
            // answer CloseComplete ourselves (closing a missing name is not an error either).
            Some((b'S', name)) if !name.is_empty() => {
                self.statements.remove(name);
                self.expected.push(Expect::Synthetic(b'3'));
            }
            _ => {
                self.expected.push(Expect::Close { visible: true });
                self.to_server.extend_from_slice(&frame.raw);
            }
        }
    }

    fn server_has(&mut self, global: &str) -> bool {
        self.server
            .as_mut()
            .is_some_and(|s| s.conn.statements.contains(global))
    }

    /// Prepares `stmt` on the attached server if it lacks it; the reply is swallowed.
    fn ensure_prepared(&mut self, stmt: &Statement) {
        if !self.server_has(&stmt.global) {
            self.prepare(stmt, false, None);
        }
    }

    /// Sends the Parse for a global statement, closing the least recently used one if the
    /// server's statement cache is full.
    fn prepare(&mut self, stmt: &Statement, visible: bool, client_name: Option<String>) {
        let evicted = self
            .server
            .as_mut()
            .and_then(|s| s.conn.statements.insert(&stmt.global));
        if let Some(old) = evicted {
            put_target(&mut self.to_server, b'C', b'S', &old);
            self.expected.push(Expect::Close { visible: false });
        }
        self.to_server.extend_from_slice(&stmt.parse);
        self.expected.push(Expect::Parse {
            visible,
            global: Some(stmt.global.clone()),
            client_name,
        });
    }

    /// A Bind or Describe of the unnamed statement on a server that did not see the client's
    /// Parse of it (the client parsed it in an earlier transaction): replay that Parse.
    fn ensure_unnamed(&mut self) {
        if self.progress.unnamed_parsed {
            return;
        }
        if let Some(parse) = self.statements.unnamed.clone() {
            self.to_server.extend_from_slice(&parse);
            self.expected.push(Expect::Parse {
                visible: false,
                global: None,
                client_name: None,
            });
            self.progress.unnamed_parsed = true;
        }
    }

    /// Handles every complete server message: tracks transaction and COPY state, and in
    /// transaction mode routes replies through the expected-reply queue.
    pub(super) fn server_frames(&mut self) -> Result<(), String> {
        let Some(attached) = self.server.as_mut() else {
            return Ok(());
        };
        let conn = &mut attached.conn;
        let max = conn.conn.max_message;
        while let Some(frame) = next_frame(&mut conn.conn.rbuf, max).map_err(|e| e.to_string())? {
            match frame.tag {
                b'Z' => {
                    self.progress.pending = self.progress.pending.saturating_sub(1);
                    conn.tx_status = frame.body().first().copied().unwrap_or(b'I');
                    self.progress.copy_in = false;
                }
                b'G' | b'W' => self.progress.copy_in = true,
                b'S' => {
                    conn.record_parameter_status(frame.body());
                    self.progress.settings_dirty = true;
                }
                _ => {}
            }
            if !self.tx_mode {
                self.to_client.extend_from_slice(&frame.raw);
                continue;
            }
            let route = self.expected.route(
                frame.tag,
                &mut self.to_client,
                &mut conn.statements,
                &mut self.statements,
            );
            if let Route::Forward = route {
                self.to_client.extend_from_slice(&frame.raw);
            }
            self.expected.flush_synthetic(&mut self.to_client);
        }
        Ok(())
    }
}

fn query_text(frame: &Frame) -> &str {
    BodyReader::new(frame.body()).cstr().unwrap_or("")
}
