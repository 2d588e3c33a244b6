//! Screening client statements: the tenant policy, tenant switching, and the session commands
//! the proxy answers itself (`RESET ALL`, `DISCARD ALL`, `DEALLOCATE`).

use super::extended::{bind_statement, ClientStatement};
use super::settings::{set_config_call, set_sql};
use super::sqlscan::{Keywords, SessionEffects, EFFECT_WORDS};
use super::Session;
use crate::audit::AuditKind;
use crate::protocol::frame::{BodyReader, Frame};
use crate::protocol::sqlstate;
use crate::protocol::PgError;
use std::sync::Arc;
use tenantgate_config::{PolicyMode, TenantSource};
use tenantgate_policy::{Decision, StatementKind};

/// What to do with a Query or Parse after screening.
pub enum Screen {
    /// Relay it; the decision (when the policy applies) is kept for Bind checks.
    Forward(Option<Arc<Decision>>),
    /// Refuse it with this error.
    Reject(PgError),
    /// Answer it with `tag` after running `sql` on the server instead, or locally when
    /// `sql` is None or no server is needed.
    Answer {
        tag: &'static str,
        sql: Option<String>,
        /// A follow-up whose replies the client never sees.
        hidden: Option<String>,
    },
    /// Not yet: the client has requests the server has not answered, and this session
    /// command must be applied to the state they leave. It waits (in `held`) for their
    /// replies, as it would wait behind them at the server.
    Hold,
}

/// Tenant switch requested with `SET [LOCAL] tenantgate.tenant` / `RESET tenantgate.tenant`.
const SWITCH_SETTING: &str = "tenantgate.tenant";

fn reject(rule: &str, message: String, hint: Option<String>) -> PgError {
    let mut e = PgError::error(
        sqlstate::INSUFFICIENT_PRIVILEGE,
        format!("tenantgate: {message}"),
    )
    .with_detail(format!("rule: {rule}"));
    if let Some(h) = hint {
        e = e.with_hint(h);
    }
    e
}

/// The ErrorResponse for a policy rejection: `42501 tenantgate: <reason>`, rule in DETAIL.
pub fn rejection(decision: &Decision) -> PgError {
    let mut e = reject(
        decision.rule.as_str(),
        decision.reason.clone(),
        decision.hint.clone(),
    );
    e.code = decision.sqlstate;
    e
}

/// The parse tree of the first statement of `sql` (the policy has already parsed it: these
/// session commands are rare, so parsing again is cheaper than keeping every tree).
fn first_statement(sql: &str) -> Option<pg_query::NodeEnum> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).ok()?;
    parsed.protobuf.stmts.into_iter().next()?.stmt?.node
}

/// The value of `SET name = 'value'` / `SET name TO value` (one string or number argument).
fn set_value(sql: &str) -> Option<String> {
    let mut values = set_values(sql)?;
    (values.len() == 1).then(|| values.remove(0))
}

/// The values of `SET name = a, "b", 'c', 42` as Postgres reads them (empty for DEFAULT; None
/// when an argument is anything but a string, identifier or integer).
fn set_values(sql: &str) -> Option<Vec<String>> {
    let stmt = first_statement(sql)?;
    let pg_query::NodeEnum::VariableSetStmt(set) = stmt else {
        return None;
    };
    set.args
        .iter()
        .map(|arg| match arg.node.as_ref()? {
            pg_query::NodeEnum::AConst(c) => match c.val.as_ref()? {
                pg_query::protobuf::a_const::Val::Sval(s) => Some(s.sval.clone()),
                pg_query::protobuf::a_const::Val::Ival(i) => Some(i.ival.to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Words that may start a feature transaction pooling cannot serve.
const SESSION_ONLY: &[&[u8]] = &[
    b"listen",
    b"prepare",
    b"execute",
    b"declare",
    b"advisory_lock",
    b"advisory_unlock",
    b"lastval",
];
/// Words looked for in every statement before anything else, in one pass: those of
/// [`SESSION_ONLY`], then those that may change session state
/// ([`super::sqlscan::EFFECT_WORDS`]).
const SCREEN_LIST: [&[u8]; SESSION_ONLY.len() + EFFECT_WORDS.len()] = {
    let mut all: [&[u8]; SESSION_ONLY.len() + EFFECT_WORDS.len()] =
        [b""; SESSION_ONLY.len() + EFFECT_WORDS.len()];
    let mut i = 0;
    while i < all.len() {
        all[i] = if i < SESSION_ONLY.len() {
            SESSION_ONLY[i]
        } else {
            EFFECT_WORDS[i - SESSION_ONLY.len()]
        };
        i += 1;
    }
    all
};
const SCREEN_WORDS: Keywords = Keywords::new(&SCREEN_LIST);
const SESSION_ONLY_WORDS: u32 = (1 << SESSION_ONLY.len()) - 1;
const SESSION_EFFECT_WORDS: u32 = ((1 << SCREEN_LIST.len()) - 1) & !SESSION_ONLY_WORDS;

/// Cheap test for words that may start a session-only feature (transaction mode).
#[cfg(test)]
fn mentions_session_only_feature(sql: &str) -> bool {
    SCREEN_WORDS.hits(sql.as_bytes()) & SESSION_ONLY_WORDS != 0
}

/// Does `sql` (lower case) contain a call of `name`: the name as a whole word, maybe quoted,
/// then `(` after any spaces and comments?
fn calls_function(sql: &str, name: &str) -> bool {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    sql.match_indices(name).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| sql.as_bytes()[j]);
        let mut rest = sql[i + name.len()..]
            .strip_prefix('"')
            .unwrap_or(&sql[i + name.len()..]);
        loop {
            rest = rest.trim_start();
            if rest.starts_with("/*") {
                rest = after_block_comment(rest);
            } else if let Some(comment) = rest.strip_prefix("--") {
                rest = comment.split_once('\n').map_or("", |(_, r)| r);
            } else {
                break;
            }
        }
        before.is_none_or(|b| !ident(b)) && rest.starts_with('(')
    })
}

/// The text after the (nestable) block comment `s` starts with.
fn after_block_comment(s: &str) -> &str {
    let b = s.as_bytes();
    let (mut depth, mut i) = (0usize, 0);
    while i + 1 < b.len() {
        match &b[i..i + 2] {
            b"/*" => depth += 1,
            b"*/" => depth -= 1,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
        if depth == 0 {
            return &s[i..];
        }
    }
    ""
}

/// Features that need the same server across transactions, which transaction pooling cannot
/// give: refused with 0A000 rather than silently misbehaving.
fn transaction_mode_refusal(decision: &Decision, sql: &str) -> Option<PgError> {
    let feature = decision.statements.iter().find_map(|k| match k {
        StatementKind::Listen => Some("LISTEN"),
        StatementKind::DeclareCursor { with_hold: true } => Some("DECLARE … WITH HOLD"),
        StatementKind::Prepare | StatementKind::Execute => {
            Some("SQL PREPARE/EXECUTE (use protocol-level prepared statements)")
        }
        _ => None,
    });
    let lower = sql.to_ascii_lowercase();
    let feature = feature.or_else(|| {
        // Session-level advisory locks outlive the transaction; the _xact_ variants are fine.
        [
            "pg_advisory_lock",
            "pg_advisory_lock_shared",
            "pg_try_advisory_lock",
            "pg_try_advisory_lock_shared",
            "pg_advisory_unlock",
        ]
        .iter()
        .any(|f| lower.contains(f))
        .then_some("session-level advisory locks (use pg_advisory_xact_lock)")
    });
    // lastval() answers for the server session: another client's (tenant's) last nextval.
    let feature = feature.or_else(|| {
        calls_function(&lower, "lastval").then_some(
            "lastval() (use INSERT … RETURNING, or currval('seq') in the same transaction)",
        )
    })?;
    Some(
        PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("tenantgate: {feature} is not supported in transaction pooling mode"),
        )
        .with_hint(
            "use pool_mode = \"session\" for this database, or a session-mode database entry",
        ),
    )
}

/// `DEALLOCATE [PREPARE] ALL` → Some(None); `DEALLOCATE [PREPARE] name` → Some(Some(name)).
fn deallocate_target(sql: &str) -> Option<Option<String>> {
    let pg_query::NodeEnum::DeallocateStmt(d) = first_statement(sql)? else {
        return None;
    };
    Some((!d.isall && !d.name.is_empty()).then(|| d.name.clone()))
}

/// Allowed-list entries match exactly, or as a prefix when they end in `*`.
fn tenant_allowed(allowed: &[String], tenant: &str) -> bool {
    allowed.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => tenant.starts_with(prefix),
        None => a == tenant,
    })
}

impl Session {
    /// The tenant statements run for now: a `SET LOCAL` override, else the session's.
    pub(super) fn current_tenant(&self) -> Option<&str> {
        self.local_tenant.as_deref().or(self.tenant.as_deref())
    }

    pub(super) fn policy_applies(&self) -> bool {
        !self.bypass_policy && self.app.policy_mode(&self.id.database) != PolicyMode::Off
    }

    fn tx_status(&self) -> u8 {
        self.server.as_ref().map_or(b'I', |s| s.conn.tx_status)
    }

    /// Screens the text of a Query (`simple`) or a Parse.
    pub(super) fn screen_sql(&mut self, sql: &str, simple: bool) -> Screen {
        let words = SCREEN_WORDS.hits(sql.as_bytes());
        let session_only = self.tx_mode && words & SESSION_ONLY_WORDS != 0;
        if !self.policy_applies() && !session_only {
            // Only session commands matter here; skip the parse unless one may be present.
            let fx = if words & SESSION_EFFECT_WORDS == 0 {
                SessionEffects::default()
            } else {
                super::sqlscan::scan_session_effects(sql)
            };
            if !fx.settings && !fx.statements {
                self.screened_effects = Some(fx);
                return Screen::Forward(None);
            }
        }
        let isolation = self.current_placement().isolation();
        let Some(policy) = self.app.policy(&self.id.database, isolation) else {
            return Screen::Forward(None);
        };
        let decision = policy.check(sql, &self.policy_ctx());
        if let [single] = decision.statements.as_slice() {
            if let Some(screen) = self.intercept(single, sql, simple) {
                return screen;
            }
        }
        if session_only {
            if let Some(e) = transaction_mode_refusal(&decision, sql) {
                return Screen::Reject(e);
            }
        }
        if !self.policy_applies() {
            return Screen::Forward(None);
        }
        if decision.is_allowed() {
            self.audit_statement(&decision, "allow");
            return Screen::Forward(Some(decision));
        }
        if self.app.policy_mode(&self.id.database) == PolicyMode::Audit {
            tracing::warn!(user = %self.id.user, tenant = ?self.current_tenant(), rule = decision.rule.as_str(),
                fingerprint = %decision.fingerprint, query = %decision.normalized, "policy would reject (audit mode)");
            self.audit_statement(&decision, "would-reject");
            return Screen::Forward(Some(decision));
        }
        tracing::info!(user = %self.id.user, tenant = ?self.current_tenant(), rule = decision.rule.as_str(),
            fingerprint = %decision.fingerprint, query = %decision.normalized, "policy rejected statement");
        self.audit_statement(&decision, "reject");
        Screen::Reject(rejection(&decision))
    }

    fn audit_statement(&mut self, d: &Decision, verdict: &'static str) {
        self.metrics.decision(verdict, d.rule.as_str());
        if self.app.audit().is_none() {
            return;
        }
        self.audit_pending.push(AuditKind::Statement {
            decision: verdict,
            rule: d.rule.as_str(),
            reason: d.reason.clone(),
            fingerprint: d.fingerprint.clone(),
            query: d.normalized.clone(),
            sqlstate: d.sqlstate,
        });
    }

    /// Session commands the proxy owns, whatever the policy mode.
    fn intercept(&mut self, kind: &StatementKind, sql: &str, simple: bool) -> Option<Screen> {
        if simple && self.is_session_command(kind) {
            // The proxy applies these itself when it reads them, from the state the requests
            // before them left (transaction status, tenant, server): behind an
            // extended-protocol message that fails the server would skip them up to the Sync,
            // and during a COPY it would fail the COPY and run nothing, so the two disagree.
            if self.progress.unsynced || self.progress.copy_in {
                return Some(Screen::Reject(PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "tenantgate: a tenant switch, RESET ALL, DISCARD ALL or DEALLOCATE cannot \
                     follow extended-protocol messages before their Sync or run during COPY; \
                     send the Sync (or end the COPY) first",
                )));
            }
            // Behind unanswered queries (`BEGIN; SET tenantgate.tenant …; ROLLBACK` in one
            // write) it waits for their replies.
            if self.progress.pending > 0 {
                return Some(Screen::Hold);
            }
        }
        self.intercept_now(kind, sql, simple)
    }

    /// Statements [`Session::intercept_now`] applies itself.
    fn is_session_command(&self, kind: &StatementKind) -> bool {
        match kind {
            StatementKind::Set { name, .. } | StatementKind::Reset { name: Some(name) } => {
                name.eq_ignore_ascii_case(SWITCH_SETTING)
            }
            StatementKind::Reset { name: None } => self.tenant.is_some(),
            // With startup settings too: the server's DISCARD ALL would drop them.
            StatementKind::Discard => {
                self.tenant.is_some() || self.tx_mode || !self.startup.is_empty()
            }
            StatementKind::Deallocate => self.tx_mode,
            _ => false,
        }
    }

    fn intercept_now(&mut self, kind: &StatementKind, sql: &str, simple: bool) -> Option<Screen> {
        match kind {
            StatementKind::Set { name, local, .. } if name.eq_ignore_ascii_case(SWITCH_SETTING) => {
                Some(self.switch_tenant(set_value(sql), *local, simple))
            }
            // Schema isolation: the proxy owns search_path. Setting it to exactly what it is
            // (ORMs and tenant libraries do at connect) is answered as a no-op; anything else
            // is left to the policy, which rejects it.
            StatementKind::Set { name, .. }
                if name == super::placement::SEARCH_PATH
                    && simple
                    && self.sets_own_search_path(sql) =>
            {
                Some(Screen::Answer {
                    tag: "SET",
                    sql: None,
                    hidden: None,
                })
            }
            StatementKind::Reset { name: Some(name) }
                if name.eq_ignore_ascii_case(SWITCH_SETTING) =>
            {
                Some(self.switch_tenant(None, false, simple))
            }
            StatementKind::Reset { name: None } if simple && self.tenant.is_some() => {
                self.desired = self.with_tenant(self.startup.clone());
                Some(Screen::Answer {
                    tag: "RESET",
                    sql: Some(format!("RESET ALL; {}", set_sql(&self.desired))),
                    hidden: None,
                })
            }
            StatementKind::Discard
                if simple
                    && (self.tenant.is_some() || self.tx_mode || !self.startup.is_empty())
                    && sql.to_ascii_lowercase().contains("all") =>
            {
                if self.tx_status() != b'I' {
                    return Some(Screen::Reject(PgError::error(
                        "25001",
                        "DISCARD ALL cannot run inside a transaction block",
                    )));
                }
                self.statements.clear();
                self.desired = self.with_tenant(self.startup.clone());
                // DISCARD ALL cannot share an (implicit) transaction with the re-set.
                Some(Screen::Answer {
                    tag: "DISCARD ALL",
                    sql: Some("DISCARD ALL".into()),
                    hidden: Some(set_sql(&self.desired)),
                })
            }
            // Transaction mode: the server knows only the proxy's names for the client's
            // statements, so the proxy deallocates (forgets) them itself.
            // In a failed transaction block Postgres refuses it and deallocates nothing (the
            // proxy waited for the replies before it: the status is exact).
            StatementKind::Deallocate if simple && self.tx_mode && self.tx_status() == b'E' => {
                Some(Screen::Reject(PgError::error(
                    sqlstate::IN_FAILED_SQL_TRANSACTION,
                    "current transaction is aborted, commands ignored until end of transaction block",
                )))
            }
            StatementKind::Deallocate if simple && self.tx_mode => {
                let tag = match deallocate_target(sql) {
                    Some(None) => {
                        self.statements.clear();
                        "DEALLOCATE ALL"
                    }
                    Some(Some(name)) if self.statements.contains(&name) => {
                        self.statements.remove(&name);
                        "DEALLOCATE"
                    }
                    Some(Some(name)) => {
                        return Some(Screen::Reject(PgError::no_such_statement(&name)))
                    }
                    None => return None,
                };
                Some(Screen::Answer {
                    tag,
                    sql: None,
                    hidden: None,
                })
            }
            StatementKind::Reset { .. } | StatementKind::Set { .. } if simple => {
                self.reset_to_startup(kind)
            }
            _ => None,
        }
    }

    /// Is `sql` a `SET search_path` to exactly the path the proxy gave this schema tenant?
    fn sets_own_search_path(&self, sql: &str) -> bool {
        let Some(schema) = self.current_placement().schema() else {
            return false;
        };
        let want = super::placement::search_path(&self.app.config(), schema);
        let want: Vec<&str> = want.split(", ").collect();
        set_values(sql).is_some_and(|got| got == want)
    }

    /// `SET [LOCAL] tenantgate.tenant = 'x'` / `RESET tenantgate.tenant` from a switch user.
    fn switch_tenant(&mut self, value: Option<String>, local: bool, simple: bool) -> Screen {
        let user = &self.id.user_config.config;
        if user.tenant_from != Some(TenantSource::Switch) {
            return Screen::Reject(reject(
                "tenant-setting-write",
                format!(
                    "the tenant of user \"{}\" is fixed and cannot be switched",
                    user.name
                ),
                None,
            ));
        }
        if !simple {
            return Screen::Reject(reject(
                "tenant-setting-write",
                "switch the tenant with a simple query, not a prepared statement".into(),
                None,
            ));
        }
        if let Some(t) = &value {
            // The user's entry as it is now: a reload that narrowed allowed_tenants (or removed
            // the user) applies to sessions already connected too.
            let current = self.app.user(&user.name);
            let allowed = current
                .as_ref()
                .is_some_and(|u| tenant_allowed(&u.config.allowed_tenants, t));
            if !allowed {
                tracing::info!(user = %user.name, tenant = %t, "tenant switch refused");
                return Screen::Reject(reject(
                    "tenant-value-mismatch",
                    format!("user \"{}\" may not act for this tenant", user.name),
                    Some("add the tenant to allowed_tenants".into()),
                ));
            }
        }
        let setting = self.app.config().tenancy.setting.clone();
        let in_tx = self.tx_status() != b'I';
        let resolved =
            match super::placement::resolve(&self.app, &self.id.database, value.as_deref()) {
                Ok(r) => r,
                Err(e) => return Screen::Reject(e),
            };
        if local {
            return self.switch_local_tenant(value, resolved, in_tx, &setting);
        }
        if in_tx {
            return Screen::Reject(PgError::error(
                "25001",
                "tenantgate: switch the tenant outside a transaction block (or use SET LOCAL)",
            ));
        }
        let (placement, pool) = resolved;
        if !self.tx_mode && !Arc::ptr_eq(&pool, &self.id.pool) {
            return Screen::Reject(
                PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "tenantgate: this tenant is in another database; a session-mode connection cannot move there",
                )
                .with_hint("use pool_mode = \"transaction\" for switching between tenant databases, or reconnect"),
            );
        }
        tracing::debug!(user = %user.name, tenant = ?value, ?placement, "tenant switched");
        self.audit_pending.push(AuditKind::TenantSwitch {
            from: self.tenant.clone(),
            to: value.clone(),
        });
        let was_schema = self.placement.schema().is_some();
        self.tenant = value;
        self.metrics
            .set_tenant(&self.app.stats, self.tenant.as_deref());
        self.set_placement(placement, pool);
        let mut sql = match &self.tenant {
            Some(t) => format!("SELECT {}", set_config_call(&setting, t, false)),
            None => format!("RESET {}", super::settings::quote_ident(&setting)),
        };
        if let Some(path) = &self.search_path {
            sql.push_str(&format!(
                "; SELECT {}",
                set_config_call(super::placement::SEARCH_PATH, path, false)
            ));
        } else if was_schema {
            sql.push_str("; RESET search_path");
        }
        Screen::Answer {
            tag: if self.tenant.is_some() {
                "SET"
            } else {
                "RESET"
            },
            sql: Some(sql),
            hidden: None,
        }
    }

    /// `SET LOCAL tenantgate.tenant`: for the rest of the transaction, on the same server and
    /// with the same isolation strategy.
    fn switch_local_tenant(
        &mut self,
        value: Option<String>,
        (placement, pool): (tenantgate_config::Placement, Arc<crate::pool::Pool>),
        in_tx: bool,
        setting: &str,
    ) -> Screen {
        if !in_tx {
            return Screen::Reject(PgError::error(
                "25P01",
                "SET LOCAL tenantgate.tenant can only be used in transaction blocks",
            ));
        }
        let Some(t) = value else {
            return Screen::Reject(PgError::error(
                "22023",
                "SET LOCAL tenantgate.tenant needs a value",
            ));
        };
        let same_server = self
            .server
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(&a.pool, &pool));
        if !same_server || placement.isolation() != self.placement.isolation() {
            return Screen::Reject(
                PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "tenantgate: SET LOCAL cannot move a transaction to a tenant with another isolation strategy or database",
                )
                .with_hint("switch with SET tenantgate.tenant outside the transaction"),
            );
        }
        let mut sql = format!("SELECT {}", set_config_call(setting, &t, true));
        if let Some(schema) = placement.schema() {
            let path = super::placement::search_path(&self.app.config(), schema);
            sql.push_str(&format!(
                ", {}",
                set_config_call(super::placement::SEARCH_PATH, &path, true)
            ));
        }
        self.local_tenant = Some(t);
        self.local_placement = Some(placement);
        self.recheck_statements();
        Screen::Answer {
            tag: "SET",
            sql: Some(sql),
            hidden: None,
        }
    }

    /// Checks a Bind's tenant parameters against the session tenant.
    pub(super) fn screen_bind(&mut self, body: &[u8]) -> Option<PgError> {
        let err = self.check_bind(body)?;
        self.metrics
            .decision("reject", crate::metrics::rule_of(&err));
        if self.app.audit().is_some() {
            let name = BodyReader::new(body).cstr_bytes().ok().and_then(|_| {
                let mut r = BodyReader::new(body);
                r.cstr_bytes().ok()?;
                r.cstr().ok().map(str::to_string)
            });
            let decision =
                name.and_then(|n| self.statements.get(&n).and_then(|s| s.decision.clone()));
            self.audit_pending.push(AuditKind::Bind {
                decision: "reject",
                rule: err
                    .detail
                    .as_deref()
                    .and_then(|d| d.strip_prefix("rule: "))
                    .and_then(tenantgate_policy::Rule::from_id)
                    .map_or("tenant-value-mismatch", |r| r.as_str()),
                reason: err.message.clone(),
                fingerprint: decision
                    .as_ref()
                    .map(|d| d.fingerprint.clone())
                    .unwrap_or_default(),
                query: decision
                    .as_ref()
                    .map(|d| d.normalized.clone())
                    .unwrap_or_default(),
            });
        }
        Some(err)
    }

    /// Session mode: a Bind of a statement whose Parse went out in an earlier segment (a Sync
    /// came between) and is not answered yet. Should that Parse fail or be skipped after an
    /// error, the server runs whatever it held under the name before, which the policy did
    /// not check for this Bind: the Bind waits until the server has answered what came before
    /// it, as it would wait behind those messages at the server anyway.
    pub(super) fn bind_must_wait(&self, frame: &Frame) -> bool {
        if self.tx_mode || self.progress.copy_in || !self.policy_applies() {
            return false;
        }
        // Nothing outstanding: the Parse can no longer be answered; check_bind refuses.
        self.progress.pending > 0
            && bind_statement(frame)
                .and_then(|name| self.statements.get(name))
                .is_some_and(|s| self.unanswered_before(s))
    }

    /// Transaction mode: a Parse of a name whose own Parse went out in an earlier segment and
    /// is not answered yet. The server refuses it (42P05) if that one succeeds, and takes it
    /// if that one fails; which, the proxy (which prepares global names, not the client's)
    /// can only tell from the answer: the Parse waits for it. In session mode the server sees
    /// the client's names itself (see `ClientStatements::queue_successor`).
    pub(super) fn parse_must_wait(&self, frame: &Frame) -> bool {
        if !self.tx_mode || self.progress.copy_in || self.progress.pending == 0 {
            return false;
        }
        super::extended::parse_parse(frame)
            .filter(|msg| !msg.name.is_empty())
            .and_then(|msg| self.statements.get(msg.name))
            .is_some_and(|s| s.pending && s.segment != self.progress.segments)
    }

    /// Transaction mode: a Bind or Describe of the unnamed statement while the server has not
    /// answered an unnamed Parse that went out behind other messages before a Sync. Should one
    /// of those fail, Postgres skipped the Parse and the client's unnamed statement is the older
    /// one (or none: 26000); the proxy learns which from the replies, and so the message waits.
    pub(super) fn unnamed_must_wait(&self, frame: &Frame) -> bool {
        if !self.progress.unnamed_in_doubt || self.progress.pending == 0 || self.progress.copy_in {
            return false;
        }
        match frame.tag {
            b'B' => bind_statement(frame) == Some(""),
            b'D' => super::extended::parse_target(frame) == Some((b'S', "")),
            _ => false,
        }
    }

    /// Session mode: the statement's Parse is unanswered and went out before the last Sync.
    /// (In transaction mode Binds name the statement's text, so they need not wait.)
    fn unanswered_before(&self, stmt: &ClientStatement) -> bool {
        !self.tx_mode && stmt.pending && stmt.segment != self.progress.segments
    }

    fn check_bind(&self, body: &[u8]) -> Option<PgError> {
        if !self.policy_applies() {
            return None;
        }
        let mut r = BodyReader::new(body);
        let (Ok(_portal), Ok(name)) = (r.cstr_bytes(), r.cstr()) else {
            return None;
        };
        // Every statement the policy let through carries its decision. Without one, the
        // server's statement of that name is not one the policy checked for this client: its
        // Parse was refused by the server or skipped after an error (the server kept an older
        // statement), or the client never prepared it.
        let stmt = self.statements.get(name);
        let decision = match stmt.and_then(|s| s.decision.as_ref()) {
            Some(decision) => decision,
            None if self.app.policy_mode(&self.id.database) == PolicyMode::Audit => return None,
            // Recorded without a decision: prepared while the policy was off (then reloaded).
            // (The unnamed statement always has an entry; record 0 means never prepared.)
            None if stmt.is_some_and(|s| s.record != 0) => {
                return Some(
                    PgError::no_such_statement(name)
                        .with_detail(
                            "The statement was prepared before the tenant policy applied \
                             to this connection, so it was never checked.",
                        )
                        .with_hint("Close it (DEALLOCATE) and prepare it again."),
                )
            }
            None => return Some(PgError::no_such_statement(name)),
        };
        let stmt = stmt?;
        if self.unanswered_before(stmt) {
            // See bind_must_wait: what the server holds under the name is not known.
            return Some(PgError::no_such_statement(name).with_detail(
                "The server has not answered the Parse of this statement, sent before a Sync.",
            ));
        }
        if !decision.is_allowed() {
            // Prepared for another tenant or placement and re-checked since (a statement
            // rejected at Parse is never stored).
            if self.app.policy_mode(&self.id.database) == PolicyMode::Audit {
                return None;
            }
            return Some(rejection(decision));
        }
        if decision.tenant_params.is_empty() && decision.tenant_array_params.is_empty() {
            return None;
        }
        let Some(tenant) = self.current_tenant() else {
            return Some(reject(
                "tenant-not-set",
                "the session tenant is not known yet".into(),
                None,
            ));
        };
        let bad = || {
            Some(PgError::error(
                sqlstate::PROTOCOL_VIOLATION,
                "tenantgate: malformed Bind message",
            ))
        };
        let Ok(nformats) = r.i16() else { return bad() };
        let mut formats = Vec::with_capacity(nformats.max(0) as usize);
        for _ in 0..nformats.max(0) {
            let Ok(f) = r.i16() else { return bad() };
            formats.push(f);
        }
        let Ok(nparams) = r.i16() else { return bad() };
        let mut params = Vec::with_capacity(nparams.max(0) as usize);
        for _ in 0..nparams.max(0) {
            let Ok(len) = r.i32() else { return bad() };
            if len < 0 {
                params.push(None);
            } else {
                let Ok(v) = r.bytes(len as usize) else {
                    return bad();
                };
                params.push(Some(v));
            }
        }
        match decision.check_bind(&params, &formats, &stmt.param_types, tenant) {
            Ok(()) => None,
            Err(rej) if self.app.policy_mode(&self.id.database) == PolicyMode::Audit => {
                tracing::warn!(user = %self.id.user, rule = rej.rule.as_str(), "Bind would be rejected (audit mode)");
                None
            }
            Err(rej) => {
                tracing::info!(user = %self.id.user, tenant = %tenant, rule = rej.rule.as_str(), "policy rejected Bind");
                Some(reject(rej.rule.as_str(), rej.reason, None))
            }
        }
    }

    /// A FunctionCall message runs a function by OID, around the SQL policy.
    pub(super) fn screen_function_call(&self) -> Option<PgError> {
        self.policy_applies().then(|| {
            reject(
                "forbidden-statement",
                "the FunctionCall protocol message is not allowed; call functions with SQL".into(),
                None,
            )
        })
    }
}

#[cfg(test)]
#[path = "enforce_tests.rs"]
mod tests;
