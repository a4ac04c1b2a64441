//! The driver's error type and its single conversion into a gRPC status.

use tonic::{Code, Status};

/// Everything that can go wrong inside the driver.
///
/// Each variant maps to exactly one gRPC code in [`From<Error> for Status`]; that impl is the
/// only place where driver errors become gRPC statuses.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A request field is missing or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume (or path) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A volume with the same name but incompatible properties exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// There is not enough persistent memory.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Another operation on the same volume is in progress, or a pagination token is invalid.
    #[error("{0}")]
    Aborted(String),
    /// The volume is not in the state the call requires.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The requested size cannot be satisfied.
    #[error("{0}")]
    OutOfRange(String),
    /// The call is not supported by this driver (or in this device mode).
    #[error("{0}")]
    Unimplemented(String),
    /// An external command failed.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        /// The program and its arguments.
        command: String,
        /// Exit status description.
        status: String,
        /// What the program wrote to stderr (trimmed).
        stderr: String,
    },
    /// Any other internal failure (I/O, parse errors of tool output, ...).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for an internal error from anything displayable.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Aborted(_) => Code::Aborted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Command { .. } | Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(format!("I/O error: {e}"))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

/// Result type of the driver.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_survive_conversion() {
        let s: Status = Error::NotFound("volume x not found".into()).into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "volume x not found");
        let s: Status = Error::Command {
            command: "lvs".into(),
            status: "exit status 5".into(),
            stderr: "boom".into(),
        }
        .into();
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().contains("lvs") && s.message().contains("boom"));
        assert_eq!(
            Status::from(Error::Aborted("a".into())).code(),
            Code::Aborted
        );
        assert_eq!(
            Status::from(Error::OutOfRange("a".into())).code(),
            Code::OutOfRange
        );
    }
}
