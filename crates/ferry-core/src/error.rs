//! The one error type of Ferry's library crates, with kinds a caller can act on.

/// An error with a kind a caller can act on and a message that names what went wrong
/// and what to do about it. Messages never contain credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A named thing (instance, session, query, table) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is malformed: a bad URL, name, option or parameter.
    #[error("{0}")]
    InvalidInput(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller did not say who they are, or their credentials are wrong or expired.
    #[error("{0}")]
    Unauthenticated(String),
    /// The engine or connector cannot do this.
    #[error("{0}")]
    Unsupported(String),
    /// The database could not be reached or refused the connection.
    #[error("{0}")]
    Connection(String),
    /// The database reported an error for a statement (syntax, constraint, missing table…).
    #[error("{0}")]
    Engine(String),
    /// The request is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// A limit was reached (connection cap, queue); retrying later may succeed.
    #[error("{0}")]
    Busy(String),
    /// Something took longer than allowed and was stopped.
    #[error("{0}")]
    Timeout(String),
    /// The work was cancelled by a user or a policy.
    #[error("{0}")]
    Cancelled(String),
    /// A conflict with existing state, such as a duplicate name.
    #[error("{0}")]
    Conflict(String),
    /// A bug in Ferry.
    #[error("{0}")]
    Internal(String),
}

/// Result with Ferry's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stable machine-readable code, used in API error bodies and CLI output.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::InvalidInput(_) => "invalid_input",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Unsupported(_) => "unsupported",
            Error::Connection(_) => "connection",
            Error::Engine(_) => "engine",
            Error::TooLarge(_) => "too_large",
            Error::Busy(_) => "busy",
            Error::Timeout(_) => "timeout",
            Error::Cancelled(_) => "cancelled",
            Error::Conflict(_) => "conflict",
            Error::Internal(_) => "internal",
        }
    }

    /// The message without the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::NotFound(m)
            | Error::InvalidInput(m)
            | Error::PermissionDenied(m)
            | Error::Unauthenticated(m)
            | Error::Unsupported(m)
            | Error::Connection(m)
            | Error::Engine(m)
            | Error::TooLarge(m)
            | Error::Busy(m)
            | Error::Timeout(m)
            | Error::Cancelled(m)
            | Error::Conflict(m)
            | Error::Internal(m) => m,
        }
    }

    /// The same kind with context put in front of the message.
    pub fn context(self, context: impl std::fmt::Display) -> Error {
        let wrap = |m: String| format!("{context}: {m}");
        match self {
            Error::NotFound(m) => Error::NotFound(wrap(m)),
            Error::InvalidInput(m) => Error::InvalidInput(wrap(m)),
            Error::PermissionDenied(m) => Error::PermissionDenied(wrap(m)),
            Error::Unauthenticated(m) => Error::Unauthenticated(wrap(m)),
            Error::Unsupported(m) => Error::Unsupported(wrap(m)),
            Error::Connection(m) => Error::Connection(wrap(m)),
            Error::Engine(m) => Error::Engine(wrap(m)),
            Error::TooLarge(m) => Error::TooLarge(wrap(m)),
            Error::Busy(m) => Error::Busy(wrap(m)),
            Error::Timeout(m) => Error::Timeout(wrap(m)),
            Error::Cancelled(m) => Error::Cancelled(wrap(m)),
            Error::Conflict(m) => Error::Conflict(wrap(m)),
            Error::Internal(m) => Error::Internal(wrap(m)),
        }
    }
}
