//! The one place where failures become HTTP answers: every error is JSON
//! `{"error": code, "message": text}` with the status its kind calls for.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kv_client::api::ErrorBody;
use kv_raft::GroupError;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

/// A peer's HTTP answer to a request this node forwarded, read whole.
#[derive(Debug, Clone)]
pub struct PeerAnswer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: bytes::Bytes,
}

/// Why a request failed, in terms a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; `code` names what is wrong.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// The key (or route) does not exist.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// A method the route does not support.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// `If-Match` / `If-None-Match` did not hold; nothing changed.
    #[error("precondition failed")]
    PreconditionFailed { current: Option<u64> },
    /// The request conflicts with the cluster's state (e.g. a member id taken by another
    /// address); `code` names the conflict.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Key or value over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// No leader or no quorum right now; retry later.
    #[error("{message}")]
    Unavailable {
        message: String,
        leader: Option<kv_ring::NodeId>,
    },
    /// No credentials, or unknown ones.
    #[error("{0}")]
    Unauthorized(String),
    /// The credentials do not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// The request (its body) did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// This node is doing as much of this kind of work as it accepts; retry later.
    #[error("{0}")]
    Overloaded(String),
    /// The request routed by an older map (`X-KV-Epoch`) to a node that does not host the key's
    /// partition: `421` with the routes of this node's map.
    #[error("this node does not serve the key's partition under map epoch {}", .0.epoch)]
    Misdirected(Box<kv_client::api::Routes>),
    /// A peer's error answer to a forwarded operation, passed on as it is.
    #[error("a peer answered {}", .0.status)]
    Relayed(Box<PeerAnswer>),
    /// A bug or a storage failure; details are logged, not sent.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::Unavailable {
            message: message.into(),
            leader: None,
        }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::NotFound { code, .. } => (StatusCode::NOT_FOUND, code),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::PreconditionFailed { .. } => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed")
            }
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, "misdirected"),
            ApiError::Relayed(answer) => (answer.status, "relayed"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Relayed(answer) = self {
            let mut resp = Response::new(axum::body::Body::from(answer.body));
            *resp.status_mut() = answer.status;
            *resp.headers_mut() = answer.headers;
            return resp;
        }
        let (status, code) = self.parts();
        if let ApiError::Misdirected(routes) = &self {
            let body = kv_client::api::Misdirected {
                error: code.to_string(),
                message: self.to_string(),
                epoch: routes.epoch,
                routes: (**routes).clone(),
            };
            return (status, Json(body)).into_response();
        }
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error; see the node's log".to_string()
            }
            ApiError::PreconditionFailed { current } => match current {
                Some(v) => format!("precondition failed: current version is {v}"),
                None => "precondition failed: the key does not exist".to_string(),
            },
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: code.to_string(),
            message,
            current_version: match &self {
                ApiError::PreconditionFailed { current } => Some(*current),
                _ => None,
            },
            leader: match &self {
                ApiError::Unavailable { leader, .. } => leader.map(u64::from),
                _ => None,
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::NotLeader { leader } => ApiError::Unavailable {
                message: "this node lost leadership; retry".into(),
                leader: leader.map(|(id, _)| id),
            },
            GroupError::Unavailable(m) => ApiError::unavailable(m),
            GroupError::UnknownGroup(g) => {
                ApiError::unavailable(format!("partition group {g} is not hosted on this node"))
            }
            GroupError::BadRequest(m) => ApiError::bad_request("bad_request", m),
            GroupError::Storage(e) => ApiError::Internal(format!("storage: {e}")),
            GroupError::Stopped(m) => ApiError::unavailable(format!("replication stopped: {m}")),
        }
    }
}
