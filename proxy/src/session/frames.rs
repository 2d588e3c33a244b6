//! Per-message handling in the relay: client messages towards the server (renaming prepared
//! statements in transaction mode) and server messages back (tracking transaction state).

use super::enforce::Screen;
use super::extended::{
    bind_statement, global_statement, parse_parse, parse_target, put_target, rename_bind,
    ClientStatement, Expect, Route, Statement,
};
use super::relay::RelayEnd;
use super::sqlscan::Lasting;
use super::{setup, sqlscan, Session};
use crate::protocol::backend;
use crate::protocol::frame::{next_frame, put_message, Frame};
use crate::protocol::sqlstate;
use crate::protocol::{BodyReader, PgError};
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::sync::Arc;
use tenantgate_policy::Decision;

/// The outcome of screening one client message.
enum Screened {
    Relay(Option<Arc<Decision>>),
    Reject(PgError),
    Answer {
        tag: &'static str,
        sql: Option<String>,
        hidden: Option<String>,
    },
}

/// A statement the server cannot prepare (the function does not exist) and that has no
/// effect: sent in place of a rejected request so the server fails it, aborting an open
/// transaction exactly as the rejected statement's own error would have.
const FAILING_SQL: &str = "SELECT pg_catalog.tenantgate_policy_rejection()";

/// The body of a Bind that fails without touching the client's unnamed statement or portal (a
/// failed Parse of "" would drop them): of a statement that does not exist, and should one of
/// that name exist, with two parameter formats for no parameters.
pub(super) const FAILING_BIND: &[u8] =
    b"tenantgate_rejected\0tenantgate_rejected\0\0\x02\0\0\0\0\0\0\0\0";

impl Session {
    /// Handles every complete client message in the buffer, attaching a server first when
    /// the client has none. Returns Some to end the session.
    pub(super) async fn client_frames(&mut self) -> Option<RelayEnd> {
        let max = self.client.max_message;
        // One allocation for what this batch forwards, instead of growing message by message.
        self.to_server.reserve(self.client.rbuf.len());
        loop {
            if self.progress.gate() {
                // Until the settings statement sent with this request is known to have worked,
                // or the server has answered what came before a held Bind.
                return None;
            }
            let next = match self.held.take() {
                Some(held) => Ok(Some(held)),
                None => next_frame(&mut self.client.rbuf, max),
            };
            let frame = match next {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => {
                    crate::metrics::error(crate::metrics::ErrorKind::Protocol);
                    return Some(RelayEnd::Fatal(PgError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("tenantgate: {e}"),
                    )));
                }
            };
            if frame.tag == b'X' {
                return Some(RelayEnd::ClientGone);
            }
            if self.skip_until_sync {
                if frame.tag == b'S' {
                    self.skip_until_sync = false;
                    if self.server.is_none() {
                        self.progress.unsynced = false;
                        backend::ready_for_query(b'I', &mut self.to_client);
                        continue;
                    }
                } else {
                    continue;
                }
            }
            if matches!(frame.tag, b'd' | b'c' | b'f') && !self.copy_may_run() {
                // Postgres ignores these outside COPY: a client ends a copy that an error
                // already ended with them. Forwarded, they could check out a server for a
                // message no reply answers, which then nothing would release.
                continue;
            }
            if !self.tx_mode && self.server_at_rest() {
                // Session mode, between transactions: a reload may have moved the tenant.
                if let Err(e) = self.refresh_placement() {
                    return Some(RelayEnd::Fatal(e));
                }
            }
            if (frame.tag == b'B' && self.bind_must_wait(&frame))
                || (frame.tag == b'P' && self.parse_must_wait(&frame))
            {
                self.held = Some(frame);
                self.progress.holding = true;
                return None;
            }
            let Some(screened) = self.screen(&frame) else {
                self.held = Some(frame);
                self.progress.holding = true;
                return None;
            };
            let tag = frame.tag;
            if tag == b'Q' && self.tx_mode {
                // Postgres drops the unnamed statement at every simple Query it runs (a later
                // Bind of it fails with 26000); the proxy does so even for a Query the server
                // skips behind a failing extended-protocol message (README, Limitations).
                self.statements.forget_unnamed();
                self.progress.unnamed_parsed = false;
            }
            // Rejections and session commands need no server: in transaction mode they are
            // answered locally when none is attached.
            let needs_server = matches!(screened, Screened::Relay(_));
            if needs_server && self.server.is_none() {
                if !self.tx_mode {
                    return Some(RelayEnd::Fatal(PgError::fatal(
                        sqlstate::CONNECTION_FAILURE,
                        "tenantgate: server connection lost",
                    )));
                }
                if let Err(end) = Box::pin(self.attach(&frame)).await {
                    return Some(end);
                }
            }
            match screened {
                Screened::Relay(decision) => {
                    if self.tx_mode {
                        self.forward_pooled(frame, decision);
                    } else {
                        self.forward_direct(&frame, decision);
                    }
                }
                Screened::Reject(err) => self.reject(frame.tag, err),
                Screened::Answer { tag, sql, hidden } => self.answer(tag, sql, hidden),
            }
            if matches!(tag, b'Q' | b'S' | b'F') && self.progress.pending > 0 {
                self.metrics.request_sent();
            }
            self.expected.flush_synthetic(&mut self.to_client);
            self.flush_audit().await;
        }
    }

    /// Is the server in COPY FROM STDIN, or may it enter one before the client's next message
    /// reaches it (a reply is outstanding: a COPY query the client pipelined its data behind)?
    fn copy_may_run(&self) -> bool {
        self.progress.copy_in || !self.expected.is_empty()
    }

    /// Applies the policy and the proxy's own session commands to one client message. None:
    /// the message must wait for the server's replies first ([`Screen::Hold`]).
    fn screen(&mut self, frame: &Frame) -> Option<Screened> {
        self.screened_effects = None;
        if self.tx_mode && self.server.is_none() {
            // Between transactions: follow a reload that moved the tenant.
            if let Err(e) = self.refresh_placement() {
                return Some(Screened::Reject(e));
            }
        }
        if self.statements_stale {
            // A SET LOCAL tenant ended with its transaction.
            self.statements_stale = false;
            self.recheck_statements();
        }
        if let Some(e) = self.unknown_statement(frame) {
            return Some(Screened::Reject(e));
        }
        let screened = match frame.tag {
            b'Q' => match self.screen_sql(query_text(frame), true) {
                Screen::Forward(d) => Screened::Relay(d),
                Screen::Reject(e) => Screened::Reject(e),
                Screen::Answer { tag, sql, hidden } => Screened::Answer { tag, sql, hidden },
                Screen::Hold => return None,
            },
            b'P' => match parse_parse(frame) {
                Some(msg) => match self.screen_sql(msg.query, false) {
                    Screen::Forward(d) => Screened::Relay(d),
                    Screen::Reject(e) => Screened::Reject(e),
                    Screen::Answer { .. } | Screen::Hold => Screened::Reject(PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "tenantgate: this session command must be sent as a simple query",
                    )),
                },
                None => Screened::Relay(None),
            },
            b'B' => match self.screen_bind(frame.body()) {
                Some(e) => Screened::Reject(e),
                None => Screened::Relay(None),
            },
            b'F' => match self.screen_function_call() {
                Some(e) => Screened::Reject(e),
                None => Screened::Relay(None),
            },
            _ => Screened::Relay(None),
        };
        Some(screened)
    }

    /// Transaction mode: a Bind or Describe of a statement this client has not prepared, which
    /// Postgres answers with "does not exist". The server may hold a statement of that name all
    /// the same: the unnamed statement of the last client that used it, or a proxy-global name
    /// of another client's statement. Neither may run (or be described) for this client, whose
    /// policy checks at Bind rest on its own Parse.
    fn unknown_statement(&self, frame: &Frame) -> Option<PgError> {
        if !self.tx_mode {
            return None;
        }
        let name = match frame.tag {
            b'B' => bind_statement(frame)?,
            b'D' => match parse_target(frame)? {
                (b'S', name) => name,
                _ => return None,
            },
            _ => return None,
        };
        let known = if name.is_empty() {
            self.statements.unnamed_parse.is_some()
        } else {
            self.statements.contains(name)
        };
        (!known).then(|| PgError::no_such_statement(name))
    }

    /// Refuses a client message. With a server attached, a failing statement takes its place
    /// so the server's transaction state follows; without one, the proxy answers alone.
    fn reject(&mut self, tag: u8, err: PgError) {
        let mut error = BytesMut::new();
        err.encode(&mut error);
        // Query and FunctionCall are answered up to ReadyForQuery; the rest wait for Sync.
        let simple = tag == b'Q' || tag == b'F';
        if !simple {
            self.skip_until_sync = true;
            self.progress.unsynced = true;
        }
        if self.server.is_none() {
            self.to_client.extend_from_slice(&error);
            if simple {
                backend::ready_for_query(b'I', &mut self.to_client);
            }
            return;
        }
        if simple {
            let _ = frontend::query(FAILING_SQL, &mut self.to_server);
            self.progress.pending += 1;
        } else {
            put_message(&mut self.to_server, b'B', FAILING_BIND);
        }
        self.expected.push(Expect::Reject {
            error: error.freeze(),
            simple,
        });
    }

    /// Answers a session command with `tag`. With a server attached, `sql` (or a no-op) runs
    /// there as a rewrite, so the answer keeps its place among replies still in flight and the
    /// server's state follows; without one, the proxy answers alone (the next checkout brings
    /// the server to the new settings).
    fn answer(&mut self, tag: &str, sql: Option<String>, hidden: Option<String>) {
        let mut complete = BytesMut::new();
        backend::command_complete(tag, &mut complete);
        if self.server.is_none() {
            self.to_client.extend_from_slice(&complete);
            backend::ready_for_query(b'I', &mut self.to_client);
            return;
        }
        let sql = sql.unwrap_or_else(|| "SELECT 1".to_string());
        self.progress.settings_dirty = true;
        if tag == "DISCARD ALL" {
            // The server drops its prepared statements now: a Parse pipelined behind this
            // must really be sent.
            if let Some(s) = self.server.as_mut() {
                s.conn.statements.clear_ahead();
            }
        }
        let _ = frontend::query(&sql, &mut self.to_server);
        self.progress.pending += 1;
        self.expected.push(Expect::Rewrite {
            tag: complete.freeze(),
            failed: false,
        });
        if let Some(sql) = hidden {
            let _ = frontend::query(&sql, &mut self.to_server);
            self.progress.pending += 1;
            self.expected.push(Expect::Hidden);
        }
    }

    /// Session mode: the message goes through unchanged; replies are routed like in
    /// transaction mode so that rejections and rewrites keep their place.
    fn forward_direct(&mut self, frame: &Frame, decision: Option<Arc<Decision>>) {
        let p = &mut self.progress;
        match frame.tag {
            b'S' if p.copy_extended => {} // ignored by the server in copy-in mode
            b'Q' | b'F' | b'S' => {
                p.pending += 1;
                p.segments += 1;
                if frame.tag == b'S' {
                    p.unsynced = false;
                    self.expected.push(Expect::Ready);
                } else {
                    self.expected.push(Expect::QueryReady);
                }
                if frame.tag == b'Q' {
                    let fx = self
                        .screened_effects
                        .take()
                        .unwrap_or_else(|| sqlscan::scan_session_effects(query_text(frame)));
                    if fx.statements {
                        // DEALLOCATE / DISCARD (policy off or audit): the statements the
                        // proxy recorded may be gone; a Bind of one gets 26000 where the
                        // policy applies, and a new Parse of the name is recorded anew.
                        self.statements.clear();
                    }
                }
            }
            b'P' => {
                p.unsynced = true;
                let mut client_name = None;
                if let Some(msg) = parse_parse(frame) {
                    // The statement is the new one, unless the Parse fails or is skipped
                    // after an error: then it is forgotten. A name in use: the server refuses
                    // the Parse (42P05) and keeps the statement, unless that statement's own
                    // Parse is unanswered yet and fails: then the server takes this one.
                    let stmt = ClientStatement {
                        global: None,
                        sql: decision.as_ref().map(|_| Arc::from(msg.query)),
                        decision,
                        param_types: msg.type_oids(),
                        pending: true,
                        segment: p.segments,
                        ..Default::default()
                    };
                    let record = if msg.name.is_empty() || !self.statements.contains(msg.name) {
                        Some(self.statements.insert(msg.name, stmt))
                    } else {
                        self.statements.queue_successor(msg.name, stmt)
                    };
                    client_name = record.map(|r| (msg.name.to_string(), r));
                }
                self.expected.push(Expect::Parse {
                    visible: true,
                    global: None,
                    client_name,
                });
            }
            b'B' => {
                p.unsynced = true;
                self.expected.push(Expect::Bind);
            }
            b'D' => {
                p.unsynced = true;
                let statement =
                    parse_target(frame).and_then(|(k, n)| (k == b'S').then(|| n.to_string()));
                self.expected.push(Expect::Describe { statement });
            }
            b'C' => {
                p.unsynced = true;
                if let Some((b'S', name)) = parse_target(frame) {
                    self.statements.remove(name);
                }
                self.expected.push(Expect::Close { visible: true });
            }
            b'E' => {
                p.unsynced = true;
                self.expected.push(Expect::Execute);
            }
            b'H' => p.unsynced = true,
            b'c' | b'f' => {
                self.to_server.extend_from_slice(&frame.raw);
                return self.copy_end();
            }
            _ => {}
        }
        self.to_server.extend_from_slice(&frame.raw);
    }

    /// Transaction mode: named statements are renamed, and every reply is accounted for.
    fn forward_pooled(&mut self, frame: Frame, decision: Option<Arc<Decision>>) {
        match frame.tag {
            b'Q' => {
                self.note_sql(query_text(&frame));
                self.progress.pending += 1;
                self.progress.segments += 1;
                if self.progress.setup_unconfirmed {
                    // The settings statement's messages before it need no Sync: the Query's
                    // ReadyForQuery ends their implicit transaction too.
                    self.progress.unsynced = false;
                    self.progress.gate_closed = true;
                }
                self.expected.push(Expect::QueryReady);
            }
            b'F' => {
                self.progress.pending += 1;
                self.progress.segments += 1;
                self.expected.push(Expect::QueryReady);
            }
            b'S' if self.progress.copy_extended => {} // ignored by the server in copy-in mode
            b'S' => {
                self.progress.pending += 1;
                self.progress.segments += 1;
                self.progress.unsynced = false;
                if std::mem::take(&mut self.progress.unnamed_unsure) {
                    self.progress.unnamed_parsed = false;
                }
                self.progress.gate_closed = self.progress.setup_unconfirmed;
                self.expected.push(Expect::Ready);
            }
            b'P' => return self.forward_parse(frame, decision),
            b'B' => return self.forward_bind(frame),
            b'D' => return self.forward_describe(frame),
            b'C' => return self.forward_close(frame),
            b'E' => {
                self.progress.unsynced = true;
                self.expected.push(Expect::Execute);
            }
            b'H' => self.progress.unsynced = true,
            b'c' | b'f' => self.copy_end(),
            _ => {}
        }
        self.to_server.extend_from_slice(&frame.raw);
    }

    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail).
    fn copy_end(&mut self) {
        self.progress.copy_in = false;
        self.progress.copy_extended = false;
        self.expected.push(Expect::CopyEnd);
    }

    /// Flags statements that may change what the next checkout must restore.
    /// Notes what `sql` may change on the server's session, and returns what it may change
    /// each time it runs (a prepared statement runs again at every Bind).
    fn note_sql(&mut self, sql: &str) -> Lasting {
        let fx = self
            .screened_effects
            .take()
            .unwrap_or_else(|| sqlscan::scan_session_effects(sql));
        let lasting = Lasting {
            settings: fx.settings,
            temp: fx.temp,
        };
        self.note_lasting(lasting);
        if fx.statements {
            // DISCARD / DEALLOCATE on the server: forget what it had prepared right away, so a
            // Parse pipelined behind it is not skipped, and the client's names with it.
            if let Some(s) = self.server.as_mut() {
                s.conn.statements.clear_ahead();
            }
            self.statements.clear();
        }
        for name in fx.custom {
            // Bounded: a client inventing names endlessly only stops being tracked.
            if !self.custom_settings.contains(&name) && self.custom_settings.len() < 256 {
                self.custom_settings.push(name);
            }
        }
        lasting
    }

    fn note_lasting(&mut self, lasting: Lasting) {
        self.progress.settings_dirty |= lasting.settings;
        self.progress.temp_dirty |= lasting.temp;
    }

    fn forward_parse(&mut self, frame: Frame, decision: Option<Arc<Decision>>) {
        let behind = std::mem::replace(&mut self.progress.unsynced, true);
        let Some(msg) = parse_parse(&frame) else {
            // Malformed: the server reports it.
            self.expected.push(Expect::Parse {
                visible: true,
                global: None,
                client_name: None,
            });
            return self.to_server.extend_from_slice(&frame.raw);
        };
        let (name, query) = (msg.name, msg.query);
        let param_types = msg.type_oids();
        let lasting = self.note_sql(query);
        if name.is_empty() && !self.app.config().proxy.cache_unnamed_statements {
            self.progress.unnamed_parsed = true;
            self.progress.unnamed_unsure |= behind;
            let record = self.statements.insert(
                "",
                ClientStatement {
                    global: None,
                    sql: decision.as_ref().map(|_| Arc::from(query)),
                    decision,
                    param_types,
                    lasting,
                    ..Default::default()
                },
            );
            // After the insert, which keeps the statement it replaces.
            self.statements.unnamed_parse = Some(frame.raw.clone());
            // A failed Parse drops the unnamed statement: not to be replayed either.
            self.expected.push(Expect::Parse {
                visible: true,
                global: None,
                client_name: Some((String::new(), record)),
            });
            return self.to_server.extend_from_slice(&frame.raw);
        }
        let stmt = Arc::new(global_statement(query, msg.types));
        if !name.is_empty() && self.statements.contains(name) {
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
        let known = self.server_has(&stmt.global);
        let record = self.statements.insert(
            name,
            ClientStatement {
                global: Some(stmt.clone()),
                sql: decision.as_ref().map(|_| Arc::from(query)),
                decision,
                param_types,
                lasting,
                pending: !known,
                segment: self.progress.segments,
                ..Default::default()
            },
        );
        if name.is_empty() {
            // `cache_unnamed_statements`: a new unnamed statement replaces the last one, as on
            // Postgres; it is prepared under its global name like a named one.
            self.statements.unnamed_parse = Some(stmt.parse.clone());
        }
        let client_name = (name.to_string(), record);
        if known && self.server_may_be_aborted() {
            // Postgres refuses a Parse in a failed transaction block (25P02), which the proxy
            // cannot rule out here: the server prepares the statement again, after a Close.
            self.close_on_server(&stmt.global);
            self.prepare(&stmt, true, Some(client_name));
        } else if known {
            self.expected.push(Expect::AnsweredParse { client_name });
        } else {
            self.prepare(&stmt, true, Some(client_name));
        }
    }

    fn forward_bind(&mut self, frame: Frame) {
        let behind = std::mem::replace(&mut self.progress.unsynced, true);
        // What the statement may change, it changes again now, maybe in a later transaction
        // than its Parse.
        if let Some(stmt) = bind_statement(&frame).and_then(|n| self.statements.get(n)) {
            let lasting = stmt.lasting;
            self.note_lasting(lasting);
        }
        match bind_statement(&frame) {
            Some(name) => match self.statements.get(name).and_then(|s| s.global.clone()) {
                Some(stmt) => {
                    self.ensure_prepared(&stmt);
                    if rename_bind(&frame, &stmt.global, &mut self.to_server).is_none() {
                        self.to_server.extend_from_slice(&frame.raw);
                    }
                }
                None => {
                    if name.is_empty() {
                        self.ensure_unnamed(behind);
                    }
                    self.to_server.extend_from_slice(&frame.raw);
                }
            },
            None => self.to_server.extend_from_slice(&frame.raw),
        }
        self.expected.push(Expect::Bind);
    }

    fn forward_describe(&mut self, frame: Frame) {
        let behind = std::mem::replace(&mut self.progress.unsynced, true);
        let statement = parse_target(&frame).and_then(|(k, n)| (k == b'S').then(|| n.to_string()));
        match parse_target(&frame) {
            Some((b'S', name)) => match self.statements.get(name).and_then(|s| s.global.clone()) {
                Some(stmt) => {
                    self.ensure_prepared(&stmt);
                    put_target(&mut self.to_server, b'D', b'S', &stmt.global);
                }
                None => {
                    if name.is_empty() {
                        self.ensure_unnamed(behind);
                    }
                    self.to_server.extend_from_slice(&frame.raw);
                }
            },
            _ => self.to_server.extend_from_slice(&frame.raw),
        }
        self.expected.push(Expect::Describe { statement });
    }

    fn forward_close(&mut self, frame: Frame) {
        self.progress.unsynced = true;
        match parse_target(&frame) {
            // Other clients may share the server-side statement: forget the client's name and
            // answer CloseComplete ourselves (closing a missing name is not an error either).
            Some((b'S', name)) if !name.is_empty() || self.statements.unnamed.global.is_some() => {
                let closed = self.statements.take_for_close(name);
                self.expected.push_client_close(closed, false);
            }
            Some((b'S', _)) => {
                // Not to be replayed on the next server (unless the server skips the Close).
                let closed = self.statements.take_for_close("");
                self.expected.push_client_close(closed, true);
                self.to_server.extend_from_slice(&frame.raw);
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
    fn prepare(&mut self, stmt: &Statement, visible: bool, client_name: Option<(String, u64)>) {
        tracing::trace!(global = %stmt.global, visible, ?client_name, "prepare on server");
        let evicted = self
            .server
            .as_mut()
            .and_then(|s| s.conn.statements.insert(&stmt.global));
        if let Some(old) = evicted {
            self.close_on_server(&old);
        }
        let orphan = self
            .server
            .as_mut()
            .is_some_and(|s| s.conn.statements.take_orphan(&stmt.global));
        if orphan {
            self.close_on_server(&stmt.global);
        }
        self.to_server.extend_from_slice(&stmt.parse);
        self.expected.push(Expect::Parse {
            visible,
            global: Some(stmt.global.clone()),
            client_name,
        });
    }

    /// Closes a global statement on the attached server; the reply is swallowed.
    fn close_on_server(&mut self, global: &str) {
        put_target(&mut self.to_server, b'C', b'S', global);
        self.expected.push(Expect::Evict {
            global: global.to_string(),
        });
    }

    /// Could the server be in a failed transaction block when it reads the next message: it
    /// said so, or replies that may change that are outstanding?
    fn server_may_be_aborted(&self) -> bool {
        self.progress.pending > 0
            || self
                .server
                .as_ref()
                .is_some_and(|s| s.conn.tx_status == b'E')
    }

    /// A Bind or Describe of the unnamed statement on a server that did not see the client's
    /// Parse of it (the client parsed it in an earlier transaction, or the server may have
    /// skipped it): replay that Parse. `behind`: other messages of the segment come first.
    fn ensure_unnamed(&mut self, behind: bool) {
        if self.progress.unnamed_parsed {
            return;
        }
        if let Some(parse) = self.statements.unnamed_parse.clone() {
            self.to_server.extend_from_slice(&parse);
            self.expected.push(Expect::Parse {
                visible: false,
                global: None,
                client_name: None,
            });
            self.progress.unnamed_parsed = true;
            self.progress.unnamed_unsure |= behind;
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
        // One allocation for what this batch relays, instead of growing message by message.
        self.to_client.reserve(conn.conn.rbuf.len());
        while let Some(frame) = next_frame(&mut conn.conn.rbuf, max).map_err(|e| e.to_string())? {
            if let Some(form) = self.expected.setup_first() {
                // The proxy's settings statement: nothing of it reaches the client.
                let reply = if *form == Expect::Setup {
                    setup::ahead_reply(&mut self.progress, conn, &frame)
                } else {
                    setup::inline_reply(&mut self.progress, conn, &frame)
                };
                match reply {
                    setup::Reply::Pending => {}
                    setup::Reply::Done => self.expected.setup_done(),
                    setup::Reply::Failed => return Ok(()),
                }
                continue;
            }
            if frame.tag == b'E' {
                conn.statements.note_error(frame.body());
                // An error ends the server's COPY; after one in an extended-protocol COPY it
                // skips to the client's next Sync, which must count again.
                self.progress.copy_in = false;
                self.progress.copy_extended = false;
            }
            if frame.tag == b'E' && self.expected.check_first() {
                setup::check_failed(&mut self.progress, &frame);
                return Ok(());
            }
            if self.progress.setup_watch {
                let setting = &self.app.config().tenancy.setting;
                if setup::watch_reply(&mut self.progress, conn, &frame, setting) {
                    return Ok(());
                }
            }
            match frame.tag {
                b'Z' => {
                    self.progress.pending = self.progress.pending.saturating_sub(1);
                    conn.tx_status = frame.body().first().copied().unwrap_or(b'I');
                    self.metrics
                        .ready_for_query(conn.tx_status, self.progress.pending);
                    self.progress.copy_in = false;
                    if conn.tx_status == b'I' && self.local_tenant.take().is_some() {
                        self.local_placement = None;
                        self.statements_stale = true;
                    }
                }
                b'G' | b'W' => {
                    self.progress.copy_in = true;
                    // COPY started by an extended-protocol Execute: the server ignores Syncs
                    // until the copy ends, including those already sent.
                    let ignored = self.expected.copy_in_started();
                    if ignored.extended {
                        self.progress.copy_extended = true;
                        self.progress.pending = self.progress.pending.saturating_sub(ignored.syncs);
                    }
                }
                b'S' => {
                    conn.record_parameter_status(frame.body());
                    self.progress.settings_dirty = true;
                }
                _ => {}
            }
            let route = self.expected.route(
                &frame,
                &mut self.to_client,
                &mut conn.statements,
                &mut self.statements,
            );
            // Only an error changes what the server skips.
            if frame.tag == b'E' {
                let skipped = self.expected.take_skipped_queries();
                self.progress.pending = self.progress.pending.saturating_sub(skipped);
                if self.expected.take_skipping() {
                    self.skip_until_sync = true;
                    // The server is not released before that Sync.
                    self.progress.unsynced = true;
                }
            }
            match route {
                Route::Forward => self.to_client.extend_from_slice(&frame.raw),
                Route::Replace(msg) => self.to_client.extend_from_slice(&msg),
                Route::Drop => {}
            }
            self.expected.flush_synthetic(&mut self.to_client);
        }
        Ok(())
    }
}

fn query_text(frame: &Frame) -> &str {
    BodyReader::new(frame.body()).cstr().unwrap_or("")
}
