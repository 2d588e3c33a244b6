//! Per-message handling in the relay: client messages screened and sent towards the server
//! (transaction mode's renaming in `pooled`) and server messages back (tracking transaction
//! state).

use super::enforce::Screen;
use super::extended::{bind_statement, parse_parse, parse_target, ClientStatement, Expect, Route};
use super::relay::RelayEnd;
use super::{setup, sqlscan, Session};
use crate::protocol::backend;
use crate::protocol::frame::{frontend_limit, next_frame, put_message, Frame, FrameError};
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

/// A statement that fails while it runs and has no effect: sent in place of a refused simple
/// query so the server fails it, aborting an open transaction exactly as the refused
/// statement's own error would have. It fails at execution (the sub-select is not folded at
/// planning), as most statements do: an error there leaves the unnamed portal in the aborted
/// transaction, and a later Execute of it gets 25P02 as on Postgres, not 34000.
const FAILING_SQL: &str = "SELECT 1 / (SELECT 0) AS tenantgate_policy_rejection";

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
                None => match self.client.rbuf.first() {
                    None => return None,
                    Some(&tag) => match frontend_limit(tag, max) {
                        Some(limit) => next_frame(&mut self.client.rbuf, limit),
                        None => Err(FrameError::UnexpectedType(tag)),
                    },
                },
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
                || self.unnamed_must_wait(&frame)
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
            if tag == b'Q' && self.tx_mode && !matches!(screened, Screened::Relay(_)) {
                // Postgres drops the unnamed statement at every simple Query it runs (a later
                // Bind of it fails with 26000). A relayed Query drops it in `forward_pooled`,
                // put back should the server skip that Query.
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
            self.expected
                .flush_synthetic(&mut self.to_client, &mut self.statements);
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
        // What the server is sent in its place decides, as in `forward_pooled`.
        self.progress.request_ended = simple;
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
            self.report_desired_changes();
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
        self.progress.request_ended = true;
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
        if !matches!(frame.tag, b'd' | b'c' | b'f') {
            // As in `forward_pooled`: the ReadyForQuery that ends `pending` ends the implicit
            // transaction of unsynced messages only if they came before this Query.
            p.request_ended = matches!(frame.tag, b'Q' | b'F');
        }
        match frame.tag {
            b'S' if p.copy_extended => {} // ignored by the server in copy-in mode
            b'Q' | b'F' | b'S' => {
                p.pending += 1;
                p.segments += 1;
                if frame.tag == b'S' {
                    p.unsynced = false;
                    self.expected.push(Expect::Ready);
                } else {
                    self.expected.push(Expect::QueryReady { unnamed: None });
                }
                if frame.tag == b'Q' {
                    let fx = self
                        .screened_effects
                        .take()
                        .unwrap_or_else(|| sqlscan::scan_session_effects(query_text(frame)));
                    p.reseeded |= fx.reseeds;
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
                    // The session's server is closed at its end if the statement may reseed
                    // random() (flagged at Parse: it may run at any later Bind).
                    p.reseeded |= match self.screened_effects.take() {
                        Some(fx) => fx.reseeds,
                        None => sqlscan::scan_session_effects(msg.query).reseeds,
                    };
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
            if let Some(tolerant) = self.expected.reset_first() {
                // The proxy's DISCARD SEQUENCES: nothing of it reaches the client.
                match setup::reset_reply(&mut self.progress, conn, &frame, tolerant) {
                    setup::Reply::Pending => {}
                    setup::Reply::Done => self.expected.reset_done(),
                    setup::Reply::Failed => {
                        self.expected.reset_done();
                        return Ok(());
                    }
                }
                continue;
            }
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
            if frame.tag == b'S' {
                // Not relayed: the client is told what changed before its next ReadyForQuery
                // (see `reports`).
                conn.record_parameter_status(frame.body());
                self.progress.settings_dirty = true;
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
                    if self.progress.pending == 0 {
                        self.progress.unnamed_in_doubt = false;
                        if self.progress.request_ended {
                            // The last message sent was a Query (or FunctionCall) and this is
                            // its ReadyForQuery (a skipped one has none): it ended the implicit
                            // transaction of any extended-protocol messages before it.
                            self.progress.unsynced = false;
                        }
                    }
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
            if frame.tag == b'Z'
                && !self.expected.hidden_first()
                && self.reported_digest != conn.params_digest
            {
                // After a DISCARD ALL the proxy answered, the client's settings are restored by
                // the hidden statement that follows: report once that has run, before the
                // ReadyForQuery held for it.
                super::reports::report_changes(
                    &mut self.reported,
                    &conn.params,
                    &mut self.to_client,
                );
                self.reported_digest = conn.params_digest;
            }
            if frame.tag == b'Z' && self.expected.is_empty() {
                // Every Parse is answered: none can be skipped any more.
                self.statements.settled();
            }
            match route {
                Route::Forward => self.to_client.extend_from_slice(&frame.raw),
                Route::Replace(msg) => self.to_client.extend_from_slice(&msg),
                Route::Drop => {}
            }
            self.expected
                .flush_synthetic(&mut self.to_client, &mut self.statements);
        }
        Ok(())
    }
}

pub(super) fn query_text(frame: &Frame) -> &str {
    BodyReader::new(frame.body()).cstr().unwrap_or("")
}
