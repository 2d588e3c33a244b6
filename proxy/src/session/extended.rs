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
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

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
    /// `client_name` the client's name to forget if it fails.
    Parse {
        visible: bool,
        global: Option<String>,
        client_name: Option<String>,
    },
    Bind,
    Describe,
    Execute,
    Close {
        visible: bool,
    },
    /// Sync, Query or FunctionCall: answered up to and including ReadyForQuery.
    Ready,
    /// A reply the proxy writes itself when it reaches the head of the queue.
    Synthetic(u8),
}

/// Outcome of processing one server message.
pub enum Route {
    Forward,
    Drop,
}

#[derive(Default)]
pub struct Expected {
    queue: VecDeque<Expect>,
}

impl Expected {
    pub fn push(&mut self, e: Expect) {
        self.queue.push_back(e);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Writes synthetic replies that have reached the head of the queue.
    pub fn flush_synthetic(&mut self, to_client: &mut BytesMut) {
        while let Some(Expect::Synthetic(tag)) = self.queue.front() {
            put_header(to_client, *tag, 0);
            self.queue.pop_front();
        }
    }

    /// Routes one server message, updating which statements the server holds. Synthetic
    /// replies that precede it are written first.
    pub fn route(
        &mut self,
        tag: u8,
        to_client: &mut BytesMut,
        server_stmts: &mut ServerStatements,
        client: &mut ClientStatements,
    ) -> Route {
        self.flush_synthetic(to_client);
        match tag {
            // Asynchronous messages can arrive at any point.
            b'N' | b'A' | b'S' => return Route::Forward,
            b'E' => {
                if matches!(self.queue.front(), Some(Expect::Ready) | None) {
                    // Part of a simple Query's (or FunctionCall's) reply.
                    return Route::Forward;
                }
                // An extended-protocol error: the server skips everything until Sync.
                while let Some(front) = self.queue.front() {
                    match front {
                        Expect::Ready => break,
                        Expect::Parse {
                            global,
                            client_name,
                            ..
                        } => {
                            if let Some(g) = global {
                                server_stmts.forget(g);
                            }
                            if let Some(name) = client_name {
                                client.forget_if(name, global.as_deref());
                            }
                        }
                        _ => {}
                    }
                    self.queue.pop_front();
                }
                return Route::Forward;
            }
            _ => {}
        }
        let Some(front) = self.queue.front() else {
            return Route::Forward;
        };
        let (done, visible) = match (front, tag) {
            (Expect::Parse { visible, .. }, b'1') => (true, *visible),
            (Expect::Bind, b'2') => (true, true),
            (Expect::Close { visible }, b'3') => (true, *visible),
            (Expect::Describe, b't') => (false, true),
            (Expect::Describe, b'T' | b'n') => (true, true),
            (Expect::Execute, b'C' | b'I' | b's') => (true, true),
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
}

/// The global statements a server has prepared, least recently used first out.
pub(crate) struct ServerStatements {
    lru: lru::LruCache<String, ()>,
}

impl ServerStatements {
    pub fn new(capacity: usize) -> Self {
        let cap =
            std::num::NonZeroUsize::new(capacity.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        ServerStatements {
            lru: lru::LruCache::new(cap),
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

    pub fn clear(&mut self) {
        self.lru.clear();
    }
}

/// A client's named statements, and its last unnamed Parse.
#[derive(Default)]
pub struct ClientStatements {
    named: HashMap<String, Arc<Statement>>,
    pub unnamed: Option<Bytes>,
}

impl ClientStatements {
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.named.get(name)
    }

    pub fn insert(&mut self, name: &str, stmt: Arc<Statement>) {
        self.named.insert(name.to_string(), stmt);
    }

    pub fn remove(&mut self, name: &str) -> Option<Arc<Statement>> {
        self.named.remove(name)
    }

    fn forget_if(&mut self, name: &str, global: Option<&str>) {
        if self.named.get(name).map(|s| s.global.as_str()) == global {
            self.named.remove(name);
        }
    }
}

/// The fields of a Parse message.
pub struct ParseMsg<'a> {
    pub name: &'a str,
    pub query: &'a str,
    /// Parameter type count and OIDs exactly as sent.
    pub types: &'a [u8],
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
    let mut r = BodyReader::new(frame.body());
    r.cstr_bytes().ok()?;
    r.cstr().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(raw: Bytes) -> Frame {
        Frame { tag: raw[0], raw }
    }

    #[test]
    fn global_names_depend_on_text_and_types() {
        let a = global_statement("select $1", &[0, 1, 0, 0, 0, 23]);
        let b = global_statement("select $1", &[0, 1, 0, 0, 0, 25]);
        let c = global_statement("select $1", &[0, 1, 0, 0, 0, 23]);
        assert_ne!(a.global, b.global);
        assert_eq!(a.global, c.global);
        assert!(a.global.len() < 64);
        let p = frame(a.parse.clone());
        let m = parse_parse(&p).unwrap();
        assert_eq!(m.name, a.global);
        assert_eq!(m.query, "select $1");
    }

    #[test]
    fn bind_is_renamed_keeping_the_rest() {
        let mut raw = BytesMut::new();
        put_header(&mut raw, b'B', 2 + 3 + 4);
        raw.put_slice(b"p\0s1\0\0\0\0\0");
        let f = frame(raw.freeze());
        assert_eq!(bind_statement(&f), Some("s1"));
        let mut out = BytesMut::new();
        rename_bind(&f, "tg_x", &mut out).unwrap();
        let g = frame(out.freeze());
        assert_eq!(bind_statement(&g), Some("tg_x"));
        assert_eq!(&g.raw[g.raw.len() - 4..], b"\0\0\0\0");
    }

    #[test]
    fn synthetic_replies_keep_their_place() {
        let mut q = Expected::default();
        let mut out = BytesMut::new();
        let mut server = ServerStatements::new(4);
        let mut client = ClientStatements::default();
        q.push(Expect::Bind);
        q.push(Expect::Synthetic(b'1'));
        q.push(Expect::Ready);
        q.flush_synthetic(&mut out);
        assert!(out.is_empty(), "must wait for BindComplete");
        assert!(matches!(
            q.route(b'2', &mut out, &mut server, &mut client),
            Route::Forward
        ));
        out.clear();
        assert!(matches!(
            q.route(b'Z', &mut out, &mut server, &mut client),
            Route::Forward
        ));
        assert_eq!(&out[..], b"1\0\0\0\x04");
        assert!(q.is_empty());
    }

    #[test]
    fn error_skips_to_sync_and_forgets_failed_parses() {
        let mut q = Expected::default();
        let mut out = BytesMut::new();
        let mut server = ServerStatements::new(4);
        let mut client = ClientStatements::default();
        let st = Arc::new(global_statement("bad sql", &[0, 0]));
        client.insert("s1", st.clone());
        server.insert(&st.global);
        q.push(Expect::Parse {
            visible: true,
            global: Some(st.global.clone()),
            client_name: Some("s1".into()),
        });
        q.push(Expect::Synthetic(b'1'));
        q.push(Expect::Bind);
        q.push(Expect::Ready);
        assert!(matches!(
            q.route(b'E', &mut out, &mut server, &mut client),
            Route::Forward
        ));
        assert!(!server.contains(&st.global));
        assert!(client.get("s1").is_none());
        assert!(matches!(
            q.route(b'Z', &mut out, &mut server, &mut client),
            Route::Forward
        ));
        assert!(out.is_empty(), "skipped replies are not synthesized");
        assert!(q.is_empty());
    }

    #[test]
    fn lru_evicts_least_recent() {
        let mut s = ServerStatements::new(2);
        assert_eq!(s.insert("a"), None);
        assert_eq!(s.insert("b"), None);
        assert!(s.contains("a"));
        assert_eq!(s.insert("c"), Some("b".to_string()));
    }
}
