//! The SHOW commands. Column names and order follow PgBouncer's where the concept matches;
//! columns for what tenantgate does not track are 0 (or empty), so tools reading them by name
//! keep working. Times are microseconds, like PgBouncer's.

use super::table::{Cell, Table, Type};
use super::Show;
use crate::app::App;
use crate::metrics::ClientInfo;
use std::collections::HashMap;
use std::time::{Instant, SystemTime};
use tenantgate_config::{Config, PoolMode};

use Type::{Int8 as I, Text as T};

pub const HELP: &str = "tenantgate admin console commands:\n\
    \tSHOW HELP|POOLS|CLIENTS|SERVERS|STATS|TENANTS|DATABASES|LISTS|CONFIG|VERSION\n\
    \tPAUSE [<db>]\n\
    \tRESUME [<db>]\n\
    \tSHUTDOWN\n\
    \tRELOAD (re-read the configuration file)";

/// Keys whose values are never shown.
const SECRET_KEYS: &[&str] = &["password", "secret"];
const REDACTED: &str = "********";

pub fn table(app: &App, what: Show) -> Table {
    match what {
        Show::Pools => pools(app),
        Show::Clients => clients(app),
        Show::Servers => servers(app),
        Show::Stats => stats(app),
        Show::Tenants => tenants(app),
        Show::Databases => databases(app),
        Show::Lists => lists(app),
        Show::Config => config(&app.config()),
        Show::Version => {
            let mut t = Table::new(&[("version", T)]);
            t.push(vec![
                concat!("tenantgate ", env!("CARGO_PKG_VERSION")).into()
            ]);
            t
        }
        Show::Help => Table::new(&[]),
    }
}

/// `2024-05-01 12:00:00 UTC`, as PgBouncer prints times.
fn timestamp(t: SystemTime) -> String {
    let iso = crate::audit::rfc3339_micros(t);
    match iso.get(..19) {
        Some(s) => format!("{} UTC", s.replace('T', " ")),
        None => iso,
    }
}

fn wall_clock(i: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(i.elapsed())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn mode(m: PoolMode) -> &'static str {
    match m {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

/// Pools by name.
/// Every pool: the databases' own, then the tenant databases' (`database/tenant_db`).
fn sorted_pools(app: &App) -> Vec<std::sync::Arc<crate::pool::Pool>> {
    let mut pools: Vec<_> = app.pools();
    pools.extend(app.tenant_pools().pools());
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    pools
}

fn clients_per_database(clients: &[std::sync::Arc<ClientInfo>]) -> HashMap<&str, usize> {
    let mut n = HashMap::new();
    for c in clients {
        *n.entry(c.database.as_str()).or_insert(0) += 1;
    }
    n
}

fn pools(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", T),
        ("user", T),
        ("cl_active", I),
        ("cl_waiting", I),
        ("cl_active_cancel_req", I),
        ("cl_waiting_cancel_req", I),
        ("sv_active", I),
        ("sv_active_cancel", I),
        ("sv_being_canceled", I),
        ("sv_idle", I),
        ("sv_used", I),
        ("sv_tested", I),
        ("sv_login", I),
        ("maxwait", I),
        ("maxwait_us", I),
        ("pool_mode", T),
    ]);
    let clients = app.stats.clients();
    let per_db = clients_per_database(&clients);
    for pool in sorted_pools(app) {
        let c = pool.counts();
        let settings = pool.settings();
        let logged_in = per_db.get(pool.name.as_str()).copied().unwrap_or(0);
        t.push(vec![
            pool.name.clone().into(),
            settings.target.user.clone().into(),
            logged_in.saturating_sub(c.waiting).into(),
            c.waiting.into(),
            0i64.into(),
            0i64.into(),
            c.total.saturating_sub(c.idle).into(),
            0i64.into(),
            0i64.into(),
            c.idle.into(),
            0i64.into(),
            0i64.into(),
            0i64.into(),
            0i64.into(),
            0i64.into(),
            mode(settings.mode).into(),
        ]);
    }
    t
}

/// Columns shared by SHOW CLIENTS and SHOW SERVERS.
const CONNECTION_COLUMNS: &[(&str, Type)] = &[
    ("type", T),
    ("user", T),
    ("database", T),
    ("state", T),
    ("addr", T),
    ("port", I),
    ("local_addr", T),
    ("local_port", I),
    ("connect_time", T),
    ("request_time", T),
    ("wait", I),
    ("wait_us", I),
    ("close_needed", I),
    ("ptr", T),
    ("link", T),
    ("remote_pid", I),
    ("tls", T),
    ("application_name", T),
    ("prepared_statements", I),
];

fn clients(app: &App) -> Table {
    let mut columns = CONNECTION_COLUMNS.to_vec();
    columns.push(("tenant", T));
    let mut t = Table::new(&columns);
    let listen: Option<std::net::SocketAddr> = app.config().proxy.listen.parse().ok();
    for c in app.stats.clients() {
        let server = c.server();
        let connected = timestamp(c.connected);
        t.push(vec![
            "C".into(),
            c.user.clone().into(),
            c.database.clone().into(),
            if server.is_some() { "active" } else { "idle" }.into(),
            c.peer.addr().into(),
            i64::from(c.peer.port()).into(),
            match c.peer {
                crate::io::Peer::Unix => "unix".to_string(),
                crate::io::Peer::Tcp(_) => listen.map_or(String::new(), |a| a.ip().to_string()),
            }
            .into(),
            listen.map_or(0, |a| i64::from(a.port())).into(),
            connected.clone().into(),
            connected.into(),
            0i64.into(),
            0i64.into(),
            0i64.into(),
            format!("{:x}", c.conn_id).into(),
            server
                .map_or(String::new(), |s| format!("{:x}", s.pid))
                .into(),
            0i64.into(),
            if c.tls { "TLS" } else { "" }.into(),
            c.application_name.clone().into(),
            0i64.into(),
            c.tenant().map_or(Cell::Null, Cell::from),
        ]);
    }
    t
}

fn servers(app: &App) -> Table {
    let mut t = Table::new(CONNECTION_COLUMNS);
    // Servers held by clients: known through the client's cancel target.
    for c in app.stats.clients() {
        let Some(s) = c.server() else { continue };
        let (connected, ptr, link) = (
            timestamp(c.connected),
            format!("{:x}", s.pid),
            format!("{:x}", c.conn_id),
        );
        t.push(server_row(
            s.target(),
            &c.database,
            "active",
            connected,
            ptr,
            link,
            s.pid,
        ));
    }
    for pool in sorted_pools(app) {
        let target = pool.settings().target.clone();
        for s in pool.idle_servers() {
            let connected = timestamp(wall_clock(s.created));
            t.push(server_row(
                &target,
                &pool.name,
                "idle",
                connected,
                format!("{:x}", s.id),
                String::new(),
                s.backend_pid,
            ));
        }
    }
    t
}

fn server_row(
    target: &crate::server::ServerTarget,
    database: &str,
    state: &str,
    connected: String,
    ptr: String,
    link: String,
    pid: i32,
) -> Vec<Cell> {
    vec![
        "S".into(),
        target.user.clone().into(),
        database.into(),
        state.into(),
        // As PgBouncer shows a server on a Unix-domain socket.
        if target.unix_socket.is_some() {
            "unix".to_string()
        } else {
            target.host.clone()
        }
        .into(),
        i64::from(target.port).into(),
        "".into(),
        0i64.into(),
        connected.clone().into(),
        connected.into(),
        0i64.into(),
        0i64.into(),
        0i64.into(),
        ptr.into(),
        link.into(),
        i64::from(pid).into(),
        if target.tls.is_some() { "TLS" } else { "" }.into(),
        "".into(),
        0i64.into(),
    ]
}

fn stats(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", T),
        ("total_server_assignment_count", I),
        ("total_xact_count", I),
        ("total_query_count", I),
        ("total_received", I),
        ("total_sent", I),
        ("total_xact_time", I),
        ("total_query_time", I),
        ("total_wait_time", I),
        ("total_client_parse_count", I),
        ("total_server_parse_count", I),
        ("total_bind_count", I),
        ("avg_server_assignment_count", I),
        ("avg_xact_count", I),
        ("avg_query_count", I),
        ("avg_recv", I),
        ("avg_sent", I),
        ("avg_xact_time", I),
        ("avg_query_time", I),
        ("avg_wait_time", I),
        ("avg_client_parse_count", I),
        ("avg_server_parse_count", I),
        ("avg_bind_count", I),
    ]);
    for pool in sorted_pools(app) {
        let Some(db) = app.stats.database(&pool.name) else {
            continue;
        };
        let (s, a) = (db.totals(&pool), db.averages());
        let zero = || Cell::Int(0);
        t.push(vec![
            pool.name.clone().into(),
            s.assignments.into(),
            s.xacts.into(),
            s.queries.into(),
            s.received.into(),
            s.sent.into(),
            s.xact_us.into(),
            s.query_us.into(),
            s.wait_us.into(),
            zero(),
            zero(),
            zero(),
            a.assignments.into(),
            a.xacts.into(),
            a.queries.into(),
            a.received.into(),
            a.sent.into(),
            a.xact_us.into(),
            a.query_us.into(),
            a.wait_us.into(),
            zero(),
            zero(),
            zero(),
        ]);
    }
    t
}

fn tenants(app: &App) -> Table {
    let mut t = Table::new(&[
        ("tenant", T),
        ("isolation", T),
        ("placement", T),
        ("cl_active", I),
        ("sv_active", I),
        ("total_query_count", I),
        ("total_rejection_count", I),
    ]);
    let config = app.config();
    for tenant in app.stats.tenants.all() {
        let (clients, queries, rejections) = tenant.counts();
        let (isolation, placement) = match config.placement(&tenant.name) {
            Ok(tenantgate_config::Placement::Row) => ("row", String::new()),
            Ok(tenantgate_config::Placement::Schema(s)) => ("schema", s),
            Ok(tenantgate_config::Placement::Database(d)) => ("database", d),
            Err(_) => ("invalid", String::new()),
        };
        t.push(vec![
            tenant.name.clone().into(),
            isolation.into(),
            placement.into(),
            clients.max(0).into(),
            tenant.servers().max(0).into(),
            queries.into(),
            rejections.into(),
        ]);
    }
    t
}

fn databases(app: &App) -> Table {
    let mut t = Table::new(&[
        ("name", T),
        ("host", T),
        ("port", I),
        ("database", T),
        ("force_user", T),
        ("pool_size", I),
        ("min_pool_size", I),
        ("reserve_pool", I),
        ("server_lifetime", I),
        ("pool_mode", T),
        ("max_connections", I),
        ("current_connections", I),
        ("paused", I),
        ("disabled", I),
    ]);
    let mut pools = app.pools();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    for pool in pools {
        let s = pool.settings();
        t.push(vec![
            pool.name.clone().into(),
            s.target.host.clone().into(),
            i64::from(s.target.port).into(),
            s.target.dbname.clone().into(),
            s.target.user.clone().into(),
            s.pool_size.into(),
            s.min_pool_size.into(),
            0i64.into(),
            s.lifetime.as_secs().into(),
            mode(s.mode).into(),
            s.pool_size.into(),
            pool.counts().total.into(),
            i64::from(pool.is_paused()).into(),
            0i64.into(),
        ]);
    }
    t
}

fn lists(app: &App) -> Table {
    let mut t = Table::new(&[("list", T), ("items", I)]);
    let (mut used, mut free) = (0, 0);
    for pool in sorted_pools(app) {
        let c = pool.counts();
        used += c.total.saturating_sub(c.idle);
        free += c.idle;
    }
    let budget = app.tenant_pools().counts();
    let items: [(&str, usize); 12] = [
        ("databases", app.config().databases.len()),
        ("users", app.config().users.len()),
        ("pools", app.pools().len()),
        ("used_clients", app.stats.clients().len()),
        ("login_clients", 0),
        ("used_servers", used),
        ("free_servers", free),
        ("tenant_database_pools", budget.pools),
        ("tenant_database_servers", budget.servers),
        ("max_database_connections", budget.cap),
        ("tenant_database_pools_created", budget.created as usize),
        ("tenant_database_evictions", budget.evictions as usize),
    ];
    for (name, n) in items {
        t.push(vec![name.into(), n.into()]);
    }
    t
}

fn config(config: &Config) -> Table {
    let mut t = Table::new(&[("key", T), ("value", T), ("default", T), ("changeable", T)]);
    let mut values = Vec::new();
    flatten(
        "",
        &serde_json::to_value(config).unwrap_or_default(),
        &mut values,
    );
    let defaults = config_defaults();
    for (key, value) in values {
        let default = defaults
            .get(&default_key(&key))
            .cloned()
            .map_or(Cell::Null, Cell::from);
        t.push(vec![key.into(), value.into(), default, "no".into()]);
    }
    t
}

/// `databases[3].pool_size` → `databases[].pool_size`: defaults of list entries.
fn default_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

fn config_defaults() -> HashMap<String, String> {
    let mut values = Vec::new();
    flatten(
        "",
        &serde_json::to_value(Config::default()).unwrap_or_default(),
        &mut values,
    );
    let entries = [
        ("databases[]", serde_json::json!({"name": "", "user": ""})),
        ("users[]", serde_json::json!({"name": ""})),
    ];
    for (prefix, minimal) in entries {
        let value = match prefix {
            "databases[]" => serde_json::from_value::<tenantgate_config::DatabaseConfig>(minimal)
                .ok()
                .and_then(|d| serde_json::to_value(d).ok()),
            _ => serde_json::from_value::<tenantgate_config::UserConfig>(minimal)
                .ok()
                .and_then(|u| serde_json::to_value(u).ok()),
        };
        if let Some(v) = value {
            flatten(prefix, &v, &mut values);
        }
    }
    values
        .into_iter()
        .filter(|(k, _)| !k.ends_with(".name") && !k.ends_with(".user"))
        .collect()
}

/// Dotted keys and display values; secrets redacted.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value;
    let leaf = |out: &mut Vec<(String, String)>, text: String| {
        let name = prefix.rsplit('.').next().unwrap_or(prefix);
        let secret = SECRET_KEYS.contains(&name) && !text.is_empty();
        out.push((
            prefix.to_string(),
            if secret { REDACTED.into() } else { text },
        ));
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Array(items) => {
            let text: Vec<String> = items.iter().map(scalar).collect();
            leaf(out, text.join(", "));
        }
        other => leaf(out, scalar(other)),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_redacts_secrets() {
        let cfg = Config::from_toml(
            r#"
[proxy]
admin_users = ["admin"]
[[databases]]
name = "app"
user = "srv"
password = "server-secret"
[[users]]
name = "admin"
password = "admin-secret"
"#,
        )
        .unwrap();
        let t = config(&cfg);
        let rows: HashMap<String, (Cell, Cell)> = t
            .rows
            .iter()
            .map(|r| match &r[0] {
                Cell::Text(k) => (k.clone(), (r[1].clone(), r[2].clone())),
                _ => unreachable!(),
            })
            .collect();
        let text = format!("{:?}", t.rows);
        assert!(!text.contains("server-secret") && !text.contains("admin-secret"));
        assert_eq!(rows["databases[0].password"].0, Cell::from(REDACTED));
        assert_eq!(rows["users[0].password"].0, Cell::from(REDACTED));
        assert_eq!(rows["proxy.admin_users"].0, Cell::from("admin"));
        assert_eq!(rows["databases[0].pool_size"].1, Cell::from("20"));
        assert_eq!(rows["proxy.listen"].1, Cell::from("127.0.0.1:6432"));
        assert_eq!(rows["users[0].password_env"].0, Cell::from(""));
    }

    #[test]
    fn timestamps_look_like_pgbouncer() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400 + 61);
        assert_eq!(timestamp(t), "1970-01-02 00:01:01 UTC");
    }
}
