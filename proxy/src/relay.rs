//! The relay loop between a client and the server it holds.
//!
//! One task drives both directions with a single poll function: pending output is written
//! before more input is read, and a direction stops reading while its output backlog is above
//! [`HIGH_WATER`]. Neither side can block the other's progress, so a client that pipelines
//! large batches cannot deadlock against a server streaming large results.
//!
//! Frames are checked (type, length bound) and copied whole into the outgoing buffer, which
//! is written with as few syscalls as the socket allows.

use crate::conn::Framed;
use crate::protocol::frame::{next_frame, put_message};
use crate::server::ServerConn;
use bytes::{Buf, BytesMut};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Output backlog above which a direction stops reading its input.
const HIGH_WATER: usize = 1 << 20;
/// How long a session's server gets to finish what a departed client left running.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum RelayEnd {
    ClientGone,
    ServerGone,
    /// Proxy shutdown: the client should get 57P01.
    Shutdown,
    ClientProtocol(String),
}

enum Event {
    Client,
    Server,
    ClientEof,
    ServerEof,
    Drain,
    Terminate,
}

/// Shutdown signals: `drain` ends the session at its next idle point, `terminate` at once.
#[derive(Clone)]
pub struct Shutdown {
    pub drain: CancellationToken,
    pub terminate: CancellationToken,
}

pub struct Relay<'a> {
    client: &'a mut Framed,
    server: &'a mut ServerConn,
    to_server: BytesMut,
    to_client: BytesMut,
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    terminate: Pin<Box<WaitForCancellationFutureOwned>>,
    draining: bool,
    /// Query, Sync and FunctionCall messages sent that have no ReadyForQuery yet.
    pending: usize,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// The server is in COPY FROM STDIN (or COPY BOTH) and expects CopyData from the client.
    copy_in: bool,
    server_ok: bool,
}

impl<'a> Relay<'a> {
    pub fn new(client: &'a mut Framed, server: &'a mut ServerConn, shutdown: Shutdown) -> Self {
        Relay {
            client,
            server,
            to_server: BytesMut::with_capacity(8192),
            to_client: BytesMut::with_capacity(8192),
            drain: Box::pin(shutdown.drain.cancelled_owned()),
            terminate: Box::pin(shutdown.terminate.cancelled_owned()),
            draining: false,
            pending: 0,
            unsynced: false,
            copy_in: false,
            server_ok: true,
        }
    }

    fn idle(&self) -> bool {
        self.pending == 0
            && !self.unsynced
            && !self.copy_in
            && self.server.tx_status == b'I'
            && self.to_server.is_empty()
            && self.client.rbuf.is_empty()
    }

    pub async fn run(&mut self) -> RelayEnd {
        loop {
            let event = match self.next_event().await {
                Ok(e) => e,
                Err(Side::Client(e)) => {
                    tracing::debug!(error = %e, "client i/o error");
                    return RelayEnd::ClientGone;
                }
                Err(Side::Server(e)) => {
                    tracing::info!(error = %e, "server i/o error");
                    self.server_ok = false;
                    self.flush_client().await;
                    return RelayEnd::ServerGone;
                }
            };
            match event {
                Event::Client => match self.client_frames() {
                    Ok(true) => {}
                    Ok(false) => return RelayEnd::ClientGone,
                    Err(e) => {
                        self.flush_client().await;
                        return RelayEnd::ClientProtocol(e);
                    }
                },
                Event::Server => {
                    if let Err(e) = self.server_frames() {
                        tracing::warn!(error = %e, "invalid message from server");
                        self.server_ok = false;
                        self.flush_client().await;
                        return RelayEnd::ServerGone;
                    }
                }
                Event::ClientEof => return RelayEnd::ClientGone,
                Event::ServerEof => {
                    self.server_ok = false;
                    self.flush_client().await;
                    return RelayEnd::ServerGone;
                }
                Event::Drain => self.draining = true,
                Event::Terminate => {
                    self.flush_client().await;
                    return RelayEnd::Shutdown;
                }
            }
            if self.draining && self.idle() {
                self.flush_client().await;
                return RelayEnd::Shutdown;
            }
        }
    }

    async fn next_event(&mut self) -> Result<Event, Side> {
        let draining = self.draining;
        let Relay {
            client,
            server,
            to_server,
            to_client,
            drain,
            terminate,
            ..
        } = self;
        let sstream = &mut server.conn.stream;
        let sbuf = &mut server.conn.rbuf;
        poll_fn(|cx| loop {
            if terminate.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Event::Terminate));
            }
            if !draining && drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Event::Drain));
            }
            let mut progressed = false;
            if !to_server.is_empty() {
                match Pin::new(&mut *sstream).poll_write(cx, to_server) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Side::Server(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => {
                        to_server.advance(n);
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Server(e))),
                    Poll::Pending => {}
                }
            }
            if !to_client.is_empty() {
                match Pin::new(&mut client.stream).poll_write(cx, to_client) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Side::Client(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => {
                        to_client.advance(n);
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Client(e))),
                    Poll::Pending => {}
                }
            }
            if to_server.len() < HIGH_WATER {
                reserve(&mut client.rbuf);
                match poll_read_buf(Pin::new(&mut client.stream), cx, &mut client.rbuf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::ClientEof)),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Event::Client)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Client(e))),
                    Poll::Pending => {}
                }
            }
            if to_client.len() < HIGH_WATER {
                reserve(sbuf);
                match poll_read_buf(Pin::new(&mut *sstream), cx, sbuf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::ServerEof)),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Event::Server)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Server(e))),
                    Poll::Pending => {}
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        })
        .await
    }

    /// Moves complete client frames to the server. Returns Ok(false) on Terminate.
    fn client_frames(&mut self) -> Result<bool, String> {
        let max = self.client.max_message;
        while let Some(frame) = next_frame(&mut self.client.rbuf, max).map_err(|e| e.to_string())? {
            match frame.tag {
                b'X' => return Ok(false),
                b'Q' | b'F' => self.pending += 1,
                b'S' => {
                    self.pending += 1;
                    self.unsynced = false;
                }
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
                b'c' | b'f' => self.copy_in = false,
                _ => {}
            }
            self.to_server.extend_from_slice(&frame.raw);
        }
        Ok(true)
    }

    /// Moves complete server frames to the client, tracking transaction and COPY state.
    fn server_frames(&mut self) -> Result<(), String> {
        let max = self.server.conn.max_message;
        while let Some(frame) =
            next_frame(&mut self.server.conn.rbuf, max).map_err(|e| e.to_string())?
        {
            match frame.tag {
                b'Z' => {
                    self.pending = self.pending.saturating_sub(1);
                    self.server.tx_status = frame.body().first().copied().unwrap_or(b'I');
                    self.copy_in = false;
                }
                b'G' | b'W' => self.copy_in = true,
                b'S' => self.server.record_parameter_status(frame.body()),
                _ => {}
            }
            self.to_client.extend_from_slice(&frame.raw);
        }
        Ok(())
    }

    /// Best effort: deliver what the client is owed before it is told goodbye.
    async fn flush_client(&mut self) {
        use tokio::io::AsyncWriteExt;
        let fut = self.client.stream.write_all(&self.to_client);
        let _ = tokio::time::timeout(Duration::from_secs(1), fut).await;
        self.to_client.clear();
    }

    /// After the client is gone: finish or abort what it left running so that the server is
    /// at ReadyForQuery with nothing outstanding. Returns whether the server can be reused.
    pub async fn settle(&mut self) -> bool {
        if !self.server_ok {
            return false;
        }
        self.client.rbuf.clear();
        if self.copy_in {
            put_message(
                &mut self.to_server,
                b'f',
                b"client disconnected during COPY\0",
            );
            self.copy_in = false;
        }
        if self.unsynced {
            put_message(&mut self.to_server, b'S', b"");
            self.pending += 1;
            self.unsynced = false;
        }
        if self.pending == 0 && self.to_server.is_empty() {
            return true;
        }
        matches!(
            tokio::time::timeout(SETTLE_TIMEOUT, self.drain_server()).await,
            Ok(Ok(()))
        )
    }

    async fn drain_server(&mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let stream = &mut self.server.conn.stream;
        stream.write_all(&self.to_server).await?;
        self.to_server.clear();
        while self.pending > 0 {
            let frame = self
                .server
                .conn
                .read_frame()
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            match frame.tag {
                b'Z' => {
                    self.pending -= 1;
                    self.server.tx_status = frame.body().first().copied().unwrap_or(b'I');
                }
                b'G' | b'W' => {
                    // A COPY FROM STDIN started by a statement the client queued: abort it.
                    let mut out = BytesMut::new();
                    put_message(&mut out, b'f', b"client disconnected during COPY\0");
                    self.server.conn.stream.write_all(&out).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

enum Side {
    Client(io::Error),
    Server(io::Error),
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}
