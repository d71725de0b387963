//! How a `kv` run fails, and the exit code each failure maps to (listed in `kv --help`).

use std::fmt;

use serde_json::json;

/// Exit code: the key (or node) does not exist.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code: a compare-and-set, create or conditional delete found another version.
pub const EXIT_PRECONDITION: u8 = 3;
/// Exit code: the cluster is unavailable or unreachable.
pub const EXIT_UNAVAILABLE: u8 = 4;
/// Exit code: anything else.
pub const EXIT_OTHER: u8 = 5;
/// Exit code: a watch's cursor is older than the history the nodes keep.
pub const EXIT_COMPACTED: u8 = 6;

/// A failed command. Usage errors never get here: clap reports them itself (exit code 2).
#[derive(Debug)]
pub enum CliError {
    /// A kv-client call failed; the exit code follows the error's kind.
    Client(kv_client::Error),
    /// An endpoint did not answer `GET /health` with success before any work started.
    Unreachable(String),
    /// Anything else (local I/O, encoding).
    Failed(anyhow::Error),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(kv_client::Error::NotFound(_)) => EXIT_NOT_FOUND,
            CliError::Client(kv_client::Error::PreconditionFailed { .. }) => EXIT_PRECONDITION,
            CliError::Client(kv_client::Error::Compacted { .. }) => EXIT_COMPACTED,
            CliError::Client(err) if err.is_unavailable() => EXIT_UNAVAILABLE,
            CliError::Client(_) => EXIT_OTHER,
            CliError::Unreachable(_) => EXIT_UNAVAILABLE,
            CliError::Failed(_) => EXIT_OTHER,
        }
    }

    /// The failure as one JSON object, for `--json`: a stable `error` kind, the `message`,
    /// `current_version` for a failed precondition and `current` (the cursor to resume from)
    /// for a compacted watch.
    pub fn json(&self) -> serde_json::Value {
        let kind = match self {
            CliError::Client(err) => err.kind(),
            CliError::Unreachable(_) => "unavailable",
            CliError::Failed(_) => "error",
        };
        let mut object = json!({ "error": kind, "message": self.to_string() });
        if let CliError::Client(kv_client::Error::PreconditionFailed { current }) = self {
            object["current_version"] = json!(current);
        }
        if let CliError::Client(kv_client::Error::Compacted { current }) = self {
            object["current"] = json!(current);
        }
        object
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Client(err) => write!(f, "{err}"),
            CliError::Unreachable(message) => f.write_str(message),
            CliError::Failed(err) => write!(f, "{err:#}"),
        }
    }
}

impl std::error::Error for CliError {}

impl From<anyhow::Error> for CliError {
    fn from(err: anyhow::Error) -> Self {
        CliError::Failed(err)
    }
}

impl From<kv_client::Error> for CliError {
    fn from(err: kv_client::Error) -> Self {
        CliError::Client(err)
    }
}

pub use kv_client::one_line;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn one_line_joins_sources_and_skips_repeats() {
        let err = Layer(
            "request failed",
            Some(Box::new(Layer(
                "failed",
                Some(Box::new(Layer("connection\nrefused", None))),
            ))),
        );
        assert_eq!(one_line(&err), "request failed: connection refused");
    }

    #[test]
    fn exit_codes_follow_the_kind_of_failure() {
        use kv_client::Error;
        let code = |err: Error| CliError::from(err).exit_code();
        assert_eq!(code(Error::NotFound("k".into())), 1);
        assert_eq!(code(Error::PreconditionFailed { current: Some(3) }), 3);
        assert_eq!(code(Error::Unavailable("x".into())), 4);
        assert_eq!(code(Error::Transport("x".into())), 4);
        assert_eq!(code(Error::Timeout), 4);
        assert_eq!(code(Error::InvalidInput("x".into())), 5);
        assert_eq!(
            code(Error::Server {
                status: 500,
                message: "x".into()
            }),
            5
        );
        assert_eq!(CliError::Unreachable("x".into()).exit_code(), 4);
        assert_eq!(CliError::from(anyhow::anyhow!("x")).exit_code(), 5);
        assert_eq!(
            code(Error::Compacted {
                current: "c".into()
            }),
            6
        );
    }

    #[test]
    fn json_errors_carry_kind_message_and_current_version() {
        let err = CliError::from(kv_client::Error::PreconditionFailed { current: None });
        let json = err.json();
        assert_eq!(json["error"], "precondition_failed");
        assert_eq!(json["current_version"], serde_json::Value::Null);
        assert!(json["message"].as_str().unwrap().contains("does not exist"));
        assert_eq!(
            CliError::Unreachable("down".into()).json()["error"],
            "unavailable"
        );
        let err = CliError::from(kv_client::Error::Compacted {
            current: "p0:9".into(),
        });
        assert_eq!(err.json()["error"], "compacted");
        assert_eq!(err.json()["current"], "p0:9");
        assert!(err.to_string().contains("p0:9"), "{err}");
    }
}
