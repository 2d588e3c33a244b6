//! Login completion: the client's settings and placement, the first server when one is
//! needed, and the ParameterStatus/BackendKeyData/ReadyForQuery that end the login.

use super::extended::{ClientStatements, Expected};
use super::relay::{self, Waits};
use super::{finish, placement, pool_error, send_fatal, server_error, settings};
use super::{ClientIdentity, Progress, Session};
use crate::app::App;
use crate::audit::AuditKind;
use crate::conn::Framed;
use crate::pool::{Affinity, Pool, TenantPermit};
use crate::protocol::{backend, sqlstate, PgError};
use crate::server::{ServerConn, ServerError};
use bytes::BytesMut;
use std::sync::Arc;
use tenantgate_config::{PoolMode, TenantSource};

/// Login completion: settings, placement, the first server (when one is needed), the
/// client's ParameterStatus/BackendKeyData/ReadyForQuery. None if the session ended there.
///
/// The session is boxed: moved into `serve` by value it would be stored in the task twice
/// (the moved-from local keeps its slot).
pub(super) async fn start(
    app: Arc<App>,
    mut client: Framed,
    mut id: ClientIdentity,
) -> Option<Box<Session>> {
    let pool_settings = id.pool.settings();
    let tx_mode = pool_settings.mode == PoolMode::Transaction;
    let placed_with = app.config();
    let forward_options = app
        .config()
        .database(&id.database)
        .is_some_and(|d| d.forward_options);
    let mut startup = match settings::startup_settings(&app, &id.params, forward_options) {
        Ok(s) => s,
        Err(e) => {
            send_fatal(&mut client, e).await;
            return None;
        }
    };
    let user = &id.user_config.config;
    let tenant = match user.tenant_from {
        None | Some(TenantSource::Fixed) => user.tenant.clone(),
        Some(TenantSource::Jwt) => id.token_tenant.clone(),
        Some(TenantSource::Switch) => None,
    };
    let placement = match placement::resolve(&app, &id.database, tenant.as_deref()) {
        Ok((placement, pool)) => {
            id.pool = pool;
            placement
        }
        Err(e) => {
            let e = PgError::fatal(e.code, e.message);
            send_fatal(&mut client, e).await;
            return None;
        }
    };
    if let Some(t) = &tenant {
        startup.push((placed_with.tenancy.setting.clone(), t.clone()));
    }
    let own_path = startup
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(placement::SEARCH_PATH));
    if let (tenantgate_config::Placement::Row, Some((_, path))) = (&placement, own_path) {
        if !placement::row_search_path_ok(&placed_with, path) {
            let e = PgError::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "tenantgate: under row isolation search_path may only name the shared schemas",
            );
            send_fatal(&mut client, e).await;
            return None;
        }
    }
    if let Some(schema) = placement.schema() {
        // The proxy owns search_path under schema isolation.
        startup.retain(|(k, _)| !k.eq_ignore_ascii_case(placement::SEARCH_PATH));
        startup.push((
            placement::SEARCH_PATH.to_string(),
            placement::search_path(&placed_with, schema),
        ));
    }
    // Session mode: the session holds its server, within the tenant's quota.
    let quota = match (&tenant, tx_mode) {
        (Some(t), false) => Some(t.as_str()).zip(id.user_config.config.max_tenant_connections),
        _ => None,
    };
    let start = match start_session(&id.pool, &startup, tx_mode, quota, &mut client).await {
        Ok(s) => s,
        Err(None) => {
            tracing::debug!(user = %id.user, database = %id.database, "client left while its login waited for a server");
            return None;
        }
        Err(Some(e)) => {
            tracing::info!(user = %id.user, database = %id.database, error = %e.message, "session start failed");
            send_fatal(&mut client, e).await;
            return None;
        }
    };
    let cancel = app.cancel.register();
    let metrics = app.stats.session(
        &id,
        client.stream.is_tls(),
        cancel.slot.clone(),
        tenant.as_deref(),
    );
    if tenant.is_some() && start.server.is_some() {
        metrics.injection();
    }
    let mut out = BytesMut::new();
    for (k, v) in &start.params {
        backend::parameter_status(k, v, &mut out);
    }
    backend::backend_key_data(cancel.pid, cancel.secret, &mut out);
    backend::ready_for_query(b'I', &mut out);
    if client.write_all(&out).await.is_err() {
        if let Some(server) = start.server {
            finish(&id.pool, server, true, !tx_mode).await;
        }
        return None;
    }
    let desired = start.desired;
    tracing::debug!(user = %id.user, database = %id.database, peer = %id.peer,
        tenant = ?id.user_config.config.tenant, tx_mode, "session started");
    let waits = Waits::new(app.shutdown_token(), &app, &id.database);
    let setting = app.config().tenancy.setting.clone();
    let owns_search_path = placement.schema().is_some();
    let startup_normalized = desired
        .iter()
        .filter(|(k, _)| {
            let proxy_owned = k.eq_ignore_ascii_case(&setting)
                || owns_search_path && k.eq_ignore_ascii_case(placement::SEARCH_PATH);
            !proxy_owned
        })
        .cloned()
        .collect();
    let bypass_policy = id.user_config.config.bypass_policy;
    let startup_custom: Vec<String> = startup
        .iter()
        .filter(|(k, _)| k.contains('.') && !k.eq_ignore_ascii_case(&setting))
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    let reported = super::reports::Reported::new(id.pool.server_params(), &start.params);
    let mut session = Box::new(Session {
        app,
        id,
        client,
        server: None,
        tx_mode,
        to_server: BytesMut::new(),
        to_client: BytesMut::new(),
        progress: Progress::default(),
        expected: Expected::default(),
        statements: ClientStatements::default(),
        desired,
        startup: startup_normalized,
        tenant,
        local_tenant: None,
        search_path: placement
            .schema()
            .map(|s| placement::search_path(&placed_with, s)),
        placement,
        local_placement: None,
        placed_with,
        statements_stale: false,
        bypass_policy,
        // Custom startup settings are placeholders pg_settings hides: track them by name.
        custom_settings: startup_custom,
        screened_effects: None,
        skip_until_sync: false,
        held: None,
        settings_unnormalized: false,
        reported,
        reported_digest: 0,
        audit_pending: vec![AuditKind::Connect],
        cancel,
        waits,
        metrics,
    });
    session.settings_unnormalized = !start.normalized;
    match start.server {
        Some(mut server) if tx_mode => {
            server.session_settings = session.desired.clone();
            session.id.pool.release(server);
        }
        Some(server) => {
            let pool = session.id.pool.clone();
            session.attach_conn(server, pool, start.permit)
        }
        None => {}
    }
    Some(session)
}

/// How a session starts: its server (session mode; transaction mode only while the pool's
/// ParameterStatus values are unknown), its settings, and the ParameterStatus to report.
struct Start {
    server: Option<ServerConn>,
    /// The tenant's quota permit for `server` (session mode).
    permit: Option<TenantPermit>,
    desired: Vec<(String, String)>,
    params: Vec<(String, String)>,
    /// `desired` is as the server normalized it.
    normalized: bool,
}

/// `quota`: the tenant and its `max_tenant_connections`, when the server is held for the
/// session. Err(None): the client left while it waited for a server.
async fn start_session(
    pool: &Arc<Pool>,
    startup: &[(String, String)],
    tx_mode: bool,
    quota: Option<(&str, usize)>,
    client: &mut Framed,
) -> Result<Start, Option<PgError>> {
    if tx_mode {
        if let Some(cached) = pool.server_params() {
            // No server needed to log in: report the pool's values with the client's own
            // settings over them; the first checkout applies the settings.
            let params = super::reports::with_settings(&cached, startup);
            let mut desired = startup.to_vec();
            desired.sort();
            return Ok(Start {
                server: None,
                permit: None,
                desired,
                params,
                normalized: false,
            });
        }
    }
    // The wait watches the client, as `attach` does: a client that gives up (a connect
    // timeout, a retry storm) leaves the queue at once instead of later taking a server for a
    // login nobody reads, ahead of the live clients behind it. Dropped before it completes,
    // the checkout holds nothing (see `pool`).
    let (tenant, limit) = quota.unzip();
    let checkout = super::checkout(pool, tenant, limit, Affinity::of(startup));
    let (permit, mut server) = tokio::select! {
        biased;
        checked_out = checkout => checked_out.map_err(|e| pool_error(&e))?,
        () = relay::client_gone(client, None) => return Err(None),
    };
    match apply_startup(&mut server, startup, tx_mode).await {
        Ok(desired) => Ok(Start {
            params: server.params.clone(),
            server: Some(server),
            permit,
            desired,
            normalized: true,
        }),
        Err(e) => {
            let err = match &e {
                ServerError::Rejected(m) => {
                    PgError::fatal(sqlstate::PROTOCOL_VIOLATION, m.message.clone())
                }
                other => server_error(other),
            };
            finish(pool, server, false, !tx_mode).await;
            Err(Some(err))
        }
    }
}

/// Gives a fresh server the client's startup settings; in transaction mode returns them as
/// the server normalized them (so later comparisons are exact).
async fn apply_startup(
    server: &mut ServerConn,
    startup: &[(String, String)],
    tx_mode: bool,
) -> Result<Vec<(String, String)>, ServerError> {
    if let Some(sql) = settings::diff_sql(&server.session_settings, startup) {
        server.apply_settings(&settings::guarded(&sql)).await?;
    }
    if !tx_mode || startup.is_empty() {
        return Ok(startup.to_vec());
    }
    // The tenant setting is a placeholder pg_settings does not show: keep it from `startup`.
    let mut custom: Vec<String> = startup
        .iter()
        .filter(|(k, _)| k.contains('.'))
        .map(|(k, _)| k.clone())
        .collect();
    custom.sort();
    let rows = server.read_settings(&custom).await?;
    let mut desired = settings::from_rows(rows);
    desired.sort();
    server.session_settings = desired.clone();
    Ok(desired)
}
