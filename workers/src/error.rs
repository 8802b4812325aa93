//! The worker's error: a domain rejection (recorded, acked) or an infrastructure failure
//! (retried). Constraint violations become domain errors here, in one place.

use allo_common::error::{DomainError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The command is refused; the reason goes on the command and to the actor.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    #[error("database: {0}")]
    Db(sqlx::Error),
}

impl From<sqlx::Error> for ApplyError {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err {
            // A concurrent create of the same direct pair loses the race on this constraint.
            if db.constraint() == Some("conversations_direct_key_key") {
                return Self::Rejected(DomainError::new(
                    ErrorCode::Conflict,
                    "a direct conversation between these users already exists",
                ));
            }
        }
        Self::Db(err)
    }
}

/// Whether a database error will likely pass if we wait (connection trouble), as opposed to a
/// failure of this command that retrying as-is will not fix.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
        // Serialization failure, deadlock, admin shutdown, cannot connect now: retry.
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("40001" | "40P01" | "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006")
        ),
        _ => false,
    }
}
