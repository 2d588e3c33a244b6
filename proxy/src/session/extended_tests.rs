//! Unit tests of the extended-protocol bookkeeping (`extended.rs`).

#![allow(clippy::unwrap_used)]
use super::*;
use std::sync::Arc;

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

fn msg(tag: u8) -> Frame {
    let mut raw = BytesMut::new();
    put_header(&mut raw, tag, 0);
    frame(raw.freeze())
}

#[test]
fn synthetic_replies_keep_their_place() {
    let mut q = Expected::default();
    let mut out = BytesMut::new();
    let mut server = ServerStatements::new(4);
    let mut client = ClientStatements::default();
    q.push(Expect::Bind);
    q.push(Expect::AnsweredParse {
        client_name: ("other".into(), 0),
    });
    q.push(Expect::Ready);
    q.flush_synthetic(&mut out, &mut client);
    assert!(out.is_empty(), "must wait for BindComplete");
    assert!(matches!(
        q.route(&msg(b'2'), &mut out, &mut server, &mut client),
        Route::Forward
    ));
    out.clear();
    assert!(matches!(
        q.route(&msg(b'Z'), &mut out, &mut server, &mut client),
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
    let record = client.insert(
        "s1",
        ClientStatement {
            global: Some(st.clone()),
            ..Default::default()
        },
    );
    server.insert(&st.global);
    q.push(Expect::Parse {
        visible: true,
        global: Some(st.global.clone()),
        client_name: Some(("s1".into(), record)),
    });
    q.push(Expect::AnsweredParse {
        client_name: ("other".into(), 0),
    });
    q.push(Expect::Bind);
    q.push(Expect::Ready);
    assert!(matches!(
        q.route(&msg(b'E'), &mut out, &mut server, &mut client),
        Route::Forward
    ));
    assert!(!server.contains(&st.global));
    assert!(!client.contains("s1"));
    assert!(matches!(
        q.route(&msg(b'Z'), &mut out, &mut server, &mut client),
        Route::Forward
    ));
    assert!(out.is_empty(), "skipped replies are not synthesized");
    assert!(q.is_empty());
}

#[test]
fn rejected_query_error_is_replaced() {
    let mut q = Expected::default();
    let mut out = BytesMut::new();
    let mut server = ServerStatements::new(4);
    let mut client = ClientStatements::default();
    let ours = msg(b'E').raw;
    q.push(Expect::Reject {
        error: ours.clone(),
        simple: true,
    });
    assert!(
        matches!(q.route(&msg(b'E'), &mut out, &mut server, &mut client), Route::Replace(e) if e == ours)
    );
    assert!(matches!(
        q.route(&msg(b'Z'), &mut out, &mut server, &mut client),
        Route::Forward
    ));
    assert!(q.is_empty());
}

#[test]
fn rewrite_replaces_rows_with_tag() {
    let mut q = Expected::default();
    let mut out = BytesMut::new();
    let mut server = ServerStatements::new(4);
    let mut client = ClientStatements::default();
    q.push(Expect::Rewrite {
        tag: msg(b'C').raw,
        failed: false,
    });
    assert!(matches!(
        q.route(&msg(b'T'), &mut out, &mut server, &mut client),
        Route::Drop
    ));
    assert!(matches!(
        q.route(&msg(b'D'), &mut out, &mut server, &mut client),
        Route::Drop
    ));
    assert!(matches!(
        q.route(&msg(b'C'), &mut out, &mut server, &mut client),
        Route::Drop
    ));
    assert!(matches!(
        q.route(&msg(b'Z'), &mut out, &mut server, &mut client),
        Route::Forward
    ));
    assert_eq!(out[0], b'C');
}

#[test]
fn syncs_during_extended_copy_in_are_dropped() {
    let mut q = Expected::default();
    q.push(Expect::Execute);
    q.push(Expect::Ready);
    q.push(Expect::CopyEnd);
    q.push(Expect::Ready);
    let ignored = q.copy_in_started();
    assert_eq!(
        ignored,
        CopyIgnored {
            extended: true,
            syncs: 1
        }
    );
    assert_eq!(q.queue, [Expect::Execute, Expect::CopyEnd, Expect::Ready]);
    let mut simple = Expected::default();
    simple.push(Expect::Ready);
    assert!(!simple.copy_in_started().extended);
}

#[test]
fn lru_evicts_least_recent() {
    let mut s = ServerStatements::new(2);
    assert_eq!(s.insert("a"), None);
    assert_eq!(s.insert("b"), None);
    assert!(s.contains("a"));
    assert_eq!(s.insert("c"), Some("b".to_string()));
}

#[test]
fn parses_queued_behind_an_unanswered_one_take_its_place_in_order() {
    let mut client = ClientStatements::default();
    let stmt = |sql: &str| ClientStatement {
        sql: Some(Arc::from(sql)),
        pending: true,
        ..Default::default()
    };
    let sql_of = |c: &ClientStatements| c.get("s").and_then(|s| s.sql.clone());
    let a = client.insert("s", stmt("a"));
    let b = client.queue_successor("s", stmt("b")).unwrap();
    let c = client.queue_successor("s", stmt("c")).unwrap();
    // a failed: b is what the server takes next; b failed too: c.
    client.forget_if("s", a);
    assert_eq!(sql_of(&client).as_deref(), Some("b"));
    client.forget_if("s", b);
    assert_eq!(sql_of(&client).as_deref(), Some("c"));
    // c succeeded: a Parse queued now would be refused by the server, so none is.
    client.confirm("s", c);
    assert!(client.queue_successor("s", stmt("d")).is_none());
    assert_eq!(sql_of(&client).as_deref(), Some("c"));

    // The first succeeds: those behind it fail (42P05) and change nothing.
    let mut client = ClientStatements::default();
    let a = client.insert("s", stmt("a"));
    let b = client.queue_successor("s", stmt("b")).unwrap();
    client.confirm("s", a);
    client.forget_if("s", b);
    assert_eq!(sql_of(&client).as_deref(), Some("a"));

    // Bounded: past MAX_SUCCESSORS a Parse is not tracked.
    let mut client = ClientStatements::default();
    client.insert("s", stmt("a"));
    for _ in 0..MAX_SUCCESSORS {
        assert!(client.queue_successor("s", stmt("x")).is_some());
    }
    assert!(client.queue_successor("s", stmt("y")).is_none());
}
