//! How a `kv` run fails, and the exit code each failure maps to.

use std::fmt;

/// A failed command. Usage errors never get here: clap reports them itself (exit code 2).
#[derive(Debug)]
pub enum CliError {
    /// An endpoint did not answer `GET /health` with success before any work started.
    Unreachable(String),
    /// Anything else.
    Failed(anyhow::Error),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable(_) => 4,
            CliError::Failed(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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

/// `err` and its sources on one line, `outer: inner: root`, skipping a source whose text the
/// outer message already contains (reqwest and hyper repeat themselves).
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
    fn unreachable_exits_with_4_and_other_failures_with_1() {
        assert_eq!(CliError::Unreachable("x".into()).exit_code(), 4);
        assert_eq!(CliError::from(anyhow::anyhow!("x")).exit_code(), 1);
    }
}
