//! Watch streams: [`Client::watch`] and [`Client::watch_key`] follow the changes of keys as a
//! [`Watch`], a `Stream` of [`Watched`] items read from the server's Server-Sent Events answer
//! to `GET /v1/watch` (parsed by `sse`).
//!
//! A watch outlives connections: when one drops, goes silent, or ends with a passing error
//! (`slow_consumer`, `unavailable`), it connects again, to the next node if that one cannot be
//! reached, with `since=` the last cursor it yielded, so no change is missed or yielded twice.
//! Reconnecting follows the client's policy for calls: backoff with jitter between attempts,
//! nodes that fail tried last, and at most the client's timeout of attempts without a message
//! before it gives up.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt as _};
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::api::{WatchError, WatchEvent, WATCH_COMPACTED};
use crate::client::{encode_component, key_path, Client};
use crate::error::{Error, Result};
use crate::retry::{self, Backoff, Deadline};
use crate::routing::Target;
use crate::sse;
use crate::transport::{self, Failure, Reply};

/// A stream that sends nothing for this long (not even a keep-alive comment, which the server
/// sends every few seconds when idle) is taken for dead and replaced by a new connection,
/// unless [`ClientBuilder::watch_idle_timeout`](crate::ClientBuilder::watch_idle_timeout)
/// says otherwise.
pub const DEFAULT_WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest message accepted in a watch stream; a longer one ends the watch with
/// [`Error::Server`].
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// One item of a [`Watch`]: the stream's cursor after it and, unless the server only moved
/// the cursor on (past changes this watch does not match), the change.
///
/// To resume a watch later without missing or repeating a change, pass the `cursor` of the
/// last item handled as `since`. The cursor is opaque: store it and send it back as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub cursor: String,
    /// `None` for a message that only advanced the cursor.
    pub event: Option<WatchEvent>,
}

/// The changes of the keys a watch matches, in order, as a [`Stream`] of
/// `Result<`[`Watched`]`>`: from [`Client::watch`] or [`Client::watch_key`].
///
/// It connects on the first poll and reconnects by itself (see [`Client::watch`]). It yields an
/// `Err` only for what reconnecting cannot fix, and then ends:
/// [`Error::Compacted`] (the cursor is older than the node's history: re-read the state and
/// watch from its `current` cursor); [`Error::InvalidInput`], [`Error::Unauthorized`],
/// [`Error::NotFound`] and [`Error::Tls`] for a watch the nodes refuse; and
/// [`Error::Transport`], [`Error::Unavailable`] or [`Error::Timeout`] when no node served it
/// for the client's timeout on end (start again from the last cursor to keep trying).
///
/// Dropping it closes the connection.
pub struct Watch {
    inner: BoxStream<'static, Result<Watched>>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Stream for Watch {
    type Item = Result<Watched>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl Client {
    /// Follows the changes of every key starting with `prefix` (`""`: all keys), from the
    /// cursor `since` (exclusive) or, without one, from now: `GET /v1/watch?prefix=..`.
    ///
    /// Does no I/O until polled. When a connection drops, stays silent for the watch idle
    /// timeout ([`DEFAULT_WATCH_IDLE_TIMEOUT`]), or the server ends it with `slow_consumer` or `unavailable`,
    /// the watch connects again (to the configured endpoints in turn, the ones that just failed
    /// last, with the client's backoff) and resumes from the last cursor it saw, so each change
    /// is yielded once. A watch started without `since` that loses its connection before the
    /// server sent any cursor starts from "now" again.
    ///
    /// ```no_run
    /// # async fn demo(client: kv_client::Client) -> Result<(), kv_client::Error> {
    /// use futures::StreamExt as _;
    ///
    /// let mut watch = client.watch("app/", None);
    /// while let Some(item) = watch.next().await {
    ///     let item = item?;
    ///     if let Some(event) = item.event {
    ///         println!("{} {} {}", event.kind, event.key, event.version);
    ///     }
    ///     // Persist item.cursor to resume after a restart.
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch(&self, prefix: &str, since: Option<&str>) -> Watch {
        let path = format!("/v1/watch?prefix={}", encode_component(prefix));
        self.start_watch(Ok((path, '&')), since)
    }

    /// Follows the changes of exactly `key`, as [`Client::watch`] does for a prefix:
    /// `GET /v1/watch/{key}`. A key that cannot be put in a URL (`.` or `..`) makes the first
    /// item an [`Error::InvalidInput`].
    pub fn watch_key(&self, key: &str, since: Option<&str>) -> Watch {
        let path = key_path(key).map(|key| (format!("/v1/watch/{key}"), '?'));
        self.start_watch(path, since)
    }

    fn start_watch(&self, path: Result<(String, char)>, since: Option<&str>) -> Watch {
        let (path, separator, refused) = match path {
            Ok((path, separator)) => (path, separator, None),
            Err(err) => (String::new(), '?', Some(err)),
        };
        let state = State {
            client: self.clone(),
            path,
            separator,
            cursor: since.map(str::to_owned),
            refused,
            body: None,
            parser: sse::Parser::new(MAX_MESSAGE_BYTES),
            pending: VecDeque::new(),
            episode: Episode::new(),
            last: Error::Timeout,
            done: false,
        };
        let inner = futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed();
        Watch { inner }
    }
}

/// An open event stream and the node it comes from.
struct Body {
    stream: BoxStream<'static, reqwest::Result<Bytes>>,
    target: Target,
}

/// Reconnect attempts since the watch last made progress.
struct Episode {
    /// Until when attempts go on; a new one starts whenever a stream sends anything (even a
    /// keep-alive): the server is alive.
    deadline: Option<Deadline>,
    /// Pauses between attempts; they grow until a message that is not an error arrives, so a
    /// node that accepts and at once ends the stream is not asked again and again.
    backoff: Backoff,
    /// Attempts since that message: the first one goes at once, later ones after a pause.
    attempts: u32,
}

impl Episode {
    fn new() -> Self {
        Episode {
            deadline: None,
            backoff: Backoff::new(),
            attempts: 0,
        }
    }
}

/// What to do with one message.
enum Step {
    Yield(Watched),
    Skip,
    Reconnect,
    Fail(Error),
}

/// Why an attempt to open the stream failed.
enum Refusal {
    /// Another attempt (perhaps on another node) may succeed.
    Retry(Error),
    /// No attempt will.
    Final(Error),
}

struct State {
    client: Client,
    /// Path and query of the watch, without the cursor.
    path: String,
    /// What comes before `since=` in `path`: `?` or `&`.
    separator: char,
    /// The last cursor seen (or the one the watch started from).
    cursor: Option<String>,
    /// The watch cannot even be asked for: the first item.
    refused: Option<Error>,
    body: Option<Body>,
    parser: sse::Parser,
    /// Messages parsed but not yet handled.
    pending: VecDeque<sse::Message>,
    episode: Episode,
    /// Why the last connection ended or attempt failed, for when reconnecting gives up.
    last: Error,
    done: bool,
}

impl State {
    async fn next(&mut self) -> Option<Result<Watched>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(message) = self.pending.pop_front() {
                match self.handle(message) {
                    Step::Yield(item) => return Some(Ok(item)),
                    Step::Skip => continue,
                    Step::Reconnect => {
                        self.disconnect();
                        continue;
                    }
                    Step::Fail(err) => return self.fail(err),
                }
            }
            if let Some(err) = self.refused.take() {
                return self.fail(err);
            }
            let Some(body) = &mut self.body else {
                match self.connect().await {
                    Ok(body) => self.body = Some(body),
                    Err(err) => return self.fail(err),
                }
                continue;
            };
            let idle_timeout = self.client.inner.watch_idle_timeout;
            match tokio::time::timeout(idle_timeout, body.stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.episode.deadline = None;
                    let mut messages = Vec::new();
                    let parsed = self.parser.feed(&chunk, &mut messages);
                    self.pending.extend(messages);
                    if let Err(too_large) = parsed {
                        // Hand out what came before it, then stop.
                        self.refused = Some(Error::Server {
                            status: 200,
                            message: format!("the server sent {too_large}"),
                        });
                    }
                }
                Ok(Some(Err(err))) => {
                    self.last = match transport::failure(&body.target.base, err) {
                        Failure::Connect(message) | Failure::Lost(message) => {
                            Error::Transport(message)
                        }
                        Failure::TimedOut => Error::Timeout,
                        Failure::Tls(message) => Error::Tls(message),
                    };
                    self.disconnect();
                }
                Ok(None) => {
                    self.last = Error::Unavailable(format!(
                        "the watch stream from {} ended",
                        body.target.base
                    ));
                    self.disconnect();
                }
                Err(_) => {
                    self.last = Error::Unavailable(format!(
                        "the watch stream from {} sent nothing for {idle_timeout:?}",
                        body.target.base,
                    ));
                    self.disconnect();
                }
            }
        }
    }

    fn fail(&mut self, err: Error) -> Option<Result<Watched>> {
        self.done = true;
        self.disconnect();
        Some(Err(err))
    }

    /// Drops the connection and anything half read from it.
    fn disconnect(&mut self) {
        self.body = None;
        self.pending.clear();
        self.parser = sse::Parser::new(MAX_MESSAGE_BYTES);
    }

    fn handle(&mut self, message: sse::Message) -> Step {
        let had_id = message.id.is_some();
        if let Some(id) = message.id {
            self.cursor = Some(id);
        }
        let cursor = self.cursor.clone().unwrap_or_default();
        let Some(data) = message.data else {
            self.episode = Episode::new();
            return Step::Yield(Watched {
                cursor,
                event: None,
            });
        };
        #[derive(Deserialize)]
        struct Tagged {
            #[serde(rename = "type")]
            kind: String,
        }
        let unreadable = |e: serde_json::Error| {
            Step::Fail(Error::Server {
                status: 200,
                message: format!("the server sent an unreadable watch message ({e}): {data}"),
            })
        };
        let kind = match serde_json::from_str::<Tagged>(&data) {
            Ok(tagged) => tagged.kind,
            Err(e) => return unreadable(e),
        };
        match kind.as_str() {
            "put" | "delete" | "expire" => match serde_json::from_str::<WatchEvent>(&data) {
                Ok(event) => {
                    self.episode = Episode::new();
                    Step::Yield(Watched {
                        cursor,
                        event: Some(event),
                    })
                }
                Err(e) => unreadable(e),
            },
            "error" => match serde_json::from_str::<WatchError>(&data) {
                Ok(error) => self.stream_error(error),
                Err(e) => unreadable(e),
            },
            // A kind of message this client does not know: only its cursor counts.
            _ if had_id => {
                self.episode = Episode::new();
                Step::Yield(Watched {
                    cursor,
                    event: None,
                })
            }
            _ => Step::Skip,
        }
    }

    /// The error message a stream ends with.
    fn stream_error(&mut self, error: WatchError) -> Step {
        if error.error == WATCH_COMPACTED {
            return Step::Fail(compacted(error, 200));
        }
        // `slow_consumer`, `unavailable` or another code: the stream ends here; a new one from
        // the last cursor may go on (if not, its answer says why).
        if error.error != "slow_consumer" {
            if let Some(body) = &self.body {
                self.client.inner.router.suspect(&body.target);
            }
        }
        self.last = Error::Unavailable(format!("{}: {}", error.error, error.message));
        Step::Reconnect
    }

    /// Opens the stream, retrying as the client's calls do; the error when no attempt will
    /// succeed, or none did before the episode's deadline.
    async fn connect(&mut self) -> Result<Body> {
        let timeout = self.client.inner.timeout;
        let deadline = *self
            .episode
            .deadline
            .get_or_insert_with(|| Deadline::after(timeout));
        loop {
            if self.episode.attempts > 0
                && (deadline.passed() || !self.episode.backoff.wait(deadline).await)
            {
                return Err(self.last.clone());
            }
            self.episode.attempts += 1;
            match attempt(&self.client, self.url_path(), deadline).await {
                Ok(body) => return Ok(body),
                Err(Refusal::Final(err)) => return Err(err),
                Err(Refusal::Retry(err)) => self.last = err,
            }
        }
    }

    /// Path and query of the next request: the watch's, from the last cursor.
    fn url_path(&self) -> String {
        let mut path = self.path.clone();
        if let Some(cursor) = &self.cursor {
            path.push(self.separator);
            path.push_str("since=");
            path.push_str(&encode_component(cursor));
        }
        path
    }
}

/// One attempt to open the stream at `path` on the best node.
async fn attempt(client: &Client, path: String, deadline: Deadline) -> Result<Body, Refusal> {
    let inner = &*client.inner;
    let target = inner.router.route(None).target;
    let url = format!("{}{path}", target.base);
    let request = inner
        .http
        .get(&url)
        .header(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let remaining = deadline.remaining();
    if remaining.is_zero() {
        return Err(Refusal::Retry(Error::Timeout));
    }
    // No timeout on the request itself: it would cut the stream too.
    let response = match tokio::time::timeout(remaining, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            inner.router.suspect(&target);
            return Err(match transport::failure(&target.base, err) {
                Failure::Connect(message) | Failure::Lost(message) => {
                    Refusal::Retry(Error::Transport(message))
                }
                Failure::TimedOut => Refusal::Retry(Error::Timeout),
                Failure::Tls(message) => Refusal::Final(Error::Tls(message)),
            });
        }
        Err(_) => {
            inner.router.suspect(&target);
            return Err(Refusal::Retry(Error::Timeout));
        }
    };
    inner.router.answered(&target);
    let status = response.status();
    if status == StatusCode::OK {
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
        {
            return Err(Refusal::Final(Error::Server {
                status: 200,
                message: format!(
                    "{} answered the watch with `{content_type}`, not an event stream",
                    target.base
                ),
            }));
        }
        return Ok(Body {
            stream: response.bytes_stream().boxed(),
            target,
        });
    }
    let headers = response.headers().clone();
    let body = match tokio::time::timeout(deadline.remaining(), response.bytes()).await {
        Ok(Ok(body)) => body,
        _ => Bytes::new(),
    };
    let reply = Reply {
        status,
        headers,
        body,
    };
    if status == StatusCode::GONE {
        return Err(Refusal::Final(match reply.json::<WatchError>() {
            Ok(error) => compacted(error, 410),
            Err(err) => err,
        }));
    }
    if retry::is_retryable(status) {
        // Any node serves a watch: let the next attempt go to another one.
        inner.router.suspect(&target);
        return Err(Refusal::Retry(reply.into_error()));
    }
    Err(Refusal::Final(reply.into_error()))
}

/// The error for a `compacted` answer; one without the cursor to resume from is not usable.
fn compacted(error: WatchError, status: u16) -> Error {
    match error.current {
        Some(current) if !current.is_empty() => Error::Compacted { current },
        _ => Error::Server {
            status,
            message: format!(
                "the server said the watch history was compacted without the cursor to \
                 resume from: {}",
                error.message
            ),
        },
    }
}
