//! How the client's session settings reach the server it is given (transaction mode), when the
//! checkout changes the server's tenant: with the client's first request, not a round trip
//! ahead of it. Two forms:
//!
//! - **inline**: `SELECT set_config(…)` as Parse/Bind/Execute of the unnamed statement, no
//!   Sync, then the client's first segment — all one implicit transaction. If the statement
//!   fails, the server skips the client's messages up to their Sync. The setting lasts only if
//!   that transaction commits; an error or a ROLLBACK in it undoes the setting, which the
//!   session sees (an ErrorResponse, a `ROLLBACK` command tag) and then takes the server's
//!   tenant as unknown, so the next checkout sets it again. Used when only the tenant changes
//!   (nothing the server reports back, nothing to reset), no timeout of the last client is
//!   left on the server, and the segment has no transaction control (a ROLLBACK in it would
//!   undo the setting for the statements after it).
//! - **ahead**: the settings statement as a Query, committed on its own, then a check in the
//!   client's implicit transaction that fails unless the tenant took effect.
//!
//! In both, client messages after the segment's Sync wait in the proxy until the outcome is
//! known (the server runs what follows a Sync whatever happened before it), and a failed
//! settings statement ends the session and closes the server. Otherwise the settings are
//! applied first and waited for.

use super::extended::Expect;
use super::{settings, sqlscan, Progress, Session};
use crate::protocol::frame::{self, put_message, Frame, Peek};
use crate::protocol::{sqlstate, BodyReader, PgError};
use crate::server::{ServerConn, ServerMessage};
use bytes::BytesMut;
use postgres_protocol::message::frontend;

/// How the settings of one checkout go out.
pub(super) enum Plan {
    /// Applied first, waited for.
    Wait,
    Inline,
    /// `guard`: run the settings statement immune to the timeouts the server still has.
    Ahead {
        check: String,
        guard: bool,
    },
}

/// Where the proxy's settings statement stands after one of its replies.
pub(super) enum Reply {
    /// More replies of it follow.
    Pending,
    /// Its last reply: the next ones answer the client.
    Done,
    /// It failed (`Progress::setup_failed` says why): the session must end.
    Failed,
}

impl Session {
    /// Chooses how the settings `have` → `self.desired` go to `conn`; `first` is the client
    /// message that needs the server (already taken from the read buffer).
    pub(super) fn setup_plan(&self, conn: &ServerConn, first: &Frame) -> Plan {
        let have = &conn.session_settings;
        let config = self.app.config();
        let setting = &config.tenancy.setting;
        let Some(tenant) = self
            .desired
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(setting))
            .map(|(_, v)| v)
        else {
            return Plan::Wait;
        };
        let changes_tenant = !have
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(setting) && v == tenant);
        if !changes_tenant || tenant.is_empty() {
            return Plan::Wait;
        }
        let Some(needs_ahead) = self.plain_segment(first) else {
            return Plan::Wait;
        };
        let only_tenant = self.desired.iter().all(|(k, v)| {
            k.eq_ignore_ascii_case(setting) || have.iter().any(|(h, hv)| h == k && hv == v)
        });
        if only_tenant
            && !needs_ahead
            && !settings::diff_resets(have, &self.desired)
            && !settings::limits_statements(have)
        {
            return Plan::Inline;
        }
        Plan::Ahead {
            check: settings::check_setting_sql(setting, tenant),
            guard: settings::limits_statements(have),
        }
    }

    /// Queues the settings statement `sql` (see [`Plan`]) ahead of the client's first segment.
    pub(super) fn queue_setup(&mut self, plan: Plan, sql: &str) {
        match plan {
            Plan::Wait => return,
            Plan::Inline => {
                put_unnamed_execute(&mut self.to_server, sql);
                self.expected.push(Expect::SetupInline);
            }
            Plan::Ahead { check, guard } => {
                let sql = if guard {
                    settings::guarded(sql)
                } else {
                    sql.to_string()
                };
                let _ = frontend::query(&sql, &mut self.to_server);
                self.progress.pending += 1;
                self.expected.push(Expect::Setup);
                put_unnamed_execute(&mut self.to_server, &check);
                self.expected.push(Expect::Check);
            }
        }
        self.progress.unsynced = true;
        self.progress.setup_unconfirmed = true;
    }

    /// Is the client's first segment complete — a simple Query, or `first` and the read buffer
    /// up to the first Sync made of Parse, Bind, Describe, Execute, Close and Flush only — with
    /// every statement it runs, parses or binds a plain query (see
    /// [`sqlscan::plain_statements`])? Some(true) when it needs the `ahead` form: one of its
    /// statements is transaction control, or it runs more than one statement (so that a
    /// statement the scan misread can never undo an inline setting for another one).
    ///
    /// A Query after the settings statement: should that fail, the server skips the Query too
    /// (it waits for a Sync that never comes, and the proxy ends the session).
    fn plain_segment(&self, first: &Frame) -> Option<bool> {
        if first.tag == b'Q' {
            let sql = BodyReader::new(first.body()).cstr().ok()?;
            let several = sql
                .trim_end_matches(|c: char| c == ';' || c.is_ascii_whitespace())
                .contains(';');
            return Some(sqlscan::plain_statements(sql)? || several);
        }
        let mut executes = 0;
        let mut unnamed_parsed = false;
        let mut controls = false;
        for (tag, body) in self.segment(first) {
            if tag == b'Q' {
                return None;
            }
            controls |= self.message_controls(tag, body, unnamed_parsed)?;
            match tag {
                b'S' => return Some(controls || executes > 1),
                // The Parse's name is its body's first string: empty if it starts with NUL.
                b'P' => unnamed_parsed |= body.first() == Some(&0),
                b'E' => executes += 1,
                _ => {}
            }
        }
        None
    }

    /// Of one message of a segment: does it run, parse or bind transaction control
    /// (Some(true)), only plain queries (Some(false), see [`sqlscan::plain_statements`]), or
    /// cannot the scan tell (None)? `unnamed_parsed`: a Parse of the unnamed statement came
    /// earlier in the segment, which a Bind of it then runs.
    pub(super) fn message_controls(
        &self,
        tag: u8,
        body: &[u8],
        unnamed_parsed: bool,
    ) -> Option<bool> {
        let mut r = BodyReader::new(body);
        match tag {
            b'Q' => sqlscan::plain_statements(r.cstr().ok()?),
            b'P' => {
                let (Ok(_name), Ok(query)) = (r.cstr(), r.cstr()) else {
                    return None;
                };
                sqlscan::plain_statements(query)
            }
            b'B' => {
                let (Ok(_portal), Ok(name)) = (r.cstr_bytes(), r.cstr()) else {
                    return None;
                };
                if name.is_empty() && unnamed_parsed {
                    Some(false)
                } else {
                    self.bound_plain_statement(name)
                }
            }
            b'D' | b'E' | b'C' | b'H' | b'S' => Some(false),
            _ => None,
        }
    }

    /// `first` (taken from the read buffer) and the complete client messages behind it there,
    /// as (tag, body), up to and including the first Sync or Query, at most 64 of them: a
    /// longer segment is not looked at in full.
    pub(super) fn segment<'a>(&'a self, first: &'a Frame) -> impl Iterator<Item = (u8, &'a [u8])> {
        const MAX_FRAMES: usize = 64;
        let buf = &self.client.rbuf[..];
        let max = self.client.max_message;
        let mut at = 0;
        let mut next = Some((first.tag, first.body()));
        std::iter::from_fn(move || {
            let item = next.take()?;
            if !matches!(item.0, b'S' | b'Q') {
                if let Ok(Peek::Complete { tag, len }) = frame::peek(&buf[at..], max) {
                    next = Some((tag, &buf[at + 5..at + len]));
                    at += len;
                }
            }
            Some(item)
        })
        .take(MAX_FRAMES)
    }

    /// [`sqlscan::plain_statements`] of the statement a Bind names (prepared before this
    /// segment).
    pub(super) fn bound_plain_statement(&self, name: &str) -> Option<bool> {
        let parse = if name.is_empty() {
            self.statements.unnamed_parse.clone()
        } else {
            self.statements
                .get(name)
                .and_then(|s| s.global.as_ref())
                .map(|g| g.parse.clone())
        }?;
        let mut r = BodyReader::new(parse.get(5..).unwrap_or_default());
        let (Ok(_), Ok(query)) = (r.cstr_bytes(), r.cstr()) else {
            return None;
        };
        sqlscan::plain_statements(query)
    }
}

/// Parse, Bind and Execute of `sql` as the unnamed statement and portal (no Sync).
fn put_unnamed_execute(out: &mut BytesMut, sql: &str) {
    let mut body = BytesMut::with_capacity(sql.len() + 4);
    body.extend_from_slice(b"\0");
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(b"\0\0\0");
    put_message(out, b'P', &body);
    put_message(out, b'B', b"\0\0\0\0\0\0\0\0");
    put_message(out, b'E', b"\0\0\0\0\0");
}

fn failed(msg: &str) -> PgError {
    PgError::fatal(
        sqlstate::CONNECTION_FAILURE,
        format!("tenantgate: could not apply session settings: {msg}"),
    )
}

/// One reply to the settings statement of the `ahead` form, a Query none of whose replies
/// reach the client. At its ReadyForQuery the outcome is known: on success the held client
/// messages may go on; on failure the session must end (the server skipped the client's
/// request, since the check failed).
pub(super) fn ahead_reply(progress: &mut Progress, conn: &mut ServerConn, frame: &Frame) -> Reply {
    match own_query_reply(progress, conn, frame) {
        None => Reply::Pending,
        Some(Some(msg)) => {
            progress.setup_failed = Some(failed(&msg));
            Reply::Failed
        }
        Some(None) => {
            progress.setup_unconfirmed = false;
            progress.gate_closed = false;
            Reply::Done
        }
    }
}

/// One reply to the proxy's `DISCARD SEQUENCES` ahead of a client segment (see
/// `Session::discard_foreign_sequences`), a Query none of whose replies reach the client. At
/// its CommandComplete the server holds no sequence value any more. Should it fail (a cancel
/// of the client's landed on it), the client's request must not run: the session ends as when
/// its settings cannot be applied; unless the client's transaction is aborted and the segment
/// cannot end it (`tolerant`): then its `currval` fails too (25P02), and the server, still
/// marked, is reset before a later segment.
pub(super) fn reset_reply(
    progress: &mut Progress,
    conn: &mut ServerConn,
    frame: &Frame,
    tolerant: bool,
) -> Reply {
    match frame.tag {
        b'E' if tolerant
            && ServerMessage::parse(frame.body()).code == sqlstate::IN_FAILED_SQL_TRANSACTION =>
        {
            return Reply::Pending;
        }
        b'C' => conn.sequences_drawn = false,
        _ => {}
    }
    match own_query_reply(progress, conn, frame) {
        None => Reply::Pending,
        Some(Some(msg)) => {
            progress.setup_failed = Some(PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("tenantgate: could not reset the server's sequence values: {msg}"),
            ));
            Reply::Failed
        }
        Some(None) => Reply::Done,
    }
}

/// One reply to a Query of the proxy's own: its error is kept until its ReadyForQuery, which
/// returns Some(the error, if any).
fn own_query_reply(
    progress: &mut Progress,
    conn: &mut ServerConn,
    frame: &Frame,
) -> Option<Option<String>> {
    match frame.tag {
        b'E' => progress.setup_error = Some(ServerMessage::parse(frame.body()).message),
        b'S' => conn.record_parameter_status(frame.body()),
        b'Z' => {
            progress.pending = progress.pending.saturating_sub(1);
            conn.tx_status = frame.body().first().copied().unwrap_or(b'I');
            return Some(progress.setup_error.take());
        }
        _ => {}
    }
    None
}

/// One reply to the settings statement of the `inline` form (none reach the client). On an
/// error the server now skips the client's messages up to their Sync, and the session must
/// end. At its CommandComplete the setting is in place for the rest of the implicit
/// transaction, which [`watch_reply`] follows from then on.
pub(super) fn inline_reply(progress: &mut Progress, conn: &mut ServerConn, frame: &Frame) -> Reply {
    match frame.tag {
        b'E' => {
            progress.setup_failed = Some(failed(&ServerMessage::parse(frame.body()).message));
            return Reply::Failed;
        }
        b'S' => conn.record_parameter_status(frame.body()),
        b'C' => {
            progress.setup_watch = true;
            return Reply::Done;
        }
        _ => {}
    }
    Reply::Pending
}

/// A reply to the client's first segment after an `inline` settings statement: an error or a
/// ROLLBACK undoes the setting with the transaction. At the segment's ReadyForQuery the
/// outcome is known; an undone tenant is marked unknown on the server, so that it is set again
/// before anything else runs there. Returns true when the session must end.
pub(super) fn watch_reply(
    progress: &mut Progress,
    conn: &mut ServerConn,
    frame: &Frame,
    setting: &str,
) -> bool {
    match frame.tag {
        b'E' => progress.setup_undone = true,
        b'C' if frame.body().starts_with(b"ROLLBACK") => progress.setup_undone = true,
        b'Z' => {
            progress.setup_watch = false;
            progress.setup_unconfirmed = false;
            progress.gate_closed = false;
            if frame.body().first() != Some(&b'I') {
                // Cannot happen (the segment has no transaction control); if it did, the
                // setting's fate would hang on a transaction the proxy does not follow.
                progress.setup_failed = Some(failed("unexpected transaction state"));
                return true;
            }
            if std::mem::take(&mut progress.setup_undone) {
                mark_unknown(&mut conn.session_settings, setting);
            }
        }
        _ => {}
    }
    false
}

/// An error from the check of the `ahead` form (only a cancel, or objects a client created to
/// shadow the check, make it fail): the server now skips the client's request up to a Sync,
/// which a simple Query never sends, so the session ends here.
pub(super) fn check_failed(progress: &mut Progress, frame: &Frame) {
    progress.setup_failed = Some(failed(&ServerMessage::parse(frame.body()).message));
}

/// Takes the server's value of `setting` as unknown (see [`settings::UNKNOWN_VALUE`]).
fn mark_unknown(have: &mut Vec<(String, String)>, setting: &str) {
    have.retain(|(k, _)| !k.eq_ignore_ascii_case(setting));
    have.push((setting.to_string(), settings::UNKNOWN_VALUE.to_string()));
    have.sort();
}

/// Is the server's tenant unknown (an inline setting was undone)?
pub(super) fn tenant_unknown(conn: &ServerConn) -> bool {
    conn.session_settings
        .iter()
        .any(|(_, v)| v == settings::UNKNOWN_VALUE)
}
