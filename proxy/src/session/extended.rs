//! Prepared statements in transaction mode.
//!
//! A client's statement names are private to it, but its server changes from one transaction
//! to the next. So each named statement is renamed to a proxy-global name derived from its
//! text and parameter types (`tg_<128-bit hash>`), which any server may already hold. Each
//! server remembers the global names it has prepared (bounded LRU; the least recently used is
//! closed). The proxy then:
//! - skips a client's Parse the server already has, answering ParseComplete itself;
//! - injects the Parse before a Bind/Describe on a server that lacks the statement, and
//!   swallows the server's ParseComplete;
//! - answers a client's Close of a named statement itself (other clients may share it).
//!
//! Every forwarded, injected or synthesized response is recorded in order in [`Expected`], so
//! the client sees exactly the sequence a direct connection would give.

use crate::protocol::frame::{put_header, BodyReader, Frame};
use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;

/// A client statement as the servers know it.
#[derive(Debug)]
pub struct Statement {
    pub global: String,
    /// A complete Parse message that prepares `global`.
    pub parse: Bytes,
}

/// What a forwarded message will produce, and whether the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Parse; `global` is the server-side name it creates (None for the unnamed statement),
    /// `client_name` the client's name and the record this Parse made, forgotten if it fails.
    Parse {
        visible: bool,
        global: Option<String>,
        client_name: Option<(String, u64)>,
    },
    Bind,
    /// Describe; for a statement, the client's name (`""` = unnamed) to record its parameter
    /// types under.
    Describe {
        statement: Option<String>,
    },
    Execute,
    Close {
        visible: bool,
    },
    /// The proxy's Close of a statement it evicted from the server's cache (`global`): should
    /// the server skip it after an error, it still holds that statement.
    Evict {
        global: String,
    },
    /// A Parse the proxy answers itself (the server holds the statement): ParseComplete when it
    /// reaches the head of the queue; if an error before it makes the server skip the client's
    /// messages up to the Sync, the client's record `client_name` is forgotten, as Postgres
    /// would not have created the statement.
    AnsweredParse {
        client_name: (String, u64),
    },
    /// A client's Close of a statement, which the proxy forgot when it read it
    /// ([`Expected::closed`] holds it): answered by the proxy (`forwarded` false) or by the
    /// server. If the server skips it after an error, the statement is put back, as on Postgres.
    ClientClose {
        forwarded: bool,
    },
    /// Sync: answered up to and including ReadyForQuery.
    Ready,
    /// Query or FunctionCall: the same, but skipped with no reply at all when it comes behind
    /// an extended-protocol message that failed (the server skips to the Sync).
    /// `unnamed`: transaction mode, a Query, which drops the unnamed statement; the record
    /// of that drop (see [`ClientStatements::drop_unnamed`]), undone if the server skips it.
    QueryReady {
        unnamed: Option<u64>,
    },
    /// A request the proxy replaced by one that fails on purpose (so that the server's
    /// transaction is aborted exactly as Postgres would abort it): the server's error is
    /// replaced by `error`. `simple` = a Query, answered up to ReadyForQuery.
    Reject {
        error: Bytes,
        simple: bool,
    },
    /// A Query the proxy answers with its own command tag after running its own statement:
    /// the server's rows and tags are dropped; errors are forwarded.
    Rewrite {
        tag: Bytes,
        failed: bool,
    },
    /// A Query of the proxy's own that the client never sees, ReadyForQuery included.
    Hidden,
    /// A reset of the proxy's own (`DISCARD SEQUENCES`), a Query ahead of a client segment:
    /// none of its replies reach the session's accounting either (see
    /// `Session::server_frames`). `tolerant`: the segment cannot end the client's
    /// transaction, so should the reset be refused in it as aborted (25P02), the segment's
    /// `currval` is refused too and the session may go on.
    Reset {
        tolerant: bool,
    },
    /// The proxy's settings statement at checkout, sent ahead of the client's first request
    /// (a Query the client never sees; the session checks its outcome, see `session::setup`).
    Setup,
    /// The proxy's settings statement inside the client's first implicit transaction
    /// (Parse, Bind and Execute of the unnamed statement; no Sync). Its replies are dropped up
    /// to its CommandComplete; the session checks its outcome (see `session::setup`).
    SetupInline,
    /// The statement after [`Expect::Setup`] that fails unless the settings took effect
    /// (Parse, Bind and Execute of the unnamed statement; no Sync). Its replies are dropped;
    /// an error reaches the client in place of its first request's replies.
    Check,
    /// Where the client ended a COPY FROM STDIN: no reply of its own; marks which Syncs the
    /// server ignored in copy-in mode.
    CopyEnd,
}

/// What [`Expected::copy_in_started`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyIgnored {
    pub extended: bool,
    pub syncs: usize,
}

/// Outcome of processing one server message.
pub enum Route {
    Forward,
    Drop,
    /// Send this instead of the server's message.
    Replace(Bytes),
}

#[derive(Default)]
pub struct Expected {
    queue: VecDeque<Expect>,
    /// An extended-protocol error came before the client's Sync was sent: the server now
    /// skips every message until that Sync (see [`Expected::take_skipping`]).
    skipping: bool,
    /// Queries and FunctionCalls the server skipped after such an error: their
    /// ReadyForQuery will not come (see [`Expected::take_skipped_queries`]).
    skipped_queries: usize,
    /// The ReadyForQuery of a rewritten statement, held until the hidden statement behind it
    /// has run, so that the ParameterStatus the two cause together come before it, as the one
    /// statement's would on Postgres.
    held_ready: Option<Bytes>,
    /// The statements of the [`Expect::ClientClose`]s in the queue, in the same order (None:
    /// the client closed a name it did not have).
    closed: VecDeque<Option<Closed>>,
    /// Entries ever queued, and how many of them the client's last Flush covered (see
    /// [`Expected::flush_owed`]).
    pushed: u64,
    flush_mark: u64,
}

/// ParseComplete and CloseComplete, as the proxy writes them.
const PARSE_COMPLETE: &[u8] = &[b'1', 0, 0, 0, 4];
const CLOSE_COMPLETE: &[u8] = &[b'3', 0, 0, 0, 4];

impl Expected {
    /// Did an error leave the server skipping messages until a Sync the client has not sent
    /// yet? The client then already has the error (it flushed); what it sends up to its Sync
    /// is skipped by the server without a reply, so the proxy drops it too.
    pub fn take_skipping(&mut self) -> bool {
        std::mem::take(&mut self.skipping)
    }

    /// How many Queries or FunctionCalls the server skipped without a ReadyForQuery since
    /// the last call.
    pub fn take_skipped_queries(&mut self) -> usize {
        std::mem::take(&mut self.skipped_queries)
    }

    pub fn push(&mut self, e: Expect) {
        self.pushed += 1;
        self.queue.push_back(e);
    }

    /// Queues a client's Close of a statement the proxy has forgotten already (`closed`).
    pub fn push_client_close(&mut self, closed: Option<Closed>, forwarded: bool) {
        self.closed.push_back(closed);
        self.push(Expect::ClientClose { forwarded });
    }

    /// The client sent a Flush: the server sends the replies to everything queued so far.
    pub fn mark_flush(&mut self) {
        self.flush_mark = self.pushed;
    }

    /// Is a reply the client's last Flush asked for still to come (entries leave the queue
    /// in order, bar Syncs dropped during a COPY)?
    pub fn flush_owed(&self) -> bool {
        self.pushed.saturating_sub(self.queue.len() as u64) < self.flush_mark
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Are the next replies those of the proxy's check (see [`Expect::Check`])?
    pub fn check_first(&self) -> bool {
        self.queue.front() == Some(&Expect::Check)
    }

    /// Are the next replies those of a statement the proxy runs unseen after a rewritten
    /// one (see [`Expect::Hidden`])?
    pub fn hidden_first(&self) -> bool {
        self.queue.front() == Some(&Expect::Hidden)
    }

    /// Are the next replies those of the proxy's reset (see [`Expect::Reset`])? Some(tolerant).
    pub fn reset_first(&self) -> Option<bool> {
        match self.queue.front() {
            Some(Expect::Reset { tolerant }) => Some(*tolerant),
            _ => None,
        }
    }

    /// The reset has answered in full.
    pub fn reset_done(&mut self) {
        if self.reset_first().is_some() {
            self.queue.pop_front();
        }
    }

    /// The proxy's settings statement has answered in full (see `session::setup`).
    pub fn setup_done(&mut self) {
        if self.setup_first().is_some() {
            self.queue.pop_front();
        }
    }

    /// Are the next replies those of the proxy's settings statement, and of which form?
    /// (They do not go through [`Expected::route`]: none of them reach the client.)
    pub fn setup_first(&self) -> Option<&Expect> {
        self.queue
            .front()
            .filter(|e| matches!(e, Expect::Setup | Expect::SetupInline))
    }

    /// Writes synthetic replies that have reached the head of the queue.
    pub fn flush_synthetic(&mut self, to_client: &mut BytesMut, client: &mut ClientStatements) {
        loop {
            match self.queue.front() {
                Some(Expect::AnsweredParse {
                    client_name: (name, record),
                }) => {
                    // Not skipped after an error: the client's statement exists now.
                    client.confirm(name, *record);
                    to_client.extend_from_slice(PARSE_COMPLETE);
                }
                Some(Expect::ClientClose { forwarded: false }) => {
                    to_client.extend_from_slice(CLOSE_COMPLETE);
                    self.closed.pop_front();
                }
                Some(Expect::CopyEnd) => {}
                _ => return,
            }
            self.queue.pop_front();
        }
    }

    /// The server entered COPY FROM STDIN. If an extended-protocol Execute started it, the
    /// Syncs queued after that Execute and before the client's end of the copy were ignored
    /// by the server: drop them.
    pub fn copy_in_started(&mut self) -> CopyIgnored {
        if !matches!(self.queue.front(), Some(Expect::Execute)) {
            return CopyIgnored::default();
        }
        let end = self
            .queue
            .iter()
            .position(|e| *e == Expect::CopyEnd)
            .unwrap_or(self.queue.len());
        let mut syncs = 0;
        let mut i = 1;
        while i < end - syncs {
            if self.queue[i] == Expect::Ready {
                self.queue.remove(i);
                syncs += 1;
            } else {
                i += 1;
            }
        }
        CopyIgnored {
            extended: true,
            syncs,
        }
    }

    /// Routes one server message, updating which statements the server holds. Synthetic
    /// replies that precede it are written first.
    pub fn route(
        &mut self,
        frame: &Frame,
        to_client: &mut BytesMut,
        server_stmts: &mut ServerStatements,
        client: &mut ClientStatements,
    ) -> Route {
        self.flush_synthetic(to_client, client);
        let tag = frame.tag;
        if matches!(tag, b'N' | b'A' | b'S') {
            // Asynchronous messages can arrive at any point.
            return Route::Forward;
        }
        match self.queue.front_mut() {
            Some(Expect::Rewrite {
                tag: command,
                failed,
            }) => {
                return match tag {
                    b'E' => {
                        *failed = true;
                        Route::Forward
                    }
                    b'Z' => {
                        if !*failed {
                            to_client.extend_from_slice(command);
                        }
                        self.queue.pop_front();
                        if self.hidden_first() {
                            self.held_ready = Some(frame.raw.clone());
                            return Route::Drop;
                        }
                        Route::Forward
                    }
                    _ => Route::Drop,
                };
            }
            Some(Expect::Hidden | Expect::Reset { .. }) => {
                if tag == b'Z' {
                    self.queue.pop_front();
                    if let Some(ready) = self.held_ready.take() {
                        return Route::Replace(ready);
                    }
                }
                return Route::Drop;
            }
            Some(Expect::Check) if tag != b'E' => {
                if tag == b'C' {
                    self.queue.pop_front();
                }
                return Route::Drop;
            }
            Some(Expect::Reject {
                error,
                simple: true,
            }) => {
                return match tag {
                    b'E' => Route::Replace(error.clone()),
                    b'Z' => {
                        self.queue.pop_front();
                        Route::Forward
                    }
                    _ => Route::Drop,
                };
            }
            _ => {}
        }
        if tag == b'E' {
            let stale = is_stale_plan_error(frame.body());
            return self.extended_error(stale, server_stmts, client);
        }
        if let (
            b'1',
            Some(Expect::Parse {
                client_name: Some((name, record)),
                ..
            }),
        ) = (tag, self.queue.front())
        {
            client.confirm(name, *record);
        }
        let Some(front) = self.queue.front() else {
            return Route::Forward;
        };
        let (done, visible) = match (front, tag) {
            (Expect::Parse { visible, .. }, b'1') => (true, *visible),
            (Expect::Bind, b'2') => (true, true),
            (Expect::Close { visible }, b'3') => (true, *visible),
            (Expect::Evict { .. }, b'3') => (true, false),
            (Expect::ClientClose { forwarded: true }, b'3') => {
                self.closed.pop_front();
                (true, true)
            }
            (Expect::Describe { statement }, b't') => {
                if let Some(name) = statement {
                    client.set_param_types(name, frame.body());
                }
                (false, true)
            }
            (Expect::Describe { .. }, b'T' | b'n') => (true, true),
            (Expect::Execute, b'C' | b'I' | b's') => (true, true),
            (Expect::QueryReady { unnamed }, b'Z') => {
                if let Some(record) = unnamed {
                    client.confirm("", *record);
                }
                (true, true)
            }
            (Expect::Ready, b'Z') => (true, true),
            _ => (false, true),
        };
        if done {
            self.queue.pop_front();
        }
        // Synthetic replies now at the head go after this message: the caller forwards it,
        // then calls flush_synthetic.
        if visible {
            Route::Forward
        } else {
            Route::Drop
        }
    }

    /// An ErrorResponse outside a simple Query: in the extended protocol the server now skips
    /// everything until Sync, so the replies queued up to the Sync will never come.
    /// `stale`: the error is Postgres refusing a statement whose result columns changed (see
    /// [`ServerStatements::stale`]).
    fn extended_error(
        &mut self,
        stale: bool,
        server_stmts: &mut ServerStatements,
        client: &mut ClientStatements,
    ) -> Route {
        let mut route = Route::Forward;
        let mut failing = true;
        // Parses of the unnamed statement the server skipped: it keeps the one it had before
        // the first of them.
        let mut skipped_unnamed: Vec<u64> = Vec::new();
        // The failing message was a Parse of the unnamed statement: Postgres dropped the one
        // before it, so skipped Parses behind it have nothing to put back.
        let mut unnamed_failed = false;
        // Records of the Parses the error undid: a Close skipped behind one of them has
        // nothing to put back (the name never existed on Postgres).
        let mut undone: Vec<u64> = Vec::new();
        loop {
            let Some(front) = self.queue.front() else {
                self.skipping = true;
                break;
            };
            match front {
                Expect::Ready => break,
                // A simple Query's own error: answered up to its ReadyForQuery as usual.
                Expect::QueryReady { .. } if failing => break,
                // A skipped Query drops no unnamed statement.
                Expect::QueryReady { unnamed } => {
                    if let Some(record) = unnamed {
                        skipped_unnamed.push(*record);
                    }
                    self.skipped_queries += 1;
                }
                // Messages of the simple protocol behind the failed one: skipped.
                Expect::Rewrite { .. }
                | Expect::Hidden
                | Expect::Reset { .. }
                | Expect::Reject { simple: true, .. } => self.skipped_queries += 1,
                // The error is the rejected message's own, not an earlier message's.
                Expect::Reject { error, .. } if failing => route = Route::Replace(error.clone()),
                Expect::Parse {
                    global,
                    client_name,
                    ..
                } => {
                    if let Some(g) = global {
                        server_stmts.forget(g);
                    }
                    if let Some((name, record)) = client_name {
                        client.forget_if(name, *record);
                        undone.push(*record);
                        if name.is_empty() && !failing {
                            skipped_unnamed.push(*record);
                        }
                        unnamed_failed |= name.is_empty() && failing;
                    }
                }
                Expect::AnsweredParse {
                    client_name: (name, record),
                } => {
                    client.forget_if(name, *record);
                    undone.push(*record);
                    if name.is_empty() && !failing {
                        skipped_unnamed.push(*record);
                    }
                }
                Expect::ClientClose { .. } => {
                    // Put back, as Postgres skipped the Close; except behind the stale-plan
                    // error, which only pooling causes (README: the client's next run must
                    // prepare the statement afresh, as it would on a direct connection).
                    let closed = self.closed.pop_front().flatten();
                    if let Some(closed) = closed.filter(|c| !stale && !undone.contains(&c.record()))
                    {
                        client.restore(closed);
                    }
                }
                Expect::Evict { global } => server_stmts.orphan(global),
                _ => {}
            }
            self.queue.pop_front();
            failing = false;
        }
        if let Some(&first) = skipped_unnamed.first() {
            client.unskip_unnamed((!unnamed_failed).then_some(first), &skipped_unnamed);
        }
        route
    }
}

#[path = "client_statements.rs"]
mod client_statements;
#[cfg(test)]
use client_statements::MAX_SUCCESSORS;
pub use client_statements::{ClientStatement, ClientStatements, Closed};

/// The global statements a server has prepared, least recently used first out.
pub(crate) struct ServerStatements {
    lru: lru::LruCache<String, ()>,
    /// One of them can no longer run: a schema change altered its result columns, and Postgres
    /// refuses it ("cached plan must not change result type") until it is prepared again. The
    /// server's statements are deallocated when it is released.
    pub stale: bool,
    /// Statements the server holds although they left the LRU: their eviction Close was skipped
    /// after an error. A Parse of one of them must close it first (else 42P05).
    orphans: std::collections::HashSet<String>,
}

impl ServerStatements {
    pub fn new(capacity: usize) -> Self {
        let cap =
            std::num::NonZeroUsize::new(capacity.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        ServerStatements {
            lru: lru::LruCache::new(cap),
            stale: false,
            orphans: Default::default(),
        }
    }

    pub fn contains(&mut self, global: &str) -> bool {
        self.lru.get(global).is_some()
    }

    /// Records a statement; returns the one evicted to make room, which must be closed.
    pub fn insert(&mut self, global: &str) -> Option<String> {
        self.lru
            .push(global.to_string(), ())
            .and_then(|(evicted, ())| (evicted != global).then_some(evicted))
    }

    pub fn forget(&mut self, global: &str) {
        self.lru.pop(global);
    }

    /// The server skipped the Close of `global` (see [`ServerStatements::orphans`]). Beyond
    /// the cache's size, the server's statements are deallocated when it is released instead.
    fn orphan(&mut self, global: &str) {
        if self.orphans.len() >= self.lru.cap().get() {
            self.stale = true;
        } else {
            self.orphans.insert(global.to_string());
        }
    }

    /// Is `global` on the server although not in the LRU? It no longer counts as such: the
    /// caller closes it.
    pub fn take_orphan(&mut self, global: &str) -> bool {
        self.orphans.remove(global)
    }

    pub fn clear(&mut self) {
        self.lru.clear();
        self.orphans.clear();
        self.stale = false;
    }

    /// The server is sent a command that drops its statements (DISCARD ALL, DEALLOCATE):
    /// forget them now, so that a Parse pipelined behind it is sent. Should the server not
    /// run it (skipped after an error, or failed), it still holds them: they are deallocated
    /// when it is released.
    pub fn clear_ahead(&mut self) {
        self.lru.clear();
        self.orphans.clear();
        self.stale = true;
    }

    /// Notes an ErrorResponse from the server: is it a prepared statement that went stale?
    /// Recognized by the routine that raises it, which is not translated (the message may be).
    pub fn note_error(&mut self, body: &[u8]) {
        self.stale |= is_stale_plan_error(body) && !self.lru.is_empty();
    }
}

/// Is this ErrorResponse body Postgres refusing a prepared statement whose result columns
/// changed ("cached plan must not change result type")? Recognized by the routine that raises
/// it, which is not translated (the message may be).
fn is_stale_plan_error(body: &[u8]) -> bool {
    let mut r = BodyReader::new(body);
    let (mut feature_not_supported, mut revalidate) = (false, false);
    while let Ok(code) = r.u8() {
        let Ok(value) = r.cstr_bytes() else { break };
        match code {
            b'C' => feature_not_supported = value == b"0A000",
            b'R' => revalidate = value == b"RevalidateCachedQuery",
            _ => {}
        }
    }
    feature_not_supported && revalidate
}

/// The fields of a Parse message.
pub struct ParseMsg<'a> {
    pub name: &'a str,
    pub query: &'a str,
    /// Parameter type count and OIDs exactly as sent.
    pub types: &'a [u8],
}

impl ParseMsg<'_> {
    pub fn type_oids(&self) -> Vec<u32> {
        self.types
            .get(2..)
            .unwrap_or_default()
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

pub fn parse_parse(frame: &Frame) -> Option<ParseMsg<'_>> {
    let mut r = BodyReader::new(frame.body());
    let name = r.cstr().ok()?;
    let query = r.cstr().ok()?;
    let types = r.rest();
    let mut check = BodyReader::new(types);
    let n = check.i16().ok()?;
    if n < 0 || check.remaining() != n as usize * 4 {
        return None;
    }
    Some(ParseMsg { name, query, types })
}

/// The proxy-global statement for a query and its parameter types.
pub fn global_statement(query: &str, types: &[u8]) -> Statement {
    let mut h = Sha256::new();
    h.update(query.as_bytes());
    h.update([0]);
    h.update(types);
    let digest = h.finalize();
    let global = format!("tg_{}", hex::encode(&digest[..16]));
    let parse = build_parse(&global, query, types);
    Statement { global, parse }
}

fn build_parse(name: &str, query: &str, types: &[u8]) -> Bytes {
    let body_len = name.len() + 1 + query.len() + 1 + types.len();
    let mut out = BytesMut::with_capacity(body_len + 5);
    put_header(&mut out, b'P', body_len);
    put_cstr(&mut out, name);
    put_cstr(&mut out, query);
    out.put_slice(types);
    out.freeze()
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Rewrites a Bind to use `statement` instead of the client's name.
pub fn rename_bind(frame: &Frame, statement: &str, out: &mut BytesMut) -> Option<()> {
    let mut r = BodyReader::new(frame.body());
    let portal = r.cstr_bytes().ok()?;
    r.cstr_bytes().ok()?;
    let rest = r.rest();
    put_header(
        out,
        b'B',
        portal.len() + 1 + statement.len() + 1 + rest.len(),
    );
    out.put_slice(portal);
    out.put_u8(0);
    put_cstr(out, statement);
    out.put_slice(rest);
    Some(())
}

/// Writes a Describe or Close of a statement under another name.
pub fn put_target(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    put_header(out, tag, 1 + name.len() + 1);
    out.put_u8(kind);
    put_cstr(out, name);
}

/// (kind, name) of a Describe or Close message.
pub fn parse_target(frame: &Frame) -> Option<(u8, &str)> {
    let mut r = BodyReader::new(frame.body());
    let kind = r.u8().ok()?;
    let name = r.cstr().ok()?;
    (r.remaining() == 0 && (kind == b'S' || kind == b'P')).then_some((kind, name))
}

/// The statement name a Bind refers to.
pub fn bind_statement(frame: &Frame) -> Option<&str> {
    bind_statement_name(frame.body())
}

/// The statement name in a Bind's body.
pub fn bind_statement_name(body: &[u8]) -> Option<&str> {
    let mut r = BodyReader::new(body);
    r.cstr_bytes().ok()?;
    r.cstr().ok()
}

#[cfg(test)]
#[path = "extended_tests.rs"]
mod tests;
