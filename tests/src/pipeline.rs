//! Extended-protocol messages built by hand for [`crate::wire::RawConn`], and a compact textual
//! summary of the replies, so a test can send exactly the batch it means (named statements,
//! Describe/Close, several Syncs, text or binary parameters, FunctionCall) and compare what the
//! proxy answers with what PostgreSQL itself answers.

use crate::wire::{BackendMessage, RawConn};
use anyhow::{anyhow, Result};
use bytes::{Buf, BufMut, BytesMut};
use std::time::Duration;

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(body.len() + 5);
    b.push(tag);
    b.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    b.extend_from_slice(body);
    b
}

fn cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

/// Parse: statement `name` (empty = unnamed), `sql`, declared parameter type OIDs (0 = infer).
pub fn parse(name: &str, sql: &str, param_types: &[u32]) -> Vec<u8> {
    let mut b = BytesMut::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.put_i16(param_types.len() as i16);
    for t in param_types {
        b.put_u32(*t);
    }
    message(b'P', &b)
}

/// Bind: `portal` to `statement`; `formats` as sent (empty = all text, one = for all, else per
/// parameter); `params` raw values (None = NULL); results in text.
pub fn bind(portal: &str, statement: &str, formats: &[i16], params: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = BytesMut::new();
    cstr(&mut b, portal);
    cstr(&mut b, statement);
    b.put_i16(formats.len() as i16);
    for f in formats {
        b.put_i16(*f);
    }
    b.put_i16(params.len() as i16);
    for p in params {
        match p {
            Some(v) => {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
            None => b.put_i32(-1),
        }
    }
    b.put_i16(0);
    message(b'B', &b)
}

/// Describe a statement (`b'S'`) or portal (`b'P'`).
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(kind);
    cstr(&mut b, name);
    message(b'D', &b)
}

/// Close a statement (`b'S'`) or portal (`b'P'`).
pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(kind);
    cstr(&mut b, name);
    message(b'C', &b)
}

/// Execute `portal`, `max_rows` = 0 for all.
pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = BytesMut::new();
    cstr(&mut b, portal);
    b.put_i32(max_rows);
    message(b'E', &b)
}

pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    message(b'H', &[])
}

/// Simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    cstr(&mut b, sql);
    message(b'Q', &b)
}

/// FunctionCall of function `oid` with text-format arguments, text result.
pub fn function_call(oid: u32, args: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(oid);
    b.put_i16(0);
    b.put_i16(args.len() as i16);
    for a in args {
        match a {
            Some(v) => {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
            None => b.put_i32(-1),
        }
    }
    b.put_i16(0);
    message(b'F', &b)
}

/// Parse + Bind (text parameters) + Execute of the unnamed statement, then Sync.
pub fn simple_extended(sql: &str, params: &[Option<&str>]) -> Vec<u8> {
    let values: Vec<Option<&[u8]>> = params.iter().map(|p| p.map(str::as_bytes)).collect();
    [
        parse("", sql, &[]),
        bind("", "", &[], &values),
        execute("", 0),
        sync(),
    ]
    .concat()
}

/// Reads messages until `readies` ReadyForQuery messages have arrived (the last one included).
/// Fails on EOF or after `secs` seconds.
pub async fn read_until_ready(
    conn: &mut RawConn,
    readies: usize,
    secs: u64,
) -> Result<Vec<BackendMessage>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < readies {
        let msg = match tokio::time::timeout_at(deadline, conn.read_message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Err(anyhow!("connection closed after {:?}", summarize(&out))),
            Ok(Err(e)) => return Err(e.context(format!("after {:?}", summarize(&out)))),
            Err(_) => {
                return Err(anyhow!(
                    "fewer than {readies} ReadyForQuery within {secs}s; received {:?}",
                    summarize(&out)
                ))
            }
        };
        if msg.tag == b'Z' {
            seen += 1;
        }
        out.push(msg);
    }
    Ok(out)
}

/// Sends `batch` and reads the replies up to `readies` ReadyForQuery messages.
pub async fn round_trip(
    conn: &mut RawConn,
    batch: &[u8],
    readies: usize,
) -> Result<Vec<BackendMessage>> {
    conn.send(batch).await?;
    read_until_ready(conn, readies, 20).await
}

/// One line per message, comparable between servers: `ParseComplete`, `Row[1,x]`,
/// `Error 42P05`, `Ready I`, `Fields[a:23,b:25]`, `Params[23]`, `Complete SELECT 1`, …
/// (ParameterStatus and NoticeResponse are left out: they differ by server and session).
pub fn summarize(messages: &[BackendMessage]) -> Vec<String> {
    messages.iter().filter_map(summarize_one).collect()
}

fn summarize_one(m: &BackendMessage) -> Option<String> {
    let mut body = m.body.clone();
    Some(match m.tag {
        b'1' => "ParseComplete".into(),
        b'2' => "BindComplete".into(),
        b'3' => "CloseComplete".into(),
        b'n' => "NoData".into(),
        b's' => "PortalSuspended".into(),
        b'I' => "EmptyQuery".into(),
        b'Z' => format!("Ready {}", body.first().map(|&b| b as char).unwrap_or('?')),
        b'C' => format!(
            "Complete {}",
            String::from_utf8_lossy(&body[..body.len().saturating_sub(1)])
        ),
        b'E' => format!(
            "Error {}",
            m.fields().get(&b'C').cloned().unwrap_or_default()
        ),
        b't' => {
            let n = body.get_i16();
            let oids: Vec<String> = (0..n).map(|_| body.get_u32().to_string()).collect();
            format!("Params[{}]", oids.join(","))
        }
        b'T' => {
            let n = body.get_i16();
            let mut fields = Vec::new();
            for _ in 0..n {
                let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                let name = String::from_utf8_lossy(&body[..end]).into_owned();
                body.advance(end + 1);
                let _table = body.get_u32();
                let _column = body.get_i16();
                let oid = body.get_u32();
                body.advance(2 + 4 + 2);
                fields.push(format!("{name}:{oid}"));
            }
            format!("Fields[{}]", fields.join(","))
        }
        b'D' => {
            let n = body.get_i16();
            let mut cols = Vec::new();
            for _ in 0..n {
                let len = body.get_i32();
                if len < 0 {
                    cols.push("NULL".to_string());
                } else {
                    cols.push(String::from_utf8_lossy(&body[..len as usize]).into_owned());
                    body.advance(len as usize);
                }
            }
            format!("Row[{}]", cols.join(","))
        }
        b'V' => {
            let len = body.get_i32();
            if len < 0 {
                "FunctionResult NULL".into()
            } else {
                format!(
                    "FunctionResult {}",
                    String::from_utf8_lossy(&body[..len as usize])
                )
            }
        }
        b'G' => "CopyIn".into(),
        b'H' => "CopyOut".into(),
        b'd' => "CopyData".into(),
        b'c' => "CopyDone".into(),
        b'A' => "Notification".into(),
        b'S' | b'N' | b'K' => return None,
        other => format!("Message {}", other as char),
    })
}

/// The first ErrorResponse among `messages`: (SQLSTATE, message, detail).
pub fn first_error(messages: &[BackendMessage]) -> Option<(String, String, String)> {
    messages.iter().find(|m| m.tag == b'E').map(|m| {
        let f = m.fields();
        let get = |c: u8| f.get(&c).cloned().unwrap_or_default();
        (get(b'C'), get(b'M'), get(b'D'))
    })
}
