//! One HTTP attempt: send a request to one node and bring back its whole answer ([`Reply`]), or
//! say how it failed below HTTP ([`Failure`]); and the reading of answers into client types.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, ETAG};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::api::{ErrorBody, HEADER_NODE};
use crate::credentials;
use crate::error::{one_line, Error};

/// Longest server error text kept in an [`Error`] when the answer is not the usual JSON.
const MAX_RAW_MESSAGE: usize = 200;

/// A node's complete answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// An attempt that got no answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The connection could not be made: the request never reached the node.
    Connect(String),
    /// The request may have reached the node, but the answer was lost (reset, closed).
    Lost(String),
    /// No answer within the attempt's time.
    TimedOut,
    /// The TLS handshake was refused, by this client (the node's certificate is not trusted)
    /// or by the node (this client's certificate, or the lack of one).
    Tls(String),
}

/// Sends one request to the node at `base` (a base URL) and reads its answer to the end (so
/// the connection returns to the pool).
pub(crate) async fn send(
    http: &reqwest::Client,
    method: Method,
    base: &str,
    path: &str,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> Result<Reply, Failure> {
    let url = format!("{base}{path}");
    let mut request = http.request(method, &url).headers(headers).timeout(timeout);
    if !body.is_empty() {
        request = request.body(body);
    }
    let response = request.send().await.map_err(|e| failure(base, e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|e| failure(base, e))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub(crate) fn failure(base: &str, err: reqwest::Error) -> Failure {
    if err.is_timeout() {
        return Failure::TimedOut;
    }
    if let Some(tls) = credentials::tls_failure(&err) {
        return Failure::Tls(format!("handshake with {base} failed: {tls}"));
    }
    // The innermost cause says what happened ("Connection refused (os error 111)"); the
    // layers above it are the HTTP stack's.
    let mut root: &(dyn std::error::Error + 'static) = &err;
    while let Some(inner) = root.source() {
        root = inner;
    }
    let cause = one_line(root);
    if err.is_connect() {
        Failure::Connect(format!("cannot connect to {base}: {cause}"))
    } else {
        Failure::Lost(format!("connection to {base} failed: {cause}"))
    }
}

impl Reply {
    /// The node that served the request (`X-KV-Node`), after any forwarding.
    pub(crate) fn served_by(&self) -> Option<u64> {
        self.headers
            .get(HEADER_NODE)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The version in the `ETag` header (`"12"`).
    pub(crate) fn etag_version(&self) -> Result<u64, Error> {
        self.headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.malformed("a value without a numeric ETag version"))
    }

    /// The JSON body as `T`.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| self.malformed(&format!("an unreadable JSON answer ({e})")))
    }

    /// The server's error body; a synthesized one when the answer is not the usual JSON
    /// (e.g. from a proxy).
    pub(crate) fn error_body(&self) -> ErrorBody {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(&self.body);
            let text = text.trim();
            let message = if text.is_empty() {
                self.status.to_string()
            } else {
                let mut cut = text.chars().take(MAX_RAW_MESSAGE).collect::<String>();
                if cut.len() < text.len() {
                    cut.push_str("...");
                }
                format!("{}: {}", self.status, cut.replace('\n', " "))
            };
            ErrorBody {
                error: String::new(),
                message,
                current_version: None,
                leader: None,
            }
        })
    }

    /// The error a non-success answer stands for.
    pub(crate) fn into_error(self) -> Error {
        let body = self.error_body();
        match self.status {
            StatusCode::NOT_FOUND => Error::NotFound(body.message),
            StatusCode::PRECONDITION_FAILED => Error::PreconditionFailed {
                current: body.current_version.flatten(),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Unauthorized(body.message),
            status if crate::retry::is_retryable(status) => Error::Unavailable(body.message),
            status if status.is_client_error() => Error::InvalidInput(body.message),
            status => Error::Server {
                status: status.as_u16(),
                message: body.message,
            },
        }
    }

    fn malformed(&self, what: &str) -> Error {
        Error::Server {
            status: self.status.as_u16(),
            message: format!("the server sent {what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn error_answers_map_to_their_kind() {
        let r = reply(
            412,
            r#"{"error":"precondition_failed","message":"m","current_version":4}"#,
        );
        assert_eq!(
            r.into_error(),
            Error::PreconditionFailed { current: Some(4) }
        );
        let r = reply(
            412,
            r#"{"error":"precondition_failed","message":"m","current_version":null}"#,
        );
        assert_eq!(r.into_error(), Error::PreconditionFailed { current: None });
        let r = reply(413, r#"{"error":"too_large","message":"value too big"}"#);
        assert_eq!(r.into_error(), Error::InvalidInput("value too big".into()));
        let r = reply(405, r#"{"error":"method_not_allowed","message":"nope"}"#);
        assert_eq!(r.into_error(), Error::InvalidInput("nope".into()));
        let r = reply(401, r#"{"error":"unauthorized","message":"no token"}"#);
        assert_eq!(r.into_error(), Error::Unauthorized("no token".into()));
        assert_eq!(
            reply(403, "").into_error(),
            Error::Unauthorized("403 Forbidden".into())
        );
        let r = reply(503, r#"{"error":"unavailable","message":"no leader"}"#);
        assert_eq!(r.into_error(), Error::Unavailable("no leader".into()));
        let r = reply(404, r#"{"error":"no_route","message":"no route"}"#);
        assert_eq!(r.into_error(), Error::NotFound("no route".into()));
        let r = reply(500, "oops\nboom");
        assert_eq!(
            r.into_error(),
            Error::Server {
                status: 500,
                message: "500 Internal Server Error: oops boom".into()
            }
        );
        assert_eq!(
            reply(502, "").into_error(),
            Error::Unavailable("502 Bad Gateway".into())
        );
    }

    #[test]
    fn etag_and_node_headers_are_read() {
        let mut r = reply(200, "v");
        assert!(r.etag_version().is_err());
        r.headers.insert(ETAG, HeaderValue::from_static("\"17\""));
        r.headers.insert(HEADER_NODE, HeaderValue::from_static("3"));
        assert_eq!(r.etag_version(), Ok(17));
        assert_eq!(r.served_by(), Some(3));
    }
}
