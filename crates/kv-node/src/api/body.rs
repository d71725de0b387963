//! Reading a request body within limits: refused at once when its declared length is over the
//! limit, cut off when more arrives, and given up on when it does not arrive in time, so that a
//! client can neither make a node buffer without bound nor hold a request open forever.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;

use crate::error::ApiError;

/// The body, at most `limit` bytes, received within `timeout`. `what` names it in errors.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
    what: &str,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge(format!("{what} exceeds the limit of {limit} bytes"));
    if let Some(declared) = headers.get(header::CONTENT_LENGTH) {
        let declared: u64 = declared
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("bad_body", "Content-Length is not a number"))?;
        if declared > limit as u64 {
            return Err(too_large());
        }
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the {what} did not arrive within {timeout:?}"
        ))),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_length_limit(&e) => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(
            "bad_body",
            format!("could not read the {what}: {e}"),
        )),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}
