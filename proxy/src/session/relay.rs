//! The relay loop.
//!
//! One task drives both directions with a single poll function: pending output is written
//! before more input is read, and a direction stops reading while its output backlog is above
//! [`HIGH_WATER`]. Neither side can block the other's progress, so a client that pipelines
//! large batches cannot deadlock against a server streaming large results.

use super::extended::{ClientStatements, Expect, Expected};
use super::{setup, Progress, Session};
use crate::app::App;
use crate::protocol::frame::put_message;
use crate::protocol::sqlstate;
use crate::protocol::PgError;
use crate::server::{send_cancel, ServerConn, ServerTarget};
use bytes::{Buf, BytesMut};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Output backlog above which a direction stops reading its input.
const HIGH_WATER: usize = 1 << 20;
/// How long a server gets to finish what a departed client left running.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

pub enum RelayEnd {
    ClientGone,
    /// Tell the client why, then close.
    Fatal(PgError),
}

enum Event {
    Client,
    Server,
    ClientEof,
    ServerEof,
    Drain,
    Terminate,
    IdleInTransaction,
}

enum Side {
    Client(io::Error),
    Server(io::Error),
}

/// Shutdown signals: `drain` ends a session at its next idle point, `terminate` at once.
///
/// `signalled` is set before either token is cancelled: sessions poll the tokens' futures
/// only when it is set or their waker changed (each poll of a cancellation future takes
/// locks, and the relay polls several times per transaction).
#[derive(Clone, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    terminate: CancellationToken,
    signalled: Arc<AtomicBool>,
}

impl Shutdown {
    /// Sessions end at their next idle point.
    pub fn start_drain(&self) {
        self.signalled.store(true, Ordering::Release);
        self.drain.cancel();
    }

    /// Sessions end now.
    pub fn terminate(&self) {
        self.signalled.store(true, Ordering::Release);
        self.terminate.cancel();
    }

    /// Completes once a drain started.
    pub async fn drained(&self) {
        self.drain.cancelled().await
    }
}

/// Everything the loop waits for besides the two sockets.
pub struct Waits {
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    terminate: Pin<Box<WaitForCancellationFutureOwned>>,
    signalled: Arc<AtomicBool>,
    /// The waker `drain` and `terminate` were last polled with.
    registered: Option<Waker>,
    draining: bool,
    idle_tx_timeout: Option<Duration>,
    idle_tx: Option<Pin<Box<Sleep>>>,
}

impl Waits {
    pub fn new(shutdown: Shutdown, app: &App, database: &str) -> Self {
        Waits {
            drain: Box::pin(shutdown.drain.cancelled_owned()),
            terminate: Box::pin(shutdown.terminate.cancelled_owned()),
            signalled: shutdown.signalled,
            registered: None,
            draining: false,
            idle_tx_timeout: app
                .config()
                .database(database)
                .and_then(|d| d.idle_transaction_timeout()),
            idle_tx: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Option<Event> {
        // The futures keep the last waker they were polled with and wake it on cancellation,
        // which always comes after `signalled` is set: until then, with the same waker,
        // polling them again can only return Pending.
        let registered = self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if !registered || self.signalled.load(Ordering::Acquire) {
            if self.terminate.as_mut().poll(cx).is_ready() {
                return Some(Event::Terminate);
            }
            if !self.draining && self.drain.as_mut().poll(cx).is_ready() {
                return Some(Event::Drain);
            }
            self.registered = Some(cx.waker().clone());
        }
        if let Some(t) = self.idle_tx.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                return Some(Event::IdleInTransaction);
            }
        }
        None
    }
}

fn poll_write_some(
    stream: &mut crate::io::Stream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    match Pin::new(stream).poll_write(cx, buf) {
        Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        Poll::Ready(Ok(n)) => {
            buf.advance(n);
            Poll::Ready(Ok(()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// [`poll_write_some`] towards the client, counting the bytes written.
fn poll_write_client(
    stream: &mut crate::io::Stream,
    buf: &mut BytesMut,
    metrics: &crate::metrics::SessionMetrics,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let before = buf.len();
    let polled = poll_write_some(stream, buf, cx);
    if polled.is_ready() {
        metrics.bytes_sent(before - buf.len());
    }
    polled
}

/// Room for the next read: 1 KiB while idle (most messages fit, and 10,000 idle clients
/// should not each hold a large buffer), more while a large message or a burst is arriving.
fn reserve(buf: &mut BytesMut) {
    let free = buf.capacity() - buf.len();
    if buf.is_empty() {
        if free < 512 {
            buf.reserve(1024);
        }
    } else if free < 4096 {
        buf.reserve(buf.len().clamp(8 * 1024, 64 * 1024));
    }
}

/// Drops a large output buffer once it has been written, so one big result does not stay
/// allocated for the rest of an idle session; `idle` (no server attached) drops any.
fn shrink_if_drained(buf: &mut BytesMut, idle: bool) {
    if buf.is_empty() && (buf.capacity() > 64 * 1024 || idle && buf.capacity() > 0) {
        *buf = BytesMut::new();
    }
}

/// Reads client input into `buf`. While `buf` is empty (an idle client) the read goes
/// through a stack buffer, so that an idle session holds no read buffer at all.
fn poll_read_client(
    stream: &mut crate::io::Stream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if !buf.is_empty() {
        reserve(buf);
        return poll_read_buf(Pin::new(stream), cx, buf);
    }
    // Uninitialised: zeroing 2 KiB per read showed up in instruction counts.
    let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    let mut read = ReadBuf::uninit(&mut chunk);
    match Pin::new(stream).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Completes when the client has gone (EOF or an error) while its session waits for something
/// else: a server. What the client sends meanwhile goes to the read buffer for the relay, up to
/// [`HIGH_WATER`]; beyond that it is not read, and so not watched, until the wait ends.
/// (At login there are no session metrics yet: `metrics` is None.)
pub(super) async fn client_gone(
    client: &mut crate::conn::Framed,
    metrics: Option<&crate::metrics::SessionMetrics>,
) {
    poll_fn(|cx| loop {
        if client.rbuf.len() >= HIGH_WATER {
            return Poll::Pending;
        }
        match poll_read_client(&mut client.stream, &mut client.rbuf, cx) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(n)) => {
                if let Some(m) = metrics {
                    m.bytes_received(n);
                }
            }
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

fn fatal(code: &'static str, msg: &str) -> RelayEnd {
    RelayEnd::Fatal(PgError::fatal(code, msg))
}

impl Session {
    /// Relays until the client leaves, the server fails, or the proxy shuts down.
    pub(super) async fn relay(&mut self) -> RelayEnd {
        // What the client sent before its session started (pipelined behind the startup or
        // password message, and read with it or while the login waited for a server) is
        // already in the buffer: handled first, it would otherwise wait for the client's next
        // bytes, which a client waiting for the answer never sends.
        let mut buffered = !self.client.rbuf.is_empty();
        self.drop_read_buffer();
        loop {
            let next = if std::mem::take(&mut buffered) {
                Ok(Event::Client)
            } else {
                self.next_event().await
            };
            let event = match next {
                Ok(e) => e,
                Err(Side::Client(e)) => {
                    tracing::debug!(error = %e, "client i/o error");
                    return RelayEnd::ClientGone;
                }
                Err(Side::Server(e)) => {
                    tracing::info!(error = %e, "server i/o error");
                    return Box::pin(self.server_lost()).await;
                }
            };
            match event {
                Event::Client => {
                    self.waits.idle_tx = None;
                    if let Some(end) = self.client_frames().await {
                        self.flush_client().await;
                        return end;
                    }
                    if self.releasable() {
                        // Nothing the client sent awaits a reply (the release check otherwise
                        // runs when one comes): the server must not stay with an idle client.
                        self.release().await;
                    }
                    self.drop_read_buffer();
                }
                Event::Server => {
                    let gated = self.progress.gate();
                    if let Err(e) = self.server_frames() {
                        tracing::warn!(error = %e, "invalid message from server");
                        return Box::pin(self.server_lost()).await;
                    }
                    if let Some(err) = self.progress.setup_failed.take() {
                        tracing::warn!(error = %err.message, "could not apply session settings; closing server");
                        self.drop_server();
                        self.flush_client().await;
                        return RelayEnd::Fatal(err);
                    }
                    // Messages held until the settings' outcome was known go on now, after
                    // a release: an undone tenant is then set again at the next checkout.
                    // Or the server started a COPY from the client: it waits for CopyData
                    // behind the held Bind (which then fails the COPY, running nothing).
                    if self.progress.holding
                        && (self.progress.pending == 0 || self.progress.copy_in)
                    {
                        self.progress.holding = false;
                    }
                    let resume = gated && !self.progress.gate();
                    if self.releasable() {
                        // The reply first (one non-blocking write, nearly always complete),
                        // then the server to the next client: its task runs once this one
                        // parks, with nothing left to do here.
                        self.try_write_client().await;
                        self.release().await;
                    }
                    if resume {
                        if self
                            .server
                            .as_ref()
                            .is_some_and(|s| setup::tenant_unknown(&s.conn))
                        {
                            // Not released (it always is at this point): the server's tenant is
                            // unknown, so it must not serve the held messages.
                            self.drop_server();
                        }
                        if let Some(end) = self.client_frames().await {
                            self.flush_client().await;
                            return end;
                        }
                    }
                }
                Event::ClientEof => return RelayEnd::ClientGone,
                Event::ServerEof => return Box::pin(self.server_lost()).await,
                Event::Drain => self.waits.draining = true,
                Event::Terminate => {
                    self.flush_client().await;
                    return fatal(
                        sqlstate::ADMIN_SHUTDOWN,
                        "tenantgate: terminating connection due to administrator command",
                    );
                }
                Event::IdleInTransaction if self.to_server.len() >= HIGH_WATER => {
                    // The client's batch is waiting for the server, so its socket is not read:
                    // not idle. The timer starts again.
                    self.waits.idle_tx = None;
                }
                Event::IdleInTransaction => {
                    self.flush_client().await;
                    return fatal(
                        sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                        "tenantgate: terminating connection due to idle-in-transaction timeout",
                    );
                }
            }
            self.arm_idle_timer();
            if self.waits.draining && self.at_rest() {
                self.flush_client().await;
                return fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "tenantgate: terminating connection due to administrator command",
                );
            }
        }
    }

    /// Frees the client read buffer once every message in it is handled (the next read
    /// starts on the stack, see `poll_read_client`).
    fn drop_read_buffer(&mut self) {
        if self.client.rbuf.is_empty() && self.client.rbuf.capacity() > 0 {
            self.client.rbuf = BytesMut::new();
        }
    }

    /// No transaction or request in flight: the session can end without losing anything.
    fn at_rest(&self) -> bool {
        self.client.rbuf.is_empty()
            && match &self.server {
                None => self.to_server.is_empty(),
                Some(_) => self.server_at_rest(),
            }
    }

    fn arm_idle_timer(&mut self) {
        let Some(timeout) = self.waits.idle_tx_timeout else {
            return;
        };
        // Inside a transaction block with nothing sent or owed, or (transaction mode) holding
        // the server with extended-protocol messages and no Sync: an implicit transaction that
        // only the client can end, whatever the server is doing meanwhile, unless the client
        // is waiting for the replies to a Flush (its last message or not).
        let p = &self.progress;
        let unsynced = self.tx_mode && p.unsynced && !p.copy_in && !self.expected.flush_owed();
        let waiting_for_client = p.pending == 0
            && self
                .server
                .as_ref()
                .is_some_and(|s| s.conn.tx_status != b'I' && self.to_server.is_empty() || unsynced);
        if !waiting_for_client {
            self.waits.idle_tx = None;
        } else if self.waits.idle_tx.is_none() {
            self.waits.idle_tx = Some(Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        }
    }

    /// Closes the attached server without returning it to the pool.
    fn drop_server(&mut self) {
        if let Some(attached) = self.server.take() {
            self.cancel.slot.set(None);
            // Its place in the pool is given up as it is dropped.
            drop(attached);
        }
    }

    async fn server_lost(&mut self) -> RelayEnd {
        self.drop_server();
        self.flush_client().await;
        fatal(
            sqlstate::CONNECTION_FAILURE,
            "tenantgate: server closed the connection unexpectedly",
        )
    }

    async fn next_event(&mut self) -> Result<Event, Side> {
        let Session {
            client,
            server,
            to_server,
            to_client,
            waits,
            metrics,
            progress,
            ..
        } = self;
        // Messages wait behind the closed gate: read no more until it opens.
        let read_client = !progress.gate();
        let mut server = server.as_mut().map(|s| &mut s.conn.conn);
        poll_fn(|cx| {
            // Once per wake-up: the shutdown and timer futures keep this task's waker.
            if let Some(e) = waits.poll(cx) {
                return Poll::Ready(Ok(e));
            }
            loop {
                let mut progressed = false;
                if let Some(s) = server.as_mut() {
                    if !to_server.is_empty() {
                        match poll_write_some(&mut s.stream, to_server, cx) {
                            Poll::Ready(Ok(())) => {
                                shrink_if_drained(to_server, false);
                                progressed = true
                            }
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Server(e))),
                            Poll::Pending => {}
                        }
                    }
                }
                if !to_client.is_empty() {
                    match poll_write_client(&mut client.stream, to_client, metrics, cx) {
                        Poll::Ready(Ok(())) => {
                            shrink_if_drained(to_client, server.is_none());
                            progressed = true
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Client(e))),
                        Poll::Pending => {}
                    }
                }
                if read_client && to_server.len() < HIGH_WATER {
                    match poll_read_client(&mut client.stream, &mut client.rbuf, cx) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::ClientEof)),
                        Poll::Ready(Ok(n)) => {
                            metrics.bytes_received(n);
                            return Poll::Ready(Ok(Event::Client));
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Client(e))),
                        Poll::Pending => {}
                    }
                }
                if let Some(s) = server.as_mut() {
                    if to_client.len() < HIGH_WATER {
                        reserve(&mut s.rbuf);
                        match poll_read_buf(Pin::new(&mut s.stream), cx, &mut s.rbuf) {
                            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::ServerEof)),
                            Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Event::Server)),
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Server(e))),
                            Poll::Pending => {}
                        }
                    }
                }
                if !progressed {
                    return Poll::Pending;
                }
            }
        })
        .await
    }

    /// Writes what the socket takes now, without waiting.
    async fn try_write_client(&mut self) {
        let Session {
            client,
            to_client,
            metrics,
            ..
        } = self;
        poll_fn(|cx| {
            if !to_client.is_empty() {
                // An error shows again at the relay's next write.
                let _ = poll_write_client(&mut client.stream, to_client, metrics, cx);
            }
            Poll::Ready(())
        })
        .await
    }

    /// Best effort: deliver what the client is owed before it is told goodbye.
    pub(super) async fn flush_client(&mut self) {
        use tokio::io::AsyncWriteExt;
        let fut = self.client.stream.write_all(&self.to_client);
        let _ = tokio::time::timeout(Duration::from_secs(1), fut).await;
        self.to_client.clear();
    }
}

/// What the server's replies to the client's messages will be, and the client's statements:
/// the settle reads an error's consequences from them as the session does.
type Outstanding<'a> = (&'a mut Expected, &'a mut ClientStatements);

/// After the client is gone: finish or abort what it left running, so that the server is at
/// ReadyForQuery with nothing outstanding. Returns whether the server can be reused.
///
/// A request the server may still be running is cancelled on the server's own backend: left to
/// run, it would keep the server for nobody, and once the server is closed at the timeout the
/// backend would still run it (Postgres notices a closed socket only when it writes), so that
/// `pool_size` would no longer bound the backends. A COPY FROM STDIN needs no cancel: the
/// CopyFail ends it.
pub(super) async fn settle(
    conn: &mut ServerConn,
    target: &ServerTarget,
    p: &mut Progress,
    to_server: &mut BytesMut,
    outstanding: Outstanding<'_>,
) -> bool {
    let running = !p.copy_in && (p.pending > 0 || p.unsynced);
    if p.copy_in {
        abort_copy(to_server, p, p.copy_extended, outstanding.0);
    }
    if p.unsynced {
        // What ran since the last Sync is in an implicit transaction that the Sync would
        // commit: a client that vanished without one gets it rolled back, as Postgres does
        // when its client disconnects. A failing Bind aborts it first.
        put_message(to_server, b'B', super::frames::FAILING_BIND);
        outstanding.0.push(Expect::Bind);
        put_message(to_server, b'S', b"");
        outstanding.0.push(Expect::Ready);
        p.pending += 1;
        p.unsynced = false;
    }
    if p.pending == 0 && to_server.is_empty() {
        return true;
    }
    let (pid, secret) = (conn.backend_pid, conn.backend_secret);
    let settled = async {
        use tokio::io::AsyncWriteExt;
        // What the client sent is on the server before the cancel can arrive.
        conn.conn.stream.write_all(to_server).await?;
        to_server.clear();
        let drain = drain_server(conn, p, outstanding);
        if !running {
            return drain.await;
        }
        // At once: a query blocked writing its rows sees the cancel only once they are read.
        // Both must be done before the server is reused, lest the cancel land on what follows.
        let (cancelled, drained) = tokio::join!(send_cancel(target, pid, secret), drain);
        cancelled.map_err(io::Error::other)?;
        drained
    };
    match tokio::time::timeout(SETTLE_TIMEOUT, settled).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(server = conn.id, error = %e, "cannot settle the server; closing it");
            false
        }
        Err(_) => {
            tracing::debug!(
                server = conn.id,
                "server still busy after the client left; closing it"
            );
            false
        }
    }
}

/// CopyFail for a COPY FROM STDIN the client left. After one started by an extended-protocol
/// Execute the server skips to a Sync (those sent during the COPY were ignored): send one.
fn abort_copy(out: &mut BytesMut, p: &mut Progress, extended: bool, expected: &mut Expected) {
    put_message(out, b'f', b"client disconnected during COPY\0");
    p.copy_in = false;
    p.copy_extended = false;
    if extended {
        put_message(out, b'S', b"");
        expected.push(Expect::Ready);
        p.pending += 1;
    }
}

/// Reads the server's replies until nothing is outstanding.
async fn drain_server(
    conn: &mut ServerConn,
    p: &mut Progress,
    (expected, statements): Outstanding<'_>,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut ignored = BytesMut::new();
    while p.pending > 0 {
        let frame = conn
            .conn
            .read_frame()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        // An error makes the server skip to the next Sync, Queries included, which then
        // produce no ReadyForQuery.
        expected.route(&frame, &mut ignored, &mut conn.statements, statements);
        ignored.clear();
        if frame.tag == b'E' {
            p.pending = p.pending.saturating_sub(expected.take_skipped_queries());
        }
        match frame.tag {
            b'Z' => {
                p.pending -= 1;
                conn.tx_status = frame.body().first().copied().unwrap_or(b'I');
            }
            b'G' | b'W' => {
                // A COPY FROM STDIN the client queued before leaving: abort it.
                let ignored = expected.copy_in_started();
                if ignored.extended {
                    p.pending = p.pending.saturating_sub(ignored.syncs);
                }
                let mut out = BytesMut::new();
                abort_copy(&mut out, p, ignored.extended, expected);
                conn.conn.stream.write_all(&out).await?;
            }
            _ => {}
        }
    }
    Ok(())
}
