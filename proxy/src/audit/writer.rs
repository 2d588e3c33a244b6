//! The writer thread: takes records off the queue, chains and writes them, rotates, fsyncs,
//! and reports dropped records. File I/O happens only here, never on the async workers.

use super::files::{self, FileSink, Tail};
use super::record::{Record, ZERO_HASH};
use super::verify::parse_link;
use super::{Msg, Shared};
use std::io::{self, BufWriter, Stdout, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_config::AuditFsync;
use tokio::sync::{mpsc, oneshot};

/// How long the writer lets records gather after writing a batch: bounds its wake-ups to about
/// a thousand a second under load, and delays a record by at most about this much.
const GATHER: Duration = Duration::from_millis(1);

pub(super) struct Settings {
    /// 0 = never rotate.
    pub rotate_bytes: u64,
    pub rotate_keep: usize,
    pub fsync: AuditFsync,
}

enum Sink {
    Stdout(BufWriter<Stdout>),
    File(FileSink),
    /// The file could not be written or reopened; retried every tick.
    Broken,
}

/// The last record written.
struct Link {
    seq: u64,
    hash: String,
}

pub(super) struct Writer {
    /// None for standard output.
    path: Option<PathBuf>,
    sink: Sink,
    settings: Settings,
    /// None until the first record, when the tail of an existing file is read.
    chain: Option<Link>,
    unsynced: bool,
    last_sync: Instant,
    /// Records that could not be written since the sink broke.
    lost: u64,
    /// File size that triggers the next rotation (pushed back after a failed rotation).
    rotate_at: u64,
}

/// Starts the writer thread (with its own single-threaded runtime for the timers).
pub(super) fn spawn(
    writer: Writer,
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    hold: Option<oneshot::Receiver<()>>,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("tenantgate-audit".into())
        .spawn(move || {
            runtime.block_on(async move {
                if let Some(hold) = hold {
                    let _ = hold.await;
                }
                writer.serve(rx, shared).await;
            });
        })?;
    Ok(())
}

impl Writer {
    /// Opens the sink (`-` = standard output); the chain is resumed at the first record.
    pub fn open(path: &str, settings: Settings) -> io::Result<Writer> {
        let (path, sink) = if path == "-" {
            (None, Sink::Stdout(BufWriter::new(io::stdout())))
        } else {
            let path = PathBuf::from(path);
            let sink = Sink::File(FileSink::open(&path)?);
            (Some(path), sink)
        };
        Ok(Writer {
            rotate_at: settings.rotate_bytes,
            path,
            sink,
            settings,
            chain: None,
            unsynced: false,
            last_sync: Instant::now(),
            lost: 0,
        })
    }

    async fn serve(mut self, mut rx: mpsc::Receiver<Msg>, shared: Arc<Shared>) {
        let period = match self.settings.fsync {
            AuditFsync::Every(d) => d.clamp(Duration::from_millis(10), Duration::from_secs(1)),
            _ => Duration::from_secs(1),
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(first) = msg else {
                        // Every handle is gone.
                        self.finish(&shared);
                        return;
                    };
                    // Everything already queued goes out in one batch, then one flush.
                    let mut next = Some(first);
                    let mut batch = 0;
                    while let Some(msg) = next.take() {
                        if let ControlFlow::Break(done) = self.handle(msg, &shared) {
                            self.finish(&shared);
                            let _ = done.send(());
                            return;
                        }
                        batch += 1;
                        if batch < 4096 {
                            next = rx.try_recv().ok();
                        }
                    }
                    self.end_batch();
                    // Let the next records gather: while this task sleeps it is not waiting on
                    // the queue, so sessions queue records without waking this thread for
                    // each one (a cross-thread wake-up per statement otherwise).
                    tokio::time::sleep(GATHER).await;
                }
                _ = shared.reopen.notified() => self.reopen_if_requested(&shared),
                _ = tick.tick() => self.tick(&shared),
            }
        }
    }

    /// Writes one event; Break on shutdown, with the sender to answer.
    fn handle(&mut self, msg: Msg, shared: &Shared) -> ControlFlow<oneshot::Sender<()>> {
        self.reopen_if_requested(shared);
        let (at, event) = match msg {
            Msg::Shutdown(done) => return ControlFlow::Break(done),
            Msg::Event(at, event) => (at, event),
        };
        self.append(Record::from_event(at, &event));
        if let Sink::File(f) = &self.sink {
            if self.settings.rotate_bytes > 0 && f.size() >= self.rotate_at {
                self.rotate();
            }
        }
        ControlFlow::Continue(())
    }

    /// Chains `record` to the last one and writes it.
    fn append(&mut self, mut record: Record<'_>) {
        let chain = match self.chain.take() {
            Some(link) => link,
            None => self.resume(),
        };
        record.seq = chain.seq + 1;
        record.prev_hash = chain.hash.clone();
        let (line, hash) = match record.seal() {
            Ok(sealed) => sealed,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize an audit record");
                self.chain = Some(chain);
                return;
            }
        };
        self.chain = Some(Link {
            seq: record.seq,
            hash,
        });
        // A record that cannot be written still advances the chain, so that verify reports
        // the gap rather than the log hiding it.
        let written = match &mut self.sink {
            Sink::Stdout(out) => out.write_all(line.as_bytes()),
            Sink::File(f) => f.write(&line),
            Sink::Broken => Err(io::Error::other("audit file unavailable")),
        };
        if let Err(e) = written {
            self.broken(&e);
        } else {
            self.unsynced = true;
        }
    }

    fn broken(&mut self, e: &io::Error) {
        if self.lost == 0 {
            tracing::error!(error = %e, "audit log write failed; records are lost until it can be reopened");
        }
        if self.path.is_some() {
            self.sink = Sink::Broken;
        }
        self.lost += 1;
    }

    /// The chain position at the first record: continue the file an earlier run left, or
    /// start a new log.
    fn resume(&mut self) -> Link {
        let genesis = || Link {
            seq: 0,
            hash: ZERO_HASH.to_string(),
        };
        let (Some(path), Sink::File(file)) = (self.path.clone(), &mut self.sink) else {
            return genesis();
        };
        let tail = match file.tail() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the audit file; starting a new chain");
                return genesis();
            }
        };
        let last = match &tail {
            Tail::Empty => return genesis(),
            Tail::Clean(line) | Tail::Truncated(Some(line)) => parse_link(line).ok(),
            Tail::Truncated(None) => None,
        };
        let link = last.map(|l| Link {
            seq: l.seq,
            hash: l.hash,
        });
        match (tail, link) {
            (Tail::Clean(_), Some(link)) => link,
            (Tail::Truncated(_), link) => {
                // Rotated away, the partial line stays the final line of its file, which is
                // how verify tells a crash from an edit.
                tracing::warn!(file = %path.display(), "audit file ends with a partial record (crash during write?); rotating it");
                self.chain = Some(link.unwrap_or_else(genesis));
                if !self.new_file(
                    &path,
                    "previous file ends with a truncated record (crash during write?)",
                ) {
                    // Could not rotate: at least end the partial line.
                    if let Sink::File(f) = &mut self.sink {
                        let _ = f.write("\n");
                    }
                }
                self.chain.take().unwrap_or_else(genesis)
            }
            (Tail::Empty, _) => genesis(),
            (Tail::Clean(_), None) => {
                tracing::warn!(file = %path.display(), "audit file does not end with an audit record; rotating it and starting a new chain");
                self.chain = None;
                self.new_file(&path, "");
                genesis()
            }
        }
    }

    /// Renames the current file to the next numbered name, opens a new one and, when a chain
    /// is running, writes the header that links the two. False if the file was not renamed.
    fn new_file(&mut self, path: &Path, reason: &str) -> bool {
        if let Sink::File(f) = &mut self.sink {
            if let Err(e) = f.sync() {
                tracing::warn!(error = %e, "cannot flush the audit file before rotating it");
            }
        }
        let rotated = match files::rotate(path, self.settings.rotate_keep) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot rotate the audit file");
                return false;
            }
        };
        self.open_with_header(path, &files::base_name(&rotated), reason);
        true
    }

    /// Opens `path` (appending) and writes a header pointing at `prev_file`.
    fn open_with_header(&mut self, path: &Path, prev_file: &str, reason: &str) {
        match FileSink::open(path) {
            Ok(f) => self.sink = Sink::File(f),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot open the audit file");
                self.sink = Sink::Broken;
                return;
            }
        }
        if self.chain.is_some() {
            let mut header = Record::system("header");
            header.prev_file = Some(prev_file);
            header.reason = (!reason.is_empty()).then_some(reason);
            self.append(header);
        }
    }

    fn rotate(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        self.rotate_at = self.settings.rotate_bytes;
        if !self.new_file(&path, "rotated") {
            // Retry after another rotate_bytes rather than on every record.
            if let Sink::File(f) = &self.sink {
                self.rotate_at = f.size().saturating_add(self.settings.rotate_bytes);
            }
        }
    }

    fn reopen_if_requested(&mut self, shared: &Shared) {
        if shared.reopen_requested.swap(false, Ordering::SeqCst) {
            self.reopen("reopen requested (SIGHUP)");
        }
    }

    /// Opens `path` again if it now names another file (renamed or removed by an external
    /// rotation) or if writing failed.
    fn reopen(&mut self, reason: &str) {
        let Some(path) = self.path.clone() else {
            return;
        };
        match &mut self.sink {
            Sink::File(f) if !f.replaced() => return,
            Sink::File(f) => {
                if let Err(e) = f.sync() {
                    tracing::warn!(error = %e, "cannot flush the audit file before reopening");
                }
            }
            Sink::Broken | Sink::Stdout(_) => {}
        }
        if self.chain.is_none() {
            // Nothing written by this run yet: link to the file an earlier run left.
            let link = self.resume();
            self.chain = Some(link);
        }
        let was_broken = matches!(self.sink, Sink::Broken);
        self.open_with_header(&path, &files::base_name(&path), reason);
        if was_broken && !matches!(self.sink, Sink::Broken) {
            tracing::warn!(
                lost = self.lost,
                "audit file reopened after a write failure"
            );
            self.lost = 0;
        }
        self.end_batch();
    }

    fn end_batch(&mut self) {
        let flushed = match &mut self.sink {
            Sink::Stdout(out) => out.flush(),
            Sink::File(f) => f.flush(),
            Sink::Broken => Ok(()),
        };
        if let Err(e) = flushed {
            self.broken(&e);
        }
        if self.settings.fsync == AuditFsync::Always && self.unsynced {
            self.sync();
        }
    }

    fn sync(&mut self) {
        if let Sink::File(f) = &mut self.sink {
            if let Err(e) = f.sync() {
                self.broken(&e);
                return;
            }
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
    }

    /// Reports dropped records, fsyncs when due, follows external rotation, retries a broken
    /// sink.
    fn tick(&mut self, shared: &Shared) {
        self.report_dropped(shared);
        if matches!(self.sink, Sink::Broken) {
            self.reopen("reopen after a write failure");
        } else if matches!(&self.sink, Sink::File(f) if f.replaced()) {
            self.reopen("file renamed or removed");
        }
        self.end_batch();
        if let AuditFsync::Every(interval) = self.settings.fsync {
            if self.unsynced && self.last_sync.elapsed() >= interval {
                self.sync();
            }
        }
    }

    fn report_dropped(&mut self, shared: &Shared) {
        let count = shared.dropped.swap(0, Ordering::Relaxed);
        if count == 0 {
            return;
        }
        tracing::warn!(count, "audit queue full: allowed-statement records dropped");
        let mut record = Record::system("dropped");
        record.count = Some(count);
        record.reason = Some("audit queue full: allowed-statement records dropped");
        self.append(record);
    }

    /// Shutdown: report drops, flush, fsync.
    fn finish(&mut self, shared: &Shared) {
        self.report_dropped(shared);
        self.end_batch();
        self.sync();
    }
}
