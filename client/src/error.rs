//! The client's one error type.
//!
//! A call the server refused or failed is `Error::Status`, with the gRPC
//! code and the server's one-sentence message untouched, so a caller can
//! match on `status.code()`; everything else happened on this side (an
//! address or token that cannot be used, a file that cannot be read, JSON
//! that does not parse, a connection that does not open).
//!
//! Each message is one sentence that already says its cause, so no variant
//! reports a `source()`: a chain printer (`anyhow`'s `{:#}`) would repeat
//! it, and a status's own `Display` is a debug dump. The causes stay in the
//! variants' fields.

use std::path::PathBuf;

/// What went wrong in a call to the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error, or the connection failed during
    /// the call (code `UNAVAILABLE`). Displays as the server's message.
    #[error("{}", status_sentence(.0))]
    Status(tonic::Status),
    /// `server` is not an address a channel can be opened to.
    #[error("invalid server address {server:?}: {}", error_chain(.error))]
    Address {
        server: String,
        error: tonic::transport::Error,
    },
    /// No connection could be opened to `server`.
    #[error("cannot connect to {server}: {}", error_chain(.error))]
    Connect {
        server: String,
        error: tonic::transport::Error,
    },
    /// The token holds characters an HTTP header cannot carry.
    #[error("the token holds characters a header cannot carry")]
    InvalidToken,
    /// A CA certificate was given for a server that is not `https://`.
    #[error(
        "a CA certificate was given, but {server} is not an https:// address: the connection would not use TLS"
    )]
    CaWithoutTls { server: String },
    /// The CA given holds no PEM certificate.
    #[error("the CA certificate given holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    InvalidCa,
    /// A file (a definition, a code file) could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The `.js` files under a definition's folder add up to more than one
    /// deploy call carries (`Client::deploy_file`).
    #[error(
        "the .js files under {} exceed what one deploy carries ({} MiB): deploy from a folder that holds only the integration's files",
        dir.display(),
        isoflow_proto::MAX_MESSAGE_BYTES >> 20
    )]
    DeployTooLarge { dir: PathBuf },
    /// JSON that does not serialize or parse (a run's output, an input).
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    /// `WatchRun` ended without the update that says how the run ended.
    #[error("the updates of run {run_id} ended before the run did")]
    WatchEnded { run_id: String },
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(status)
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Error::Json(error)
    }
}

impl Error {
    /// The server's status, when the server (or the connection during a
    /// call) produced this error.
    #[must_use]
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(status) => Some(status),
            _ => None,
        }
    }

    /// The gRPC code of a status error; `None` for errors on this side.
    #[must_use]
    pub fn code(&self) -> Option<tonic::Code> {
        self.status().map(tonic::Status::code)
    }
}

/// The server's sentence; a status without one (rare: a proxy's) says its
/// code instead. A status made on this side for a failed connection has a
/// terse message ("transport error") and the cause as its source.
fn status_sentence(status: &tonic::Status) -> String {
    let mut text = if status.message().is_empty() {
        status.code().description().to_owned()
    } else {
        status.message().to_owned()
    };
    if let Some(source) = std::error::Error::source(status) {
        let cause = error_chain(source);
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// A transport error's own text says little ("transport error"): the cause
/// (refused, timed out, no such host) is in its sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_displays_as_the_servers_sentence_and_keeps_its_code() {
        let error = Error::from(tonic::Status::not_found("run r-1 does not exist"));
        assert_eq!(error.to_string(), "run r-1 does not exist");
        assert_eq!(error.code(), Some(tonic::Code::NotFound));
        let Error::Status(status) = &error else {
            panic!("expected a status, got {error:?}");
        };
        assert_eq!(status.message(), "run r-1 does not exist");

        let bare = Error::from(tonic::Status::new(tonic::Code::Unavailable, ""));
        assert_eq!(bare.to_string(), tonic::Code::Unavailable.description());
        assert_eq!(Error::InvalidToken.code(), None);
        // The sentence is complete: a chain printer adds nothing to it.
        assert!(std::error::Error::source(&error).is_none());
    }
}
