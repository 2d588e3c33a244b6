//! Transaction mode's client messages towards the server: the client's statement names become
//! proxy-global names, statements the server lacks are prepared on the way, and every reply
//! the client is owed (or must not see) is queued in `expected`.

use super::extended::{
    bind_statement, bind_statement_name, global_statement, parse_parse, parse_target, put_target,
    rename_bind, ClientStatement, Expect, Statement,
};
use super::frames::query_text;
use super::sqlscan::{self, Lasting};
use super::Session;
use crate::protocol::frame::Frame;
use postgres_protocol::message::frontend;
use std::sync::Arc;
use tenantgate_policy::Decision;

impl Session {
    /// Transaction mode: named statements are renamed, and every reply is accounted for.
    pub(super) fn forward_pooled(&mut self, frame: Frame, decision: Option<Arc<Decision>>) {
        // A Query or FunctionCall ends the implicit transaction of extended-protocol messages
        // before it, Sync or not: what follows is a segment of its own.
        // COPY data and its end belong to the COPY's request: they start nothing, nor end
        // one (the COPY query's ReadyForQuery still ends what came before it).
        let copy = matches!(frame.tag, b'd' | b'c' | b'f');
        let starts = !copy && (!self.progress.unsynced || self.progress.request_ended);
        if !copy {
            self.progress.request_ended = matches!(frame.tag, b'Q' | b'F');
        }
        if frame.tag == b'H' {
            // The client may wait for the replies to what it sent so far, even if it sends
            // more (without a Flush) meanwhile.
            self.expected.mark_flush();
        }
        if starts {
            self.discard_foreign_sequences(&frame);
        }
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
                // Postgres drops the unnamed statement at every simple Query it runs (a later
                // Bind of it fails with 26000), but not at one it skips after an error.
                let unnamed = Some(self.statements.drop_unnamed());
                self.progress.unnamed_parsed = false;
                self.expected.push(Expect::QueryReady { unnamed });
            }
            b'F' => {
                // It may call `nextval` (by its OID), which no text names.
                self.progress.sequences_dirty = true;
                self.progress.pending += 1;
                self.progress.segments += 1;
                self.expected.push(Expect::QueryReady { unnamed: None });
            }
            b'S' if self.progress.copy_extended => {} // ignored by the server in copy-in mode
            b'S' => {
                self.progress.pending += 1;
                self.progress.segments += 1;
                self.progress.unsynced = false;
                if std::mem::take(&mut self.progress.unnamed_unsure) {
                    self.progress.unnamed_parsed = false;
                    self.progress.unnamed_in_doubt = true;
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

    /// Before a segment (`first` and what follows it in the read buffer) that may read
    /// `currval`: if earlier clients' statements may have drawn sequence values on this server
    /// and this client has named no draw on it yet, the server discards them first, so that
    /// `currval` fails (55000) as on a session that never drew them, instead of answering with
    /// another client's (tenant's) value. Sent ahead of the segment, no round trip of its own;
    /// apps that do not call `currval` never pay for it. The server stays marked until a reset
    /// has succeeded (see `Session::server_frames`): one that fails, or is left unanswered by a
    /// client that vanished, leaves it marked.
    pub(super) fn discard_foreign_sequences(&mut self, first: &Frame) {
        let foreign = !self.progress.sequences_own
            && self.server.as_ref().is_some_and(|s| s.conn.sequences_drawn);
        if !foreign || !self.segment_may_read_sequences(first) {
            return;
        }
        let tolerant = !self.segment_may_end_transaction(first);
        let _ = frontend::query("DISCARD SEQUENCES", &mut self.to_server);
        self.progress.pending += 1;
        self.expected.push(Expect::Reset { tolerant });
    }

    /// Does the segment name `currval` (a Query or Parse text, or the statement a Bind runs),
    /// or call a function by OID (FunctionCall)?
    fn segment_may_read_sequences(&self, first: &Frame) -> bool {
        self.segment_may(first, |tag, body| match tag {
            b'Q' | b'P' => sqlscan::may_read_sequences(body),
            b'B' => bind_statement_name(body)
                .and_then(|name| self.statements.get(name))
                .is_some_and(|s| s.lasting.reads_sequences),
            b'F' => true,
            _ => false,
        })
    }

    /// May the segment end the client's transaction (transaction control, or a statement the
    /// scan cannot tell)? In an aborted transaction Postgres refuses the reset (25P02), but
    /// would run a `currval` behind a `ROLLBACK` in the same segment.
    fn segment_may_end_transaction(&self, first: &Frame) -> bool {
        self.segment_may(first, |tag, body| {
            self.message_controls(tag, body, false) != Some(false)
        })
    }

    /// Does `hit` hold for one of the segment's messages (see `Session::segment`)? A segment
    /// not complete in the read buffer may hold anything: yes.
    fn segment_may(&self, first: &Frame, mut hit: impl FnMut(u8, &[u8]) -> bool) -> bool {
        let mut complete = false;
        for (tag, body) in self.segment(first) {
            if hit(tag, body) {
                return true;
            }
            complete = matches!(tag, b'S' | b'Q');
        }
        !complete
    }

    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail).
    pub(super) fn copy_end(&mut self) {
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
            reseeds: fx.reseeds,
            sequences: fx.sequences,
            reads_sequences: fx.reads_sequences,
            draws: fx.draws,
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
        self.progress.reseeded |= lasting.reseeds;
        self.progress.sequences_dirty |= lasting.sequences;
        self.progress.sequences_own |= lasting.draws;
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
                // Answered by the proxy or not, its outcome is known once the replies before
                // it are: an error among them makes the server skip it.
                pending: true,
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
}
