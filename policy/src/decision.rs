//! The result of a policy check and its vocabulary (rules, statement kinds).

use serde::Serialize;
use std::fmt;

/// Allow or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Reject,
}

/// The rule that decided. Serialized as its kebab-case id (see [`Rule::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    Allowed,
    TenantFilterMissing,
    TenantValueMismatch,
    TenantNotSet,
    LiteralNotParameter,
    MultiStatement,
    Ddl,
    ForbiddenFunction,
    TenantSettingWrite,
    RoleChange,
    UnknownRelation,
    Copy,
    TooComplex,
    SyntaxError,
    SharedTableWrite,
    TenantColumnWrite,
    ForbiddenStatement,
    CatalogView,
    CrossTenantSchema,
}

impl Rule {
    /// Every rule, for documentation and exhaustive tests.
    pub const ALL: [Rule; 19] = [
        Rule::Allowed,
        Rule::TenantFilterMissing,
        Rule::TenantValueMismatch,
        Rule::TenantNotSet,
        Rule::LiteralNotParameter,
        Rule::MultiStatement,
        Rule::Ddl,
        Rule::ForbiddenFunction,
        Rule::TenantSettingWrite,
        Rule::RoleChange,
        Rule::UnknownRelation,
        Rule::Copy,
        Rule::TooComplex,
        Rule::SyntaxError,
        Rule::SharedTableWrite,
        Rule::TenantColumnWrite,
        Rule::ForbiddenStatement,
        Rule::CatalogView,
        Rule::CrossTenantSchema,
    ];

    /// Stable kebab-case id used in audit records, metrics labels and the corpus.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rule::Allowed => "allowed",
            Rule::TenantFilterMissing => "tenant-filter-missing",
            Rule::TenantValueMismatch => "tenant-value-mismatch",
            Rule::TenantNotSet => "tenant-not-set",
            Rule::LiteralNotParameter => "literal-not-parameter",
            Rule::MultiStatement => "multi-statement",
            Rule::Ddl => "ddl",
            Rule::ForbiddenFunction => "forbidden-function",
            Rule::TenantSettingWrite => "tenant-setting-write",
            Rule::RoleChange => "role-change",
            Rule::UnknownRelation => "unknown-relation",
            Rule::Copy => "copy",
            Rule::TooComplex => "too-complex",
            Rule::SyntaxError => "syntax-error",
            Rule::SharedTableWrite => "shared-table-write",
            Rule::TenantColumnWrite => "tenant-column-write",
            Rule::ForbiddenStatement => "forbidden-statement",
            Rule::CatalogView => "catalog-view",
            Rule::CrossTenantSchema => "cross-tenant-schema",
        }
    }

    /// Parse a kebab-case id (used by the corpus and by config).
    pub fn from_id(id: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == id)
    }

    /// SQLSTATE sent to the client when this rule rejects.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Rule::Allowed => "00000",
            Rule::SyntaxError => "42601",
            Rule::TooComplex => "54001",
            _ => "42501",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a statement is, for the proxy's session bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    /// BEGIN/START/COMMIT/ROLLBACK/SAVEPOINT/RELEASE/ROLLBACK TO.
    Transaction,
    Set {
        name: String,
        local: bool,
        /// `SET name TO DEFAULT` (or `SET TIME ZONE LOCAL`): a reset, `LOCAL` or not.
        to_default: bool,
    },
    /// `None` = RESET ALL.
    Reset {
        name: Option<String>,
    },
    Discard,
    Show,
    Listen,
    Unlisten,
    Notify,
    Prepare,
    Execute,
    Deallocate,
    DeclareCursor {
        with_hold: bool,
    },
    Other,
}

/// The policy's answer for one SQL string.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub rule: Rule,
    pub reason: String,
    pub hint: Option<String>,
    pub sqlstate: &'static str,
    /// pg_query fingerprint in hex; empty if the text did not parse.
    pub fingerprint: String,
    /// pg_query normalized text (constants replaced by `$n`); empty if it did not parse.
    pub normalized: String,
    /// 1-based `$n` positions whose Bind value must equal the session tenant.
    pub tenant_params: Vec<usize>,
    /// Arrays every element of which must equal the session tenant
    /// (`INSERT … SELECT * FROM UNNEST(($n)::varchar(50)[], …)`), checked at Bind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tenant_array_params: Vec<TenantArray>,
    pub statements: Vec<StatementKind>,
}

/// A tenant array parameter of `INSERT … SELECT * FROM UNNEST(…)` (see
/// [`Decision::tenant_array_params`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantArray {
    /// 1-based `$n` position of the array.
    pub param: usize,
    /// The length its `varchar(n)[]` cast cuts values to: a tenant longer than that is refused.
    pub max: Option<usize>,
    /// Its cast's element type: the server converts every element to it (an integer cast
    /// stores `42` for `042`), so an element must equal the tenant in that type too.
    pub cast: ArrayCast,
    /// The other UNNEST arrays' `$n` positions: UNNEST pads shorter arrays with NULL, so none
    /// may have more elements than the tenant array (a NULL tenant otherwise).
    pub others: Vec<usize>,
    /// The longest of the other arrays given as literals: the tenant array needs as many.
    pub min_len: usize,
}

/// The element type a tenant array is cast to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrayCast {
    Text,
    Integer,
    Uuid,
}

/// A Bind-time rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub rule: Rule,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.reason)
    }
}

impl std::error::Error for Rejection {}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    pub(crate) fn reject(rule: Rule, reason: String, hint: Option<String>) -> Decision {
        Decision {
            verdict: Verdict::Reject,
            rule,
            reason,
            hint,
            sqlstate: rule.sqlstate(),
            fingerprint: String::new(),
            normalized: String::new(),
            tenant_params: Vec::new(),
            tenant_array_params: Vec::new(),
            statements: Vec::new(),
        }
    }

    /// Copy of `self` turned into a rejection (keeps fingerprint, normalized, statements).
    pub(crate) fn rejected_as(&self, rule: Rule, reason: String, hint: Option<String>) -> Decision {
        Decision {
            verdict: Verdict::Reject,
            rule,
            reason,
            hint,
            sqlstate: rule.sqlstate(),
            ..self.clone()
        }
    }
}
