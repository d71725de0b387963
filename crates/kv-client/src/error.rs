//! How a client call fails: one [`Error`] enum, mapped from the server's JSON error answers
//! (`api::ErrorBody`) and from transport failures.

use std::fmt;

/// Why a call failed. Every variant says what the caller can do next:
///
/// - [`NotFound`](Error::NotFound), [`PreconditionFailed`](Error::PreconditionFailed) and
///   [`InvalidInput`](Error::InvalidInput) are definite answers; repeating the call cannot
///   change them, so the client never retries them.
/// - [`Unavailable`](Error::Unavailable), [`Transport`](Error::Transport) and
///   [`Timeout`](Error::Timeout) are what remained after retrying until the deadline. A write
///   that ends with one of them may or may not have been applied.
/// - [`Unauthorized`](Error::Unauthorized) and [`Tls`](Error::Tls) say the credentials are
///   missing, wrong or not trusted; they are not retried either: fix the token, certificates
///   or CA and call again.
/// - [`Compacted`](Error::Compacted) ends a watch whose cursor is older than the history the
///   node keeps: read the state again (a scan) and watch from `current`.
/// - [`Server`](Error::Server) is an answer the client does not understand or a server bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The thing asked for does not exist (`404`). Reads and deletes of an absent key are not
    /// errors (they return `None`); this is for other targets, such as an unknown node.
    #[error("not found: {0}")]
    NotFound(String),
    /// A compare-and-set, create or conditional delete found another version (`412`).
    /// `current` is the key's version now, `None` if the key is absent.
    #[error("precondition failed: {}", Current(*current))]
    PreconditionFailed { current: Option<u64> },
    /// No node could serve the request before the deadline: no leader, no quorum, or a
    /// membership change refused for now (`503` and similar). The last server message.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (`400`, `405`, `413` or another `4xx`): bad key, value too
    /// large, bad limit, bad endpoint URL.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// No node answered: connection refused or reset, until the deadline. The message names
    /// the last node tried and how many others failed too.
    #[error("{0}")]
    Transport(String),
    /// The node refused the request's credentials (`401`: no token or an unknown one; `403`:
    /// this client may not do that). The server's message.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// TLS could not be set up. From [`ClientBuilder::build`](crate::ClientBuilder::build): a
    /// CA certificate, client certificate or key that is not valid PEM, or a key that does not
    /// belong to its certificate. From a call: the handshake with a node failed (its
    /// certificate is not signed by a trusted CA or does not name the host, or the node did
    /// not accept this client's certificate); the message names the node.
    #[error("TLS: {0}")]
    Tls(String),
    /// The deadline passed while waiting for an answer.
    #[error("timed out waiting for an answer")]
    Timeout,
    /// A watch asked for changes older than the history the node keeps (`410`, or the
    /// `compacted` error message that ends a stream): changes were missed. Read the state again
    /// and watch from `current`, the oldest cursor the node can resume from.
    #[error("watch history compacted: re-read the state and resume from cursor {current}")]
    Compacted { current: String },
    /// A `5xx` the client does not retry (a server bug or storage failure), or an answer it
    /// cannot read.
    #[error("server error ({status}): {message}")]
    Server { status: u16, message: String },
}

impl Error {
    /// A short, stable name for the kind of failure (`not_found`, `precondition_failed`,
    /// `unavailable`, `invalid_input`, `transport`, `unauthorized`, `tls`, `timeout`,
    /// `compacted`, `server`), for logs, metrics and scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::PreconditionFailed { .. } => "precondition_failed",
            Error::Unavailable(_) => "unavailable",
            Error::InvalidInput(_) => "invalid_input",
            Error::Transport(_) => "transport",
            Error::Unauthorized(_) => "unauthorized",
            Error::Tls(_) => "tls",
            Error::Timeout => "timeout",
            Error::Compacted { .. } => "compacted",
            Error::Server { .. } => "server",
        }
    }

    /// True for the failures that mean "the cluster could not be reached or could not serve":
    /// [`Unavailable`](Error::Unavailable), [`Transport`](Error::Transport),
    /// [`Timeout`](Error::Timeout).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_) | Error::Transport(_) | Error::Timeout
        )
    }
}

/// Displays a precondition's current version.
struct Current(Option<u64>);

impl fmt::Display for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(version) => write!(f, "the key is at version {version}"),
            None => f.write_str("the key does not exist"),
        }
    }
}

/// Shorthand for results of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `err` and its sources on one line (`outer: inner: root`), skipping a source whose text the
/// line already holds (reqwest and hyper repeat themselves).
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = inner.source();
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_happened() {
        assert_eq!(
            Error::PreconditionFailed { current: Some(7) }.to_string(),
            "precondition failed: the key is at version 7"
        );
        assert_eq!(
            Error::PreconditionFailed { current: None }.to_string(),
            "precondition failed: the key does not exist"
        );
        assert_eq!(Error::Timeout.kind(), "timeout");
        assert!(Error::Transport("x".into()).is_unavailable());
        assert!(!Error::InvalidInput("x".into()).is_unavailable());
        assert!(!Error::Tls("x".into()).is_unavailable());
        assert_eq!(Error::Unauthorized("x".into()).kind(), "unauthorized");
        let compacted = Error::Compacted {
            current: "p0:7".into(),
        };
        assert_eq!(compacted.kind(), "compacted");
        assert!(compacted.to_string().contains("p0:7"), "{compacted}");
        assert!(!compacted.is_unavailable());
    }
}
