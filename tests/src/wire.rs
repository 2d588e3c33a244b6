//! A byte-level PostgreSQL client for tests that must send what real drivers never would
//! (malformed frames, odd protocol versions, GSSENCRequest) or see what drivers hide
//! (ParameterStatus, BackendKeyData).

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PROTOCOL_3_0: i32 = 3 << 16;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// One backend message: type byte and body (without the length).
#[derive(Debug, Clone)]
pub struct BackendMessage {
    pub tag: u8,
    pub body: Bytes,
}

impl BackendMessage {
    /// Fields of an ErrorResponse/NoticeResponse by their code (`b'C'` SQLSTATE, `b'M'` message).
    pub fn fields(&self) -> HashMap<u8, String> {
        parse_fields(&self.body)
    }
}

pub fn parse_fields(body: &[u8]) -> HashMap<u8, String> {
    let mut out = HashMap::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        out.insert(code, String::from_utf8_lossy(&tail[..end]).into_owned());
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out
}

/// What the server sent during startup.
#[derive(Debug, Default)]
pub struct StartupInfo {
    pub parameters: HashMap<String, String>,
    pub backend_key: Option<(i32, i32)>,
}

/// What a peer did with input it should refuse.
#[derive(Debug)]
pub enum Refusal {
    /// An ErrorResponse (fields), possibly followed by a close.
    Error(HashMap<u8, String>),
    /// The connection was closed (EOF or reset) without an ErrorResponse.
    Closed,
}

pub struct RawConn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Result<RawConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            stream,
            buf: BytesMut::with_capacity(8192),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads one byte (the answer to SSLRequest/GSSENCRequest); `None` on EOF.
    pub async fn read_byte(&mut self) -> Result<Option<u8>> {
        if self.buf.is_empty() && self.fill().await? == 0 {
            return Ok(None);
        }
        Ok(Some(self.buf.get_u8()))
    }

    /// Reads one backend message; `None` on a clean EOF between messages.
    pub async fn read_message(&mut self) -> Result<Option<BackendMessage>> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                if !(4..=64 << 20).contains(&len) {
                    bail!("backend sent a message with length {len}");
                }
                let total = 1 + len as usize;
                if self.buf.len() >= total {
                    let mut msg = self.buf.split_to(total);
                    let tag = msg.get_u8();
                    msg.advance(4);
                    return Ok(Some(BackendMessage {
                        tag,
                        body: msg.freeze(),
                    }));
                }
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("EOF inside a backend message");
            }
        }
    }

    async fn fill(&mut self) -> Result<usize> {
        self.buf.reserve(8192);
        Ok(self.stream.read_buf(&mut self.buf).await?)
    }

    /// After sending something the peer must refuse: waits up to `secs` for an ErrorResponse or a
    /// close. Other messages before the error are skipped. Fails on a hang.
    pub async fn expect_refusal(&mut self, secs: u64) -> Result<Refusal> {
        let wait = async {
            loop {
                match self.read_message().await {
                    Ok(Some(m)) if m.tag == b'E' => return Ok(Refusal::Error(m.fields())),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(Refusal::Closed),
                    Err(e) => {
                        // A reset (peer closed with our data unread) or a torn message is a close.
                        if e.downcast_ref::<std::io::Error>().is_some()
                            || e.to_string().contains("EOF")
                        {
                            return Ok(Refusal::Closed);
                        }
                        return Err(e);
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(secs), wait)
            .await
            .map_err(|_| anyhow!("no ErrorResponse and no close within {secs}s"))?
    }

    /// Waits up to `secs` for the peer to close the connection (anything read is discarded).
    pub async fn expect_close(&mut self, secs: u64) -> Result<()> {
        let wait = async {
            let mut scratch = [0u8; 8192];
            loop {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(secs), wait)
            .await
            .map_err(|_| anyhow!("connection still open after {secs}s"))
    }

    /// Sends an SSLRequest or GSSENCRequest (`code`) and returns the one-byte answer
    /// (`Some(b'N')` when the proxy declines and the connection continues in plaintext).
    pub async fn encryption_request(&mut self, code: i32) -> Result<Option<u8>> {
        self.send(&startup_packet(code, &[])).await?;
        self.read_byte().await
    }

    /// Sends a v3.0 StartupMessage and authenticates (trust, cleartext, md5 or SCRAM-SHA-256)
    /// up to ReadyForQuery. An ErrorResponse becomes an error with its SQLSTATE and message.
    pub async fn startup(
        &mut self,
        user: &str,
        database: &str,
        password: Option<&str>,
    ) -> Result<StartupInfo> {
        let mut buf = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user),
                ("database", database),
                ("client_encoding", "UTF8"),
            ],
            &mut buf,
        )?;
        self.send(&buf).await?;
        self.authenticate(user, password).await
    }

    /// The part of [`RawConn::startup`] after the StartupMessage was sent.
    pub async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&str>,
    ) -> Result<StartupInfo> {
        let mut info = StartupInfo::default();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = self
                .read_message()
                .await?
                .ok_or_else(|| anyhow!("connection closed during startup"))?;
            let mut body = msg.body.clone();
            match msg.tag {
                b'R' => {
                    let code = body.get_i32();
                    let mut out = BytesMut::new();
                    let password =
                        || password.ok_or_else(|| anyhow!("server asked for a password"));
                    match code {
                        0 => {}
                        3 => frontend::password_message(password()?.as_bytes(), &mut out)?,
                        5 => {
                            let salt: [u8; 4] = body[..4].try_into()?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password()?.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut out)?;
                        }
                        10 => {
                            let mechanisms = String::from_utf8_lossy(&body);
                            if !mechanisms.split('\0').any(|m| m == "SCRAM-SHA-256") {
                                bail!("server offers no SCRAM-SHA-256: {mechanisms:?}");
                            }
                            let s = ScramSha256::new(
                                password()?.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut out,
                            )?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().context("SASLContinue without SASL")?;
                            s.update(&body)?;
                            frontend::sasl_response(s.message(), &mut out)?;
                        }
                        12 => {
                            let s = scram.as_mut().context("SASLFinal without SASL")?;
                            s.finish(&body)?;
                        }
                        other => bail!("unsupported authentication request {other}"),
                    }
                    if !out.is_empty() {
                        self.send(&out).await?;
                    }
                }
                b'S' => {
                    let mut parts = body.split(|&b| b == 0);
                    let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    let value = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    info.parameters
                        .insert(name.into_owned(), value.into_owned());
                }
                b'K' => info.backend_key = Some((body.get_i32(), body.get_i32())),
                b'Z' => return Ok(info),
                b'E' => {
                    let f = msg.fields();
                    bail!(
                        "startup failed: {} {}",
                        f.get(&b'C').map(String::as_str).unwrap_or("?"),
                        f.get(&b'M').map(String::as_str).unwrap_or("?")
                    );
                }
                b'N' | b'v' => {}
                other => bail!("unexpected message {:?} during startup", other as char),
            }
        }
    }

    /// Sends a simple Query and collects messages up to ReadyForQuery.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<BackendMessage>> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)?;
        self.send(&buf).await?;
        let mut out = Vec::new();
        loop {
            let msg = self
                .read_message()
                .await?
                .ok_or_else(|| anyhow!("connection closed during query"))?;
            let done = msg.tag == b'Z';
            out.push(msg);
            if done {
                return Ok(out);
            }
        }
    }
}

/// A startup-phase packet: i32 length (including itself), i32 code, payload.
pub fn startup_packet(code: i32, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i32(8 + payload.len() as i32);
    b.put_i32(code);
    b.put_slice(payload);
    b.to_vec()
}

/// StartupMessage payload from key/value pairs (NUL-terminated pairs, final NUL).
pub fn startup_params(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in pairs {
        b.extend_from_slice(k.as_bytes());
        b.push(0);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    b
}

/// A regular message with an arbitrary declared length (may lie about the body).
pub fn message_with_len(tag: u8, declared_len: i32, body: &[u8]) -> Vec<u8> {
    let mut b = vec![tag];
    b.extend_from_slice(&declared_len.to_be_bytes());
    b.extend_from_slice(body);
    b
}

/// Text of the first column of each DataRow in `messages`.
pub fn data_rows(messages: &[BackendMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| {
            let mut body = m.body.clone();
            let _ncols = body.get_i16();
            let len = body.get_i32();
            (len >= 0).then(|| String::from_utf8_lossy(&body[..len as usize]).into_owned())
        })
        .collect()
}
