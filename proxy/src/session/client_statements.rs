//! What the proxy knows of a client's prepared statements (see the parent module).

use crate::protocol::frame::BodyReader;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::Statement;

/// What the proxy knows of one client statement.
#[derive(Clone, Default)]
pub struct ClientStatement {
    /// The server-side statement (transaction mode; None in session mode).
    pub global: Option<Arc<Statement>>,
    /// The policy decision for its text (None when the policy does not apply).
    pub decision: Option<Arc<tenantgate_policy::Decision>>,
    /// Parameter type OIDs: from the Parse, completed by the server's ParameterDescription.
    pub param_types: Vec<u32>,
    /// The statement text, kept while the policy applies so the decision can be re-made
    /// when the tenant or its placement changes.
    pub sql: Option<Arc<str>>,
    /// What running it may leave on the server's session (transaction mode: read back or
    /// dropped when the server is released).
    pub lasting: crate::session::sqlscan::Lasting,
    /// Which Parse recorded it (set by [`ClientStatements::insert`]): the error of an earlier
    /// Parse of the name, pipelined before this one, must not drop it.
    pub record: u64,
    /// Session mode: its Parse has not been answered yet, and it was sent in the client's
    /// segment number `segment` (counted by Syncs, Queries and FunctionCalls).
    pub pending: bool,
    pub segment: u64,
    /// Session mode: a later Parse of the same name, sent while this one was unanswered. It
    /// takes this one's place if this Parse fails; if this one succeeds, the server refuses
    /// it (42P05).
    pub successor: Option<Box<ClientStatement>>,
}

/// A statement a client's Close took away (see [`ClientStatements::take_for_close`]).
#[derive(Clone)]
pub struct Closed {
    name: String,
    stmt: ClientStatement,
    /// The unnamed statement's Parse, to replay.
    parse: Option<Bytes>,
}

impl Closed {
    /// The record of the Parse that made the closed statement.
    pub fn record(&self) -> u64 {
        self.stmt.record
    }
}

/// Parses of one name that may wait, unanswered, behind each other (session mode).
pub(super) const MAX_SUCCESSORS: usize = 8;

/// A client's named statements, and its last unnamed Parse.
#[derive(Default)]
pub struct ClientStatements {
    named: HashMap<String, ClientStatement>,
    /// The last record number given out.
    records: u64,
    pub unnamed: ClientStatement,
    /// The last Parse of the unnamed statement, to replay on another server.
    pub unnamed_parse: Option<Bytes>,
    /// The unnamed statement each recent Parse of it replaced (by the Parse's record; None:
    /// there was none), to put back if the server skips that Parse after an error. Bounded:
    /// beyond [`MAX_REPLACED`] unanswered Parses, a skipped one leaves no unnamed statement.
    replaced_unnamed: VecDeque<(u64, Option<Closed>)>,
}

/// See [`ClientStatements::replaced_unnamed`].
const MAX_REPLACED: usize = 64;

impl ClientStatements {
    pub fn get(&self, name: &str) -> Option<&ClientStatement> {
        if name.is_empty() {
            Some(&self.unnamed)
        } else {
            self.named.get(name)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.named.contains_key(name)
    }

    /// Records the statement a Parse of `name` makes; returns its record number.
    pub fn insert(&mut self, name: &str, mut stmt: ClientStatement) -> u64 {
        self.records += 1;
        stmt.record = self.records;
        if name.is_empty() {
            let previous = self.take_for_close("");
            if self.replaced_unnamed.len() >= MAX_REPLACED {
                self.replaced_unnamed.pop_front();
            }
            self.replaced_unnamed.push_back((self.records, previous));
            self.unnamed = stmt;
        } else {
            self.named.insert(name.to_string(), stmt);
        }
        self.records
    }

    pub fn remove(&mut self, name: &str) -> Option<ClientStatement> {
        self.named.remove(name)
    }

    /// Forgets `name` for a Close, keeping what [`ClientStatements::restore`] needs to put it
    /// back should the server skip the Close.
    pub fn take_for_close(&mut self, name: &str) -> Option<Closed> {
        if name.is_empty() {
            let parse = self.unnamed_parse.take()?;
            let stmt = std::mem::take(&mut self.unnamed);
            return Some(Closed {
                name: String::new(),
                stmt,
                parse: Some(parse),
            });
        }
        let stmt = self.named.remove(name)?;
        Some(Closed {
            name: name.to_string(),
            stmt,
            parse: None,
        })
    }

    /// The server skipped the unnamed Parses `skipped` (recorded in that order) after an error:
    /// unless a later Parse replaced it since, the unnamed statement is again the one the
    /// first of them replaced.
    /// (`first` None: the unnamed statement had been dropped before them.)
    pub(super) fn unskip_unnamed(&mut self, first: Option<u64>, skipped: &[u64]) {
        let current = self.unnamed.record;
        if current != 0 && !skipped.contains(&current) {
            return;
        }
        let previous = self
            .replaced_unnamed
            .iter()
            .find(|(record, _)| Some(*record) == first)
            .and_then(|(_, previous)| previous.clone());
        match previous {
            Some(closed) => self.restore(closed),
            None => self.forget_unnamed(),
        }
    }

    /// A Close was skipped: the statement is the client's again. A Parse of the name behind the
    /// Close, in the same skipped segment, was skipped too; this replaces what it recorded.
    pub(super) fn restore(&mut self, closed: Closed) {
        if closed.name.is_empty() {
            self.unnamed = closed.stmt;
            self.unnamed_parse = closed.parse;
        } else {
            self.named.insert(closed.name, closed.stmt);
        }
    }

    /// Every statement, the unnamed one included.
    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut ClientStatement> {
        self.named
            .values_mut()
            .chain(std::iter::once(&mut self.unnamed))
    }

    pub fn clear(&mut self) {
        self.named.clear();
        self.unnamed = ClientStatement::default();
        self.unnamed_parse = None;
    }

    /// A simple Query drops the unnamed statement; returns the record number of the drop,
    /// which [`ClientStatements::unskip_unnamed`] undoes like a skipped Parse's.
    pub fn drop_unnamed(&mut self) -> u64 {
        self.insert("", ClientStatement::default())
    }

    /// The unnamed statement is gone (closed, or its Parse failed).
    pub fn forget_unnamed(&mut self) {
        self.unnamed = ClientStatement::default();
        self.unnamed_parse = None;
    }

    /// Session mode: a Parse of `name` while the name's statement is still unanswered is
    /// queued behind it (see [`ClientStatement::successor`]); returns its record number.
    /// None when the name's statement is answered (the server refuses the Parse: 42P05), or
    /// too many wait already (the Parse is then not tracked: a later Bind gets 26000).
    pub fn queue_successor(&mut self, name: &str, mut stmt: ClientStatement) -> Option<u64> {
        let mut last = self.named.get_mut(name).filter(|s| s.pending)?;
        for _ in 0..MAX_SUCCESSORS {
            match last.successor {
                Some(ref mut next) => last = next,
                None => {
                    self.records += 1;
                    stmt.record = self.records;
                    last.successor = Some(Box::new(stmt));
                    return Some(self.records);
                }
            }
        }
        None
    }

    /// The Parse that recorded `name` as `record` succeeded: Parses queued behind it fail.
    /// Nothing the client sent awaits a reply: no Parse can be skipped any more, so the
    /// statements unnamed Parses replaced need not be kept (they may hold buffers).
    pub fn settled(&mut self) {
        if !self.replaced_unnamed.is_empty() {
            self.replaced_unnamed.clear();
            self.replaced_unnamed.shrink_to_fit();
        }
    }

    pub(super) fn confirm(&mut self, name: &str, record: u64) {
        let stmt = if name.is_empty() {
            Some(&mut self.unnamed)
        } else {
            self.named.get_mut(name)
        };
        if let Some(s) = stmt.filter(|s| s.record == record) {
            s.pending = false;
            s.successor = None;
        }
        if name.is_empty() {
            // Answered: neither it nor an unnamed Parse before it can be skipped now.
            self.replaced_unnamed.retain(|(r, _)| *r > record);
        }
    }

    /// The Parse that recorded `name` as `record` failed: if that is still the name's
    /// statement, the next Parse queued behind it takes its place, or the name is forgotten.
    pub(super) fn forget_if(&mut self, name: &str, record: u64) {
        if self.get(name).is_none_or(|s| s.record != record) {
            return;
        }
        if name.is_empty() {
            self.forget_unnamed();
        } else if let Some(s) = self.named.get_mut(name) {
            match s.successor.take() {
                Some(next) => *s = *next,
                None => {
                    self.named.remove(name);
                }
            }
        }
    }

    /// Records a ParameterDescription body for a statement whose Parse left types open.
    pub(super) fn set_param_types(&mut self, name: &str, body: &[u8]) {
        let mut r = BodyReader::new(body);
        let Ok(n) = r.i16() else { return };
        let types: Option<Vec<u32>> = (0..n.max(0)).map(|_| r.u32().ok()).collect();
        let (Some(types), Some(stmt)) = (
            types,
            if name.is_empty() {
                Some(&mut self.unnamed)
            } else {
                self.named.get_mut(name)
            },
        ) else {
            return;
        };
        for (i, t) in types.into_iter().enumerate() {
            match stmt.param_types.get_mut(i) {
                Some(slot) if *slot == 0 => *slot = t,
                Some(_) => {}
                None => stmt.param_types.push(t),
            }
        }
    }
}
