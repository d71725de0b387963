//! Where the cluster is: the nodes named by `--endpoints`, the one pooled HTTP client (with
//! the same credentials as kv-client), and the start-up health check.

use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Client, Url};

use crate::error::{one_line, CliError};

/// Connecting never waits longer than this, even with a longer request timeout: a node that
/// does not accept a TCP connection in this time is as good as down.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A node's base URL: `http` or `https`, no query, no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint(String);

impl Endpoint {
    /// Parses `http://host:port`, `https://host:port/prefix`, or a bare `host:port` (read as
    /// `http://`).
    pub fn parse(input: &str) -> Result<Self, String> {
        let text = input.trim();
        if text.is_empty() {
            return Err("empty endpoint".to_owned());
        }
        let with_scheme = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let url =
            Url::parse(&with_scheme).map_err(|e| format!("invalid endpoint `{text}`: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "invalid endpoint `{text}`: scheme must be http or https, not `{}`",
                url.scheme()
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "invalid endpoint `{text}`: no query or fragment allowed"
            ));
        }
        Ok(Endpoint(url.as_str().trim_end_matches('/').to_owned()))
    }

    /// The base URL, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL of `path`, which starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    /// The URL of `key` under `/v1/kv/`. `/` in keys stays a path separator.
    pub fn key_url(&self, key: &str) -> String {
        let mut url = String::with_capacity(self.0.len() + 7 + key.len());
        url.push_str(&self.0);
        url.push_str("/v1/kv/");
        for byte in key.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
                url.push(char::from(byte));
            } else {
                url.push_str(&format!("%{byte:02X}"));
            }
        }
        url
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The process's one HTTP client: pooled keep-alive connections, `timeout` on every request,
/// and the credentials of `kv` (trusted CA, client certificate, token) taken from the
/// kv-client builder, so plain requests present exactly what kv-client would.
pub fn http_client(kv: &kv_client::ClientBuilder, timeout: Duration) -> Result<Client, CliError> {
    Ok(kv
        .http_client_builder()?
        .timeout(timeout)
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("kv-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?)
}

/// Asks every endpoint for `GET /health`; the first that fails to answer `2xx` is reported as
/// [`CliError::Unreachable`].
pub async fn check_health(client: &Client, endpoints: &[Endpoint]) -> Result<(), CliError> {
    for endpoint in endpoints {
        let url = endpoint.url("/health");
        match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                return Err(CliError::Unreachable(format!(
                    "endpoint {endpoint} is not healthy: GET /health answered {}",
                    response.status()
                )));
            }
            Err(err) => {
                return Err(CliError::Unreachable(format!(
                    "endpoint {endpoint} is unreachable: {}",
                    one_line(&err.without_url())
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalizes_base_urls() {
        let cases = [
            ("http://127.0.0.1:7001", "http://127.0.0.1:7001"),
            ("http://127.0.0.1:7001/", "http://127.0.0.1:7001"),
            ("127.0.0.1:7001", "http://127.0.0.1:7001"),
            ("localhost:7001", "http://localhost:7001"),
            (" https://kv.example/api/ ", "https://kv.example/api"),
        ];
        for (input, base) in cases {
            assert_eq!(Endpoint::parse(input).unwrap().as_str(), base, "{input}");
        }
    }

    #[test]
    fn parse_refuses_other_schemes_and_queries() {
        for bad in [
            "",
            "ftp://x",
            "http://",
            "http://x/?a=1",
            "http://x/#f",
            "http://[::1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "`{bad}` should be refused");
        }
    }

    #[test]
    fn key_url_escapes_all_but_unreserved_and_slash() {
        let endpoint = Endpoint::parse("http://h:1").unwrap();
        assert_eq!(endpoint.key_url("bench/42"), "http://h:1/v1/kv/bench/42");
        assert_eq!(
            endpoint.key_url("a b?c#d%"),
            "http://h:1/v1/kv/a%20b%3Fc%23d%25"
        );
        assert_eq!(endpoint.key_url("ü"), "http://h:1/v1/kv/%C3%BC");
    }
}
