//! The node's HTTP/1 front: accepts TCP connections and serves the router on them with the
//! limits a public listener needs and `axum::serve` does not set. It owns connection handling
//! (caps, timeouts, refusing bad request heads, graceful shutdown), not routing.
//!
//! Start from [`serve`] and [`ServerLimits`]. What it adds over `axum::serve`:
//! - at most [`ServerLimits::max_connections`] open connections; the next one is answered
//!   `503 overloaded` and closed;
//! - a request head must arrive within [`ServerLimits::header_read_timeout`] (which also ends
//!   idle keep-alive connections), and a peer that stalls a request body or stops reading our
//!   response for as long is dropped;
//! - every request head is judged before hyper parses it ([`framing`] has the rules,
//!   [`head_guard`] the IO wrapper), so a bad one gets our JSON error instead of hyper's
//!   empty-bodied 400/414/431, and a `#` in the target is refused rather than silently cut.
//!
//! Each connection is served by [`Front::serve_connection`], generic over its IO, so a TLS acceptor
//! can wrap the accepted `TcpStream` first.

mod framing;
mod head_guard;

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::http::StatusCode;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use kv_client::api::ErrorBody;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::Instrument;

use self::framing::HeadLimits;
use self::head_guard::HeadGuard;
use crate::tls::{Presented, Side, Tls};

/// How long in-flight requests may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Longest wait for a peer to take one of our own error answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// After an error answer, how long (and how much) we read and discard what the peer still sends,
/// so that closing with unread bytes does not reset the connection before it read the answer.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// Connections being refused at once (each holds a socket for up to the answer and linger
/// timeouts); past this, new connections over the cap are closed without an answer.
const MAX_REFUSING: usize = 64;
/// Backoff after an accept error (EMFILE and friends), doubling up to the maximum.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Hyper's own defaults, which it would enforce with empty-bodied errors of its own.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;

/// Limits of the HTTP front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// A request head must arrive within this (counted from when the server is ready to read
    /// it, so it also closes idle keep-alive connections). Unless [`ServerLimits::stall_timeout`]
    /// says otherwise, it is also how long a peer may stall a
    /// request body the app is reading, or leave our response unread, before it is dropped.
    pub header_read_timeout: Duration,
    /// How long a peer may stall a request body the app is reading, or leave our response
    /// unread, before it is dropped (`None`: the header read timeout). A backstop for the app's
    /// own body timeout, which answers first when it is shorter.
    pub stall_timeout: Option<Duration>,
    /// Request line plus header fields.
    pub max_head_bytes: usize,
    /// The request target (path and query); at most 65534, hyper's own cap.
    pub max_target_bytes: usize,
    /// Header fields per request.
    pub max_headers: usize,
    /// Targets under this prefix name a key (`/v1/kv/`): one over the target limit is answered
    /// `413 too_large`, as an over-long key is, instead of `414`.
    pub key_prefix: Option<&'static str>,
}

impl Default for ServerLimits {
    /// 4096 connections, 10 s, a 64 KiB head, a 16 KiB target, 100 header fields.
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            stall_timeout: None,
            max_head_bytes: 64 * 1024,
            max_target_bytes: 16 * 1024,
            max_headers: 100,
            key_prefix: None,
        }
    }
}

impl ServerLimits {
    fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            max_head_bytes: self.max_head_bytes,
            // `Framing` lowers this to hyper's own cap.
            max_target_bytes: self.max_target_bytes,
            max_headers: self.max_headers,
            key_prefix: self.key_prefix,
        }
    }

    /// Hyper's settings: our limits are enforced by the guard, so hyper's must never be tighter.
    fn http1(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(true)
            // The guard ends the stream after the last valid request of a connection. Without
            // half-close, hyper would take that for a vanished client and drop the response it
            // still owes.
            .half_close(true)
            .max_buf_size(
                self.max_head_bytes
                    .saturating_add(8192)
                    .max(HYPER_DEFAULT_MAX_BUF),
            );
        // Above its default, hyper allocates header slots per request; only pay when needed.
        if self.max_headers > HYPER_DEFAULT_MAX_HEADERS {
            builder.max_headers(self.max_headers);
        }
        builder
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (idle connections close at once) and returns; connections still busy after
/// 10 s are dropped. With `tls`, every connection starts with a TLS handshake (within the header
/// read timeout) under the current server configuration of that side; a client that does not speak TLS is
/// disconnected. Handlers can extract `ConnectInfo<Conn>`: the peer's address and what its
/// client certificate proves. Accept errors are logged and retried, so this only returns once
/// shut down; the `Result` matches `axum::serve`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    tls: Option<(Arc<Tls>, Side)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let handshake_timeout = limits.header_read_timeout;
    let front = Arc::new(Front {
        app: app.into_make_service_with_connect_info::<Conn>(),
        http: limits.http1(),
        head_limits: limits.head_limits(),
        stall_timeout: limits.stall_timeout.unwrap_or(limits.header_read_timeout),
    });
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a connection task panicked");
                    }
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                // Answers go out in several writes (a head, then body chunks: a streamed batch of
                // forwarded answers); Nagle would hold each small one back for the peer's
                // delayed ACK.
                if let Err(e) = accepted.0.set_nodelay(true) {
                    tracing::debug!(error = %e, "accept: cannot set TCP_NODELAY");
                }
                accepted
            }
            // The peer gave up between connecting and our accept: nothing to back off from.
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "accept: connection gone");
                continue;
            }
            Err(e) => {
                // EMFILE and the like: retrying at once would spin, and log, as fast as we can.
                tracing::warn!(error = %e, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let span = tracing::debug_span!("connection", %peer);
        match open.clone().try_acquire_owned() {
            Ok(permit) => {
                let front = front.clone();
                let stop = stop_rx.clone();
                let tls = tls.clone();
                connections.spawn(
                    async move {
                        let _permit = permit;
                        let config = tls
                            .as_ref()
                            .and_then(|(t, side)| t.server_config_for(*side));
                        let (Some((tls, _)), Some(config)) = (tls, config) else {
                            let conn = Conn {
                                remote: peer,
                                presented: Presented::default(),
                            };
                            front.serve_connection(stream, conn, stop).await;
                            return;
                        };
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!("TLS handshake timed out");
                                    return;
                                }
                            };
                        let presented = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|certs| tls.identify(certs))
                            .unwrap_or_default();
                        let conn = Conn {
                            remote: peer,
                            presented,
                        };
                        front.serve_connection(stream, conn, stop).await;
                    }
                    .instrument(span),
                );
            }
            Err(_) => match refusing.clone().try_acquire_owned() {
                Ok(permit) => {
                    connections.spawn(
                        async move {
                            let _permit = permit;
                            refuse_overloaded(stream).await;
                        }
                        .instrument(span),
                    );
                }
                Err(_) => {
                    tracing::debug!(%peer, "over the connection cap; closed without an answer");
                    drop(stream);
                }
            },
        }
    }
    drop(listener);
    tracing::debug!(
        connections = connections.len(),
        "shutting down the HTTP front"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "connections still busy {SHUTDOWN_GRACE:?} after shutdown; dropping them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// What handlers learn of the connection a request came on (`ConnectInfo<Conn>`).
#[derive(Debug, Clone)]
pub struct Conn {
    pub remote: SocketAddr,
    /// What its client certificate proves, if it presented one.
    pub presented: Presented,
}

impl axum::extract::connect_info::Connected<Conn> for Conn {
    fn connect_info(conn: Conn) -> Self {
        conn
    }
}

/// What every connection of one listener shares.
struct Front {
    app: IntoMakeServiceWithConnectInfo<Router, Conn>,
    http: http1::Builder,
    head_limits: HeadLimits,
    stall_timeout: Duration,
}

impl Front {
    /// Serves one connection until it closes, or until `stop` turns true and the request in
    /// flight (if any) is answered. Bad request heads are answered here, after hyper has
    /// answered every valid request before them.
    async fn serve_connection<S>(&self, io: S, peer: Conn, mut stop: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(service) = self.app.clone().oneshot(peer).await;
        let io = TokioIo::new(HeadGuard::new(io, self.head_limits, self.stall_timeout));
        let mut conn = self
            .http
            .serve_connection(io, TowerToHyperService::new(service));
        let mut stopping = false;
        let mut stop_requested = pin!(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        });
        // `without_shutdown` would consume the connection, and graceful shutdown needs it, so
        // poll it by hand (as hyper-util's `GracefulShutdown` does, which cannot give the IO back).
        let served = poll_fn(|cx| {
            if !stopping && stop_requested.as_mut().poll(cx).is_ready() {
                stopping = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            conn.poll_without_shutdown(cx)
        })
        .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, "connection ended with an error");
            return;
        }
        let parts = conn.into_parts();
        // Hyper consumed every byte it was given, i.e. it answered everything before the
        // violation and did not stop early on its own (a `Connection: close`, a shutdown).
        let hyper_drained = parts.read_buf.is_empty();
        let finished = parts.io.into_inner().finish();
        let mut io = finished.io;
        let Some(violation) = finished.violation else {
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, io.shutdown()).await;
            return;
        };
        match violation.answer() {
            Some((status, code)) if finished.violation_reached && hyper_drained => {
                tracing::debug!(%violation, "refusing a request head");
                answer_and_close(&mut io, status, code, &violation.to_string(), &[]).await;
            }
            _ => {
                tracing::debug!(%violation, "closing the connection");
                let _ = tokio::time::timeout(ANSWER_TIMEOUT, io.shutdown()).await;
            }
        }
    }
}

/// Answers a connection over the cap without reading its request.
async fn refuse_overloaded(mut stream: TcpStream) {
    tracing::debug!("over the connection cap; answering 503");
    answer_and_close(
        &mut stream,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "too many open connections",
        &[("retry-after", "1")],
    )
    .await;
}

/// Writes one JSON error answer on the raw IO and closes it, bounded in time throughout.
async fn answer_and_close<S>(
    io: &mut S,
    status: StatusCode,
    code: &str,
    message: &str,
    extra_headers: &[(&str, &str)],
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let answer = error_response(status, code, message, extra_headers);
    let written = tokio::time::timeout(ANSWER_TIMEOUT, async {
        io.write_all(&answer).await?;
        io.flush().await?;
        io.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => linger(io).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "could not send the error answer"),
        Err(_) => tracing::debug!("the peer did not take the error answer in time"),
    }
}

/// Reads and discards what the peer still sends until it closes, bounded in time and bytes.
async fn linger<S: AsyncRead + Unpin>(io: &mut S) {
    let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
        let mut sink = [0u8; 8192];
        let mut total = 0;
        while total < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// A complete HTTP/1.1 response carrying the API's error body.
fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let body = ErrorBody {
        error: code.to_string(),
        message: message.to_string(),
        current_version: None,
        leader: None,
    };
    let body = serde_json::to_vec(&body).expect("an ErrorBody always serializes");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    for (name, value) in extra_headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Accept errors that concern only the connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests;
