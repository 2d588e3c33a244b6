//! A logged-in client: login completion, server attachment, the relay loop, and cleanup.
//!
//! In session mode the client holds one server from login to logout. In transaction mode it
//! holds one only while a transaction (or an unsynced extended-protocol batch) is open: the
//! server is attached when the client sends something that needs it, brought to the client's
//! session settings, and released at ReadyForQuery 'I'.

mod enforce;
mod extended;
mod frames;
mod login;
mod placement;
mod pooled;
mod relay;
mod reports;
pub mod settings;
mod setup;
pub(crate) mod sqlscan;

use crate::app::{App, UserEntry};
use crate::audit::{AuditEvent, AuditKind};
use crate::cancel::{CancelKey, CancelTarget};
use crate::conn::Framed;
use crate::pool::{Affinity, Pool, PoolError, TenantPermit};
use crate::protocol::frame::Frame;
use crate::protocol::sqlstate;
use crate::protocol::PgError;
use crate::server::{ServerConn, ServerError};
use bytes::BytesMut;
pub(crate) use extended::ServerStatements;
use extended::{ClientStatements, Expected};
pub use relay::Shutdown;
use relay::{RelayEnd, Waits};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Who the client is, established by the handshake.
pub struct ClientIdentity {
    /// Connection number, for logs and the audit trail.
    pub conn_id: u64,
    pub peer: crate::io::Peer,
    pub user: String,
    pub database: String,
    pub user_config: Arc<UserEntry>,
    pub pool: Arc<Pool>,
    pub params: Vec<(String, String)>,
    /// The tenant claim of a JWT login.
    pub token_tenant: Option<String>,
}

/// A server while a client holds it, with its pool and the tenant quota permit that goes
/// with it.
struct Attached {
    conn: ServerConn,
    pool: Arc<Pool>,
    /// Kept by the paths that release or close the server; see [`crate::pool::Place`].
    place: crate::pool::Place,
    _quota: Option<TenantPermit>,
    _held: Option<crate::metrics::ServerHeld>,
}

/// Protocol progress on the attached server, used to decide when it can be released.
#[derive(Default)]
struct Progress {
    /// Query, Sync and FunctionCall messages sent that have no ReadyForQuery yet.
    pending: usize,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// The server expects CopyData from the client (COPY FROM STDIN / COPY BOTH).
    copy_in: bool,
    /// ... and the COPY came from an extended-protocol Execute: Syncs are ignored until it ends.
    copy_extended: bool,
    /// Statements since the last release may have changed session settings.
    settings_dirty: bool,
    /// ... or created temporary objects (dropped with DISCARD TEMP at release).
    temp_dirty: bool,
    /// ... or reseeded `random()`: the server is closed instead of reused (in session mode
    /// for the whole session, a prepared statement included).
    reseeded: bool,
    /// ... or may have drawn a sequence value: `currval` would answer the next client with
    /// it (the server is marked at release, see `Session::discard_foreign_sequences`).
    sequences_dirty: bool,
    /// ... by a statement that names the draw (see `sqlscan::SessionEffects::draws`): a later
    /// `currval` of this attachment may read the client's own value, which no reset may
    /// discard.
    sequences_own: bool,
    /// The last message sent for the client was a Query or FunctionCall (its own, or one the
    /// proxy sent in its place): the next starts a segment, Sync or not, and its
    /// ReadyForQuery ends the implicit transaction of extended-protocol messages before it.
    request_ended: bool,
    /// The client sent a Parse of the unnamed statement on this attachment.
    unnamed_parsed: bool,
    /// ... behind other messages of its segment: should one of them fail, the server skips
    /// it and keeps its older unnamed statement. After the Sync the client's is replayed
    /// before it is used again, so what runs is what the policy checked.
    unnamed_unsure: bool,
    /// ... and its Sync went out: until the server has answered, whether it took that Parse is
    /// not known, so a Bind or Describe of the unnamed statement waits (see
    /// `Session::unnamed_must_wait`).
    unnamed_in_doubt: bool,
    /// The proxy's settings statement went out with the client's first request and its
    /// outcome is not known yet (see `setup`).
    setup_unconfirmed: bool,
    /// ... and a Sync followed: further client messages wait in the read buffer until the
    /// outcome is known, since the server runs what comes after a Sync in any case.
    gate_closed: bool,
    /// The settings statement's error, until its ReadyForQuery.
    setup_error: Option<String>,
    /// An inline settings statement completed: its transaction is being followed.
    setup_watch: bool,
    /// ... and an error or a ROLLBACK in it undid the setting.
    setup_undone: bool,
    /// The settings statement failed: the session ends with this error.
    setup_failed: Option<PgError>,
    /// Session mode: Syncs, Queries and FunctionCalls sent, i.e. the client's segment number.
    segments: u64,
    /// Session mode: a Bind waits (in `held`) until the server has answered what was sent
    /// before it, see `Session::bind_must_wait`.
    holding: bool,
}

impl Progress {
    /// Client messages wait in the read buffer (or `held`) until the server has answered.
    fn gate(&self) -> bool {
        self.gate_closed || self.holding
    }
}

pub struct Session {
    app: Arc<App>,
    id: ClientIdentity,
    client: Framed,
    server: Option<Attached>,
    tx_mode: bool,
    to_server: BytesMut,
    to_client: BytesMut,
    progress: Progress,
    expected: Expected,
    statements: ClientStatements,
    /// Session settings the client's server must have (transaction mode), tenant included.
    desired: Vec<(String, String)>,
    /// The startup settings as the server normalized them, without the tenant setting.
    startup: Vec<(String, String)>,
    /// The session's tenant (fixed by the user, or chosen by a switch user).
    tenant: Option<String>,
    /// A `SET LOCAL tenantgate.tenant` for the current transaction.
    local_tenant: Option<String>,
    /// Where the session tenant lives; `id.pool` is this placement's pool.
    placement: tenantgate_config::Placement,
    /// The placement of `local_tenant`.
    local_placement: Option<tenantgate_config::Placement>,
    /// The `search_path` the proxy gives the session under schema isolation.
    search_path: Option<String>,
    /// The configuration `placement` was resolved with (a reload may move the tenant).
    placed_with: Arc<tenantgate_config::Config>,
    /// The prepared statements' decisions were made for a `SET LOCAL` tenant that is gone.
    statements_stale: bool,
    bypass_policy: bool,
    /// Custom (dotted) settings this client has named, read back with the others.
    custom_settings: Vec<String>,
    /// What `screen_sql` found the statement being screened does to session state, for
    /// `note_sql` when it is forwarded (set per message, so never stale).
    screened_effects: Option<sqlscan::SessionEffects>,
    /// After a rejected extended-protocol message: drop client messages until Sync.
    skip_until_sync: bool,
    /// The client message held while `progress.holding`.
    held: Option<Frame>,
    /// `desired` holds the values as the client wrote them: read them back, as the server
    /// normalizes them, after the first transaction.
    settings_unnormalized: bool,
    /// The ParameterStatus values the client has been told (see `reports`).
    reported: reports::Reported,
    /// ... brought in line with server `params` of this digest (see `ServerConn::params_digest`;
    /// 0: none): a server with the same digest needs no comparison at a ReadyForQuery.
    reported_digest: u64,
    /// Audit events waiting to be queued (screening is synchronous; queuing may wait).
    audit_pending: Vec<AuditKind>,
    cancel: CancelKey,
    waits: Waits,
    /// Statistics and the client's entry in SHOW CLIENTS.
    metrics: crate::metrics::SessionMetrics,
}

fn pool_error(e: &PoolError) -> PgError {
    match e {
        PoolError::WaitTimeout => PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            "tenantgate: no server connection available (query_wait_timeout)",
        ),
        PoolError::Closed => PgError::fatal(sqlstate::ADMIN_SHUTDOWN, "tenantgate: pool is closed"),
        PoolError::TenantQuota => PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            "tenantgate: tenant connection quota reached (max_tenant_connections, query_wait_timeout)",
        ),
        PoolError::Server(ServerError::Rejected(m)) => PgError::fatal(
            sqlstate::CANNOT_CONNECT,
            format!("tenantgate: server login failed: {}", m.message),
        ),
        PoolError::Server(e) => PgError::fatal(
            sqlstate::CANNOT_CONNECT,
            format!("tenantgate: cannot connect to server: {e}"),
        ),
    }
}

fn server_error(e: &ServerError) -> PgError {
    match e {
        ServerError::Rejected(m) => PgError::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("tenantgate: {}", m.message),
        ),
        other => PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("tenantgate: {other}")),
    }
}

async fn send_fatal(client: &mut Framed, err: PgError) {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = client.stream.write_all(&out).await;
    let _ = client.stream.shutdown().await;
}

/// Runs a logged-in session until the client leaves or the proxy shuts down.
///
/// The session's task future lives as long as the client, idle or not, so only what an idle
/// session needs is kept inline in it: setup, cleanup and the rarer relay steps (attaching a
/// server, reading settings back, audit queuing) run in boxed futures, allocated only while
/// they run. This keeps an idle client's task small (bench/README.md, idle clients).
pub async fn run(app: Arc<App>, client: Framed, id: ClientIdentity) {
    if let Some(session) = Box::pin(login::start(app, client, id)).await {
        session.serve().await;
    }
}

impl Session {
    fn attach_conn(&mut self, conn: ServerConn, pool: Arc<Pool>, quota: Option<TenantPermit>) {
        self.cancel.slot.set(Some(CancelTarget {
            settings: pool.settings(),
            pid: conn.backend_pid,
            secret: conn.backend_secret,
            in_flight: conn.cancels.clone(),
        }));
        self.progress = Progress::default();
        self.server = Some(Attached {
            conn,
            place: crate::pool::Place::new(&pool),
            pool,
            _quota: quota,
            _held: self.metrics.server_held(),
        });
    }

    /// Detaches the server, to be released or closed by the caller, which then accounts for
    /// its place in the pool (see [`crate::pool::Place`]).
    fn hand_back(&mut self) -> Option<(ServerConn, Arc<Pool>)> {
        let Attached {
            conn, pool, place, ..
        } = self.server.take()?;
        place.keep();
        Some((conn, pool))
    }

    /// Attaches a server for the client's next transaction, at the client's settings.
    /// `first` is the client message that needs it (already taken from the read buffer).
    ///
    /// While it waits for the server the client is watched: one that leaves gives up its place
    /// (else it would later take a server and run its request for nobody, ahead of the live
    /// clients queued behind it). The session then ends with [`RelayEnd::ClientGone`].
    async fn attach(&mut self, first: &Frame) -> Result<(), RelayEnd> {
        let pool = self.id.pool.clone();
        // The fields `current_tenant` reads: the client is borrowed meanwhile.
        let tenant = self.local_tenant.as_deref().or(self.tenant.as_deref());
        let checkout = checkout(
            &pool,
            tenant,
            self.id.user_config.config.max_tenant_connections,
            Affinity::of(&self.desired),
        );
        let (quota, mut conn) = tokio::select! {
            biased;
            checked_out = checkout => checked_out.map_err(|e| RelayEnd::Fatal(pool_error(&e)))?,
            () = relay::client_gone(&mut self.client, Some(&self.metrics)) => {
                tracing::debug!("client left while waiting for a server");
                return Err(RelayEnd::ClientGone);
            }
        };
        let mut pipelined = None;
        if let Some(sql) = settings::diff_sql(&conn.session_settings, &self.desired) {
            let setting = &self.app.config().tenancy.setting;
            if crate::metrics::changes_tenant(&conn.session_settings, &self.desired, setting) {
                self.metrics.injection();
            }
            match self.setup_plan(&conn, first) {
                setup::Plan::Wait => {
                    if let Err(e) = conn.apply_settings(&settings::guarded(&sql)).await {
                        tracing::warn!(server = conn.id, error = %e, "could not apply session settings; closing server");
                        finish(&pool, conn, false, false).await;
                        return Err(RelayEnd::Fatal(server_error(&e)));
                    }
                }
                plan => pipelined = Some((plan, sql)),
            }
            conn.session_settings = self.desired.clone();
        }
        self.attach_conn(conn, pool, quota);
        if let Some((plan, sql)) = pipelined {
            // Ahead of the settings statement, which may share the client's implicit
            // transaction (without it, `forward_pooled` sends the reset).
            self.discard_foreign_sequences(first);
            self.queue_setup(plan, &sql);
        }
        if self.settings_unnormalized {
            // Learn the server's spelling of the client's settings at the first release.
            self.settings_unnormalized = false;
            self.progress.settings_dirty = true;
        }
        Ok(())
    }

    /// Transaction mode: is the attached server done with this client for now?
    fn releasable(&self) -> bool {
        self.tx_mode && self.expected.is_empty() && self.server_at_rest()
    }

    /// A server is attached, outside a transaction, with nothing sent or owed: the session is
    /// between transactions.
    fn server_at_rest(&self) -> bool {
        let p = &self.progress;
        p.pending == 0
            && !p.unsynced
            && !p.copy_in
            && self.to_server.is_empty()
            && self
                .server
                .as_ref()
                .is_some_and(|s| s.conn.tx_status == b'I')
    }

    /// Returns the server to the pool, first learning its settings if they may have changed.
    async fn release(&mut self) {
        let stale = self
            .server
            .as_ref()
            .is_some_and(|s| s.conn.statements.stale);
        let p = &self.progress;
        if p.settings_dirty || p.temp_dirty || p.reseeded || stale {
            // Boxed: rare, and its state would otherwise be part of every idle session.
            return Box::pin(self.release_slowly()).await;
        }
        let Some((mut conn, pool)) = self.hand_back() else {
            return;
        };
        self.cancel.slot.set(None);
        conn.sequences_drawn |= self.progress.sequences_dirty;
        self.progress = Progress::default();
        if conn.cancels.busy() {
            // Rare: the client's cancel is still on its way to the server (see `finish`). The
            // server waits for it out of the pool, the client does not: its next transaction
            // takes another server.
            tokio::spawn(async move { finish(&pool, conn, true, false).await });
        } else {
            pool.release_to_waiter(conn);
        }
        // Between transactions the session holds no buffer (to_client goes once written).
        if self.to_server.is_empty() {
            self.to_server = BytesMut::new();
        }
    }

    /// [`Session::release`] after statements that may have changed session settings, or when
    /// one of the server's prepared statements went stale (all are deallocated: the next use
    /// prepares them again).
    async fn release_slowly(&mut self) {
        let Some((mut conn, pool)) = self.hand_back() else {
            return;
        };
        self.cancel.slot.set(None);
        conn.sequences_drawn |= self.progress.sequences_dirty;
        if std::mem::take(&mut self.progress.reseeded) {
            // No statement makes its random() sequence unknown again; a new backend does.
            tracing::debug!(server = conn.id, "random() reseeded; closing server");
            self.progress = Progress::default();
            return finish(&pool, conn, false, false).await;
        }
        if conn.cancels.busy() {
            // Not even the cleanup statements may run before the cancel is done: it could land
            // on them. Rather than keep the client waiting for it (up to 5 s), the server is
            // closed; rare (a cancel in flight after a statement that changed settings).
            return finish(&pool, conn, false, false).await;
        }
        if conn.statements.stale {
            if let Err(e) = conn.exec_quiet("DEALLOCATE ALL").await {
                tracing::debug!(server = conn.id, error = %e, "cannot deallocate stale statements; closing server");
                return finish(&pool, conn, false, false).await;
            }
            conn.statements.clear();
        }
        if self.progress.temp_dirty {
            // Another client must not find (or have its tables shadowed by) this one's
            // temporary tables; its own next transaction may be on another server anyway.
            if let Err(e) = conn.exec_quiet("DISCARD TEMP").await {
                tracing::debug!(server = conn.id, error = %e, "cannot drop temporary objects; closing server");
                return finish(&pool, conn, false, false).await;
            }
        }
        if !self.progress.settings_dirty {
            self.progress = Progress::default();
            return pool.release(conn);
        }
        let setting = self.app.config().tenancy.setting.clone();
        let tenant_setting = setting.to_ascii_lowercase();
        let mut custom: Vec<String> = self
            .custom_settings
            .iter()
            .filter(|n| **n != tenant_setting)
            .cloned()
            .collect();
        // The tenant setting too: a statement the proxy let through (policy off or audit, or
        // an undone inline setting) may have left another value than the one the proxy set.
        custom.push(setting);
        match conn.read_settings(&custom).await {
            Ok(rows) => {
                let mut now = settings::from_rows(rows);
                now.sort();
                conn.session_settings = now.clone();
                // The client keeps its own tenant whatever the server had.
                self.desired = self.with_tenant(now);
            }
            Err(e) => {
                tracing::debug!(server = conn.id, error = %e, "cannot read session settings; closing server");
                return finish(&pool, conn, false, false).await;
            }
        }
        self.progress = Progress::default();
        pool.release(conn);
    }

    /// Queues the pending audit events (waiting for room if the writer is behind).
    async fn flush_audit(&mut self) {
        if !self.audit_pending.is_empty() {
            Box::pin(self.queue_audit()).await;
        }
    }

    async fn queue_audit(&mut self) {
        let Some(audit) = self.app.audit().cloned() else {
            self.audit_pending.clear();
            return;
        };
        for kind in std::mem::take(&mut self.audit_pending) {
            audit
                .record(AuditEvent {
                    kind,
                    conn: self.id.conn_id,
                    client_addr: self.id.peer,
                    user: self.id.user.clone(),
                    database: self.id.database.clone(),
                    tenant: self.current_tenant().map(str::to_string),
                    isolation: Some(self.current_placement().isolation().as_str()),
                })
                .await;
        }
    }

    async fn serve(mut self: Box<Self>) {
        self.flush_audit().await;
        let end = self.relay().await;
        Box::pin(self.end(end)).await;
    }

    /// After the relay: tell the client why (if it is still there), settle and return the
    /// server, record the disconnect.
    async fn end(&mut self, end: RelayEnd) {
        match &end {
            RelayEnd::ClientGone => {}
            RelayEnd::Fatal(e) => send_fatal(&mut self.client, e.clone()).await,
        }
        if let Some(attached) = self.server.as_mut() {
            self.cancel.slot.set(None);
            // A server whose settings statement has no known outcome is never reused. Nor is
            // one the client's last messages have not (all) reached: the client was told its
            // session ended (57P01 at shutdown), so they must not run now.
            let unsent_after_fatal =
                matches!(end, RelayEnd::Fatal(_)) && !self.to_server.is_empty();
            let settings = attached.pool.settings();
            let reusable = !self.progress.setup_unconfirmed
                && !unsent_after_fatal
                && relay::settle(
                    &mut attached.conn,
                    &settings.target,
                    &mut self.progress,
                    &mut self.to_server,
                    (&mut self.expected, &mut self.statements),
                )
                .await;
            // Transaction mode: what the client may have changed (settings, temporary
            // objects) is read back or dropped as at a release, once its transaction is
            // rolled back; a server that cannot be rolled back is closed. Session mode
            // discards everything in `finish`, except a reseeded random(): closed.
            let p = &self.progress;
            let changed = p.settings_dirty || p.temp_dirty || p.reseeded;
            attached.conn.sequences_drawn |= p.sequences_dirty;
            if reusable && self.tx_mode && changed {
                if roll_back(&mut attached.conn).await {
                    Box::pin(self.release_slowly()).await;
                } else if let Some((conn, pool)) = self.hand_back() {
                    finish(&pool, conn, false, false).await;
                }
            } else if let Some((conn, pool)) = self.hand_back() {
                let reusable = reusable && !self.progress.reseeded;
                finish(&pool, conn, reusable, !self.tx_mode).await;
            }
        }
        self.audit_pending.push(AuditKind::Disconnect);
        self.flush_audit().await;
    }
}

/// Ends the server's transaction, if one is open: whether it is then idle.
async fn roll_back(server: &mut ServerConn) -> bool {
    if server.tx_status != b'I' {
        let rollback = server.exec_quiet("ROLLBACK");
        if !matches!(
            tokio::time::timeout(Duration::from_secs(5), rollback).await,
            Ok(Ok(_))
        ) {
            return false;
        }
    }
    server.tx_status == b'I'
}

/// The tenant's quota permit (when `limit` applies) and a server. Dropped before it completes,
/// it holds nothing of either (see `pool`).
async fn checkout(
    pool: &Arc<Pool>,
    tenant: Option<&str>,
    limit: Option<usize>,
    affinity: Affinity,
) -> Result<(Option<TenantPermit>, ServerConn), PoolError> {
    let quota = match (tenant, limit) {
        (Some(t), Some(limit)) => Some(pool.tenant_permit(t, limit).await?),
        _ => None,
    };
    Ok((quota, pool.acquire(affinity).await?))
}

/// Returns a server to its pool clean, or closes it. A transaction left open is rolled back;
/// in session mode all session state is discarded. A cancel the client sent that is still on
/// its way is waited for first: it could land on the reset or on the next client's query.
async fn finish(pool: &Pool, mut server: ServerConn, reusable: bool, discard_all: bool) {
    let reusable = reusable && (!server.cancels.busy() || server.cancels.finished().await);
    if reusable {
        let reset = async {
            if server.tx_status != b'I' {
                server.exec_quiet("ROLLBACK").await?;
            }
            if discard_all {
                server.exec_quiet("DISCARD ALL").await?;
                server.statements.clear();
                server.session_settings.clear();
                server.sequences_drawn = false;
            }
            Ok::<(), ServerError>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), reset).await {
            Ok(Ok(())) if server.tx_status == b'I' => return pool.release(server),
            Ok(r) => {
                tracing::debug!(server = server.id, result = ?r.err(), "server reset failed; closing it")
            }
            Err(_) => tracing::debug!(server = server.id, "server reset timed out; closing it"),
        }
    }
    drop(server);
    pool.forget_one();
}

pub use settings::{quote_ident, quote_literal};
