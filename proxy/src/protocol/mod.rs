//! PostgreSQL v3 wire protocol: framing, startup packets, and the messages the proxy writes.

pub mod backend;
pub mod frame;
pub mod startup;

pub use backend::{PgError, Severity};
pub use frame::{BodyReader, Frame, FrameError};

/// SQLSTATE codes the proxy reports itself.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CANNOT_CONNECT: &str = "08001";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const QUERY_CANCELED: &str = "57014";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
}
