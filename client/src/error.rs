//! The client's one error type.
//!
//! A call the server refused or failed is `Error::Status`, with the gRPC
//! code and the server's one-sentence message untouched, so a caller can
//! match on `status.code()`, and the `google.rpc` details the server sent
//! ([`Error::details`]; a definition's problems one by one with
//! [`Error::problems`]); everything else happened on this side (an
//! address or token that cannot be used, a file that cannot be read, JSON
//! that does not parse, a connection that does not open).
//!
//! Each message is one sentence that already says its cause, so no variant
//! reports a `source()`: a chain printer (`anyhow`'s `{:#}`) would repeat
//! it, and a status's own `Display` is a debug dump. The causes stay in the
//! variants' fields.

use std::path::PathBuf;

use tonic_types::{ErrorDetails, StatusExt};

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
        /// The address as given.
        server: String,
        /// Why it is not one.
        error: tonic::transport::Error,
    },
    /// No connection could be opened to `server`.
    #[error("cannot connect to {server}: {}", error_chain(.error))]
    Connect {
        /// The server's address.
        server: String,
        /// Why (refused, timed out, a certificate not trusted).
        error: tonic::transport::Error,
    },
    /// The token holds characters an HTTP header cannot carry.
    #[error("the token holds characters a header cannot carry")]
    InvalidToken,
    /// A CA certificate was given for a server that is not `https://`.
    #[error(
        "a CA certificate was given, but {server} is not an https:// address: the connection would not use TLS"
    )]
    CaWithoutTls {
        /// The server's address.
        server: String,
    },
    /// The CA given holds no PEM certificate.
    #[error("the CA certificate given holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    InvalidCa,
    /// A file (a definition, a code file) could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        error: std::io::Error,
    },
    /// The `.js` files under a definition's folder add up to more than one
    /// deploy call carries (`Client::deploy_file`).
    #[error(
        "the .js files under {} exceed what one deploy carries ({} MiB): deploy from a folder that holds only the integration's files",
        dir.display(),
        isoflow_proto::MAX_MESSAGE_BYTES >> 20
    )]
    DeployTooLarge {
        /// The definition's folder.
        dir: PathBuf,
    },
    /// JSON that does not serialize or parse (a run's output, an input).
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    /// `WatchRun` ended without the update that says how the run ended.
    #[error("the updates of run {run_id} ended before the run did")]
    WatchEnded {
        /// The run watched.
        run_id: String,
    },
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

    /// The `google.rpc` details the server sent with a status error
    /// (`BadRequest`, `ErrorInfo`, ...); empty for errors on this side and
    /// for statuses without details.
    #[must_use]
    pub fn details(&self) -> ErrorDetails {
        self.status()
            .map_or_else(ErrorDetails::new, StatusExt::get_error_details)
    }

    /// The `ErrorInfo` reason of a status error: `INVALID_DEFINITION` for
    /// a definition that is wrong.
    #[must_use]
    pub fn reason(&self) -> Option<String> {
        self.details().error_info().map(|info| info.reason.clone())
    }

    /// A refused definition's problems, one per `BadRequest` violation, in
    /// the order of their lines; empty for any other error.
    #[must_use]
    pub fn problems(&self) -> Vec<Problem> {
        let details = self.details();
        let Some(bad_request) = details.bad_request() else {
            return Vec::new();
        };
        bad_request
            .field_violations
            .iter()
            .map(|v| Problem::from_violation(&v.field, &v.description))
            .collect()
    }
}

/// One problem of a definition the server refused ([`Error::problems`]):
/// where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The definition's name as deployed (the file name).
    pub file: String,
    /// 1-based line; 0 when the problem has no line (a code file that was
    /// not sent).
    pub line: u32,
    /// The step's id (or `#2` for a step without a usable one), when the
    /// problem is in a step.
    pub step: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A `BadRequest` violation as the server writes it: `field` is
    /// `file:line` (or the file alone), `description` the rest of the
    /// sentence, `step "id": ` first when the problem is in a step.
    fn from_violation(field: &str, description: &str) -> Problem {
        let (file, line) = match field.rsplit_once(':') {
            Some((file, line)) if line.parse::<u32>().is_ok() => {
                (file.to_owned(), line.parse().unwrap_or(0))
            }
            _ => (field.to_owned(), 0),
        };
        let (step, message) = match description.strip_prefix("step ") {
            Some(rest) => match rest.split_once(": ") {
                Some((step, message)) => (Some(step.trim_matches('"').to_owned()), message),
                None => (None, description),
            },
            None => (None, description),
        };
        Problem {
            file,
            line,
            step,
            message: message.to_owned(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(step) = &self.step {
            write!(f, ": step {step:?}")?;
        }
        write!(f, ": {}", self.message)
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
    use tonic_types::FieldViolation;

    use super::*;

    #[test]
    fn a_refused_definitions_problems_come_from_its_details() {
        let mut details = ErrorDetails::with_bad_request(vec![
            FieldViolation::new(
                "flows/orders.yaml:12",
                r#"step "post": unknown step "fech""#,
            ),
            FieldViolation::new("flows/orders.yaml:3", "name is empty"),
            FieldViolation::new("orders.yaml", r#"code file "t.js" was not sent"#),
        ]);
        details.set_error_info(
            "INVALID_DEFINITION",
            "isoflow",
            std::collections::HashMap::<String, String>::new(),
        );
        let error = Error::from(tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "flows/orders.yaml:12: step \"post\": ...",
            details,
        ));
        assert_eq!(error.reason().as_deref(), Some("INVALID_DEFINITION"));
        let problems = error.problems();
        assert_eq!(
            problems[0],
            Problem {
                file: "flows/orders.yaml".into(),
                line: 12,
                step: Some("post".into()),
                message: r#"unknown step "fech""#.into(),
            }
        );
        assert_eq!(
            problems[0].to_string(),
            r#"flows/orders.yaml:12: step "post": unknown step "fech""#
        );
        assert_eq!((problems[1].line, problems[1].step.as_deref()), (3, None));
        assert_eq!(
            (problems[2].file.as_str(), problems[2].line),
            ("orders.yaml", 0)
        );

        let plain = Error::from(tonic::Status::not_found("run r-1 does not exist"));
        assert!(plain.problems().is_empty());
        assert_eq!(plain.reason(), None);
    }

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
