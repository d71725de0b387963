//! HTTP/1 request framing, read side only: where each request head ends and how long the body
//! after it is, so that every head can be judged before hyper parses it.
//!
//! [`Framing`] is a synchronous state machine without I/O: feed it the bytes that have arrived
//! and not been handed on yet, and it says how many of them may go on now, or which
//! [`Violation`] ends the connection. A head goes on only whole and only once it passed every
//! check; body bytes go on as they arrive. The rules are hyper's own (httparse for heads, chunk
//! sizes and trailers; hyper's `Content-Length` / `Transfer-Encoding` rules), so whatever passes
//! hyper parses as the same request. It refuses, in addition, what hyper would mangle (`#` in the
//! target, which the `http` crate silently cuts off) or accept ambiguously (both
//! `Content-Length` and `Transfer-Encoding`, the request-smuggling shape).
//!
//! Upgrades are not followed: after a request asking for one, the next bytes are read as the next
//! request. That matches the server, which serves connections without upgrade support.

use axum::http::{Method, StatusCode, Uri};

/// The HTTP/2 prior-knowledge preface starts with this request line; such connections pass
/// through untouched (their framing is not HTTP/1's).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Longest chunk-size line (size and extensions) held while waiting for its end. Hyper refuses
/// more than 16 KiB of chunk extensions per body anyway.
const MAX_CHUNK_LINE: usize = 16 * 1024 + 64;

/// Hyper answers longer targets itself (an empty 414), so a larger limit is lowered to this.
const HYPER_MAX_TARGET: usize = 65534;

/// Hyper answers header names this long itself (an empty 431).
const HYPER_MAX_HEADER_NAME: usize = 1 << 16;

/// Hyper refuses larger `Content-Length` values (it reserves the two above for its own use).
const HYPER_MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;

/// What every request head must fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadLimits {
    /// Request line plus header fields, counting any empty lines sent before the request line.
    pub(crate) max_head_bytes: usize,
    /// The request target (path and query), at most [`HYPER_MAX_TARGET`].
    pub(crate) max_target_bytes: usize,
    /// Header fields per head (and trailer fields per chunked body).
    pub(crate) max_headers: usize,
    /// Targets under this prefix name a key: one too long is answered as the key route answers
    /// an over-long key (413), whatever its length.
    pub(crate) key_prefix: Option<&'static str>,
}

impl HeadLimits {
    /// The violation of a target, starting with `target`, that is over the limit.
    fn target_too_long(&self, target: &[u8]) -> Violation {
        match self.key_prefix {
            Some(prefix) if target.starts_with(prefix.as_bytes()) => Violation::KeyTooLong,
            _ => Violation::TargetTooLong {
                limit: self.max_target_bytes,
            },
        }
    }
}

/// Why a connection stops being read. `Display` is the message sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Violation {
    /// Not a valid HTTP/1 request head (or one hyper would refuse).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The target holds a `#`; hyper would cut the target there and serve another key.
    #[error(
        "malformed request: the request target contains '#', which is never sent in a request \
         (a key holding '#' must percent-encode it as %23)"
    )]
    Fragment,
    #[error("the request target is longer than {limit} bytes")]
    TargetTooLong { limit: usize },
    /// A target too long under [`HeadLimits::key_prefix`]: its key is over any key limit.
    #[error("the key in the path exceeds the limit on key size")]
    KeyTooLong,
    #[error("the request head (request line and header fields) is larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("the request has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    /// A body's framing is broken. Its request is already with the app, which sees the body end
    /// early and answers it, so this is never answered separately: the connection just closes.
    #[error("malformed request body: {0}")]
    Body(&'static str),
}

impl Violation {
    /// The status and stable error code to answer with, or `None` when the request it belongs
    /// to is answered by the app.
    pub(crate) fn answer(&self) -> Option<(StatusCode, &'static str)> {
        match self {
            Violation::Malformed(_) | Violation::Fragment => {
                Some((StatusCode::BAD_REQUEST, "bad_request"))
            }
            Violation::TargetTooLong { .. } => Some((StatusCode::URI_TOO_LONG, "uri_too_long")),
            Violation::KeyTooLong => Some((StatusCode::PAYLOAD_TOO_LARGE, "too_large")),
            Violation::HeadTooLarge { .. } | Violation::TooManyHeaders { .. } => Some((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            )),
            Violation::Body(_) => None,
        }
    }
}

/// What one [`Framing::feed`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fed {
    /// How many leading bytes of the fed slice may be handed on now.
    pub(crate) pass: usize,
    /// Why the bytes after `pass` may never be handed on.
    pub(crate) violation: Option<Violation>,
}

/// Tracks one connection's request stream. Invariant: the slice given to [`Framing::feed`]
/// always starts at the first byte not yet passed, so the offsets kept in the state (how far a
/// held head was scanned) stay valid between calls.
#[derive(Debug)]
pub(crate) struct Framing {
    limits: HeadLimits,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Nothing read yet: HTTP/1, or HTTP/2 with prior knowledge?
    Start,
    /// Holding the bytes of a request head until it is whole.
    Head(HeadScan),
    Body {
        remaining: u64,
    },
    /// Holding a chunk-size line until its CRLF; `scanned` bytes of it hold no LF.
    ChunkSize {
        scanned: usize,
    },
    ChunkData {
        remaining: u64,
    },
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Holding the trailer section after the last chunk until its empty line.
    Trailers {
        scanned: usize,
        lines: Lines,
    },
    Passthrough,
    /// A violation was found; nothing passes any more.
    Stopped,
}

enum Step {
    /// Pass this many bytes (0 when only the state changed).
    Pass(usize),
    /// Nothing more can pass before more bytes arrive.
    Wait,
    Stop(Violation),
}

impl Framing {
    pub(crate) fn new(limits: HeadLimits) -> Self {
        let limits = HeadLimits {
            max_target_bytes: limits.max_target_bytes.min(HYPER_MAX_TARGET),
            ..limits
        };
        Framing {
            limits,
            state: State::Start,
        }
    }

    /// Judges `pending`: every byte received and not yet passed, oldest first. The caller hands
    /// on the first `pass` bytes, keeps the rest, and calls again with them followed by whatever
    /// arrives next. After a violation nothing passes again.
    pub(crate) fn feed(&mut self, pending: &[u8]) -> Fed {
        let mut pass = 0;
        while pass < pending.len() {
            match self.step(&pending[pass..]) {
                Step::Pass(n) => pass += n,
                Step::Wait => break,
                Step::Stop(violation) => {
                    self.state = State::Stopped;
                    return Fed {
                        pass,
                        violation: Some(violation),
                    };
                }
            }
        }
        Fed {
            pass,
            violation: None,
        }
    }

    /// True while a request body is expected, i.e. the peer owes us bytes of a request that is
    /// already being served (head timing is hyper's `header_read_timeout`).
    pub(crate) fn in_body(&self) -> bool {
        matches!(
            self.state,
            State::Body { .. }
                | State::ChunkSize { .. }
                | State::ChunkData { .. }
                | State::ChunkEnd
                | State::Trailers { .. }
        )
    }

    fn step(&mut self, buf: &[u8]) -> Step {
        let limits = self.limits;
        match &mut self.state {
            State::Start => {
                let n = buf.len().min(H2_PREFACE_START.len());
                if buf[..n] != H2_PREFACE_START[..n] {
                    self.state = State::Head(HeadScan::default());
                    Step::Pass(0)
                } else if n == H2_PREFACE_START.len() {
                    self.state = State::Passthrough;
                    Step::Pass(0)
                } else {
                    Step::Wait
                }
            }
            State::Head(scan) => match scan.advance(buf, &limits) {
                Ok(None) => Step::Wait,
                Ok(Some((len, body))) => {
                    self.state = match body {
                        BodyKind::None => State::Head(HeadScan::default()),
                        BodyKind::Length(remaining) => State::Body { remaining },
                        BodyKind::Chunked => State::ChunkSize { scanned: 0 },
                    };
                    Step::Pass(len)
                }
                Err(violation) => Step::Stop(violation),
            },
            State::Body { remaining } => {
                let n = take(remaining, buf.len());
                if *remaining == 0 {
                    self.state = State::Head(HeadScan::default());
                }
                Step::Pass(n)
            }
            State::ChunkSize { scanned } => {
                let Some(lf) = buf[*scanned..].iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Step::Stop(Violation::Body("chunk size line too long"));
                    }
                    *scanned = buf.len();
                    return Step::Wait;
                };
                let lf = *scanned + lf;
                if lf >= MAX_CHUNK_LINE {
                    return Step::Stop(Violation::Body("chunk size line too long"));
                }
                // httparse would take a bare LF inside an extension as part of it; hyper refuses
                // it, and so do we, so both read the same chunk boundaries.
                if lf == 0 || buf[lf - 1] != b'\r' {
                    return Step::Stop(Violation::Body("chunk size line does not end in CRLF"));
                }
                match httparse::parse_chunk_size(&buf[..=lf]) {
                    Ok(httparse::Status::Complete((n, size))) if n == lf + 1 => {
                        self.state = if size == 0 {
                            State::Trailers {
                                scanned: 0,
                                lines: Lines::default(),
                            }
                        } else {
                            State::ChunkData { remaining: size }
                        };
                        Step::Pass(n)
                    }
                    _ => Step::Stop(Violation::Body("invalid chunk size line")),
                }
            }
            State::ChunkData { remaining } => {
                let n = take(remaining, buf.len());
                if *remaining == 0 {
                    self.state = State::ChunkEnd;
                }
                Step::Pass(n)
            }
            State::ChunkEnd => match buf {
                [b'\r'] => Step::Wait,
                [b'\r', b'\n', ..] => {
                    self.state = State::ChunkSize { scanned: 0 };
                    Step::Pass(2)
                }
                _ => Step::Stop(Violation::Body("chunk data is not followed by CRLF")),
            },
            State::Trailers { scanned, lines } => {
                while *scanned < buf.len() {
                    let i = *scanned;
                    if i >= limits.max_head_bytes {
                        return Step::Stop(Violation::Body("trailer section too large"));
                    }
                    *scanned += 1;
                    if buf[i] != b'\n' {
                        continue;
                    }
                    if lines.ends_block(buf, i) {
                        let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
                        return match httparse::parse_headers(&buf[..=i], &mut fields) {
                            Ok(httparse::Status::Complete((n, _))) if n == i + 1 => {
                                self.state = State::Head(HeadScan::default());
                                Step::Pass(n)
                            }
                            _ => Step::Stop(Violation::Body("malformed trailer section")),
                        };
                    }
                    if lines.count > limits.max_headers {
                        return Step::Stop(Violation::Body("too many trailer fields"));
                    }
                }
                Step::Wait
            }
            State::Passthrough => Step::Pass(buf.len()),
            State::Stopped => Step::Wait,
        }
    }
}

/// Takes up to `available` bytes off `remaining`, returning how many.
fn take(remaining: &mut u64, available: usize) -> usize {
    let n = usize::try_from(*remaining).map_or(available, |r| r.min(available));
    *remaining -= n as u64;
    n
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// Progress through a held request head. Bytes are looked at once each (`scanned`), so a head
/// that trickles in costs linear time; httparse runs only when the request line and when the
/// whole head is complete.
#[derive(Debug, Default)]
struct HeadScan {
    scanned: usize,
    phase: Phase,
}

#[derive(Debug, Default)]
enum Phase {
    /// Empty lines a client may send before a request line (hyper skips them too).
    #[default]
    Leading,
    /// Offsets of the target's first byte and of the space after it, once seen.
    RequestLine {
        target_start: Option<usize>,
        target_end: Option<usize>,
    },
    Fields(Lines),
}

/// Finds the empty line that ends a block of header lines.
#[derive(Debug, Default)]
struct Lines {
    line_start: usize,
    count: usize,
}

impl Lines {
    fn starting_at(line_start: usize) -> Self {
        Lines {
            line_start,
            count: 0,
        }
    }

    /// Called with the offset of each LF: true when the line it ends is empty (the block's end),
    /// otherwise counts the line.
    fn ends_block(&mut self, buf: &[u8], lf: usize) -> bool {
        let line = &buf[self.line_start..lf];
        if line.is_empty() || line == b"\r" {
            return true;
        }
        self.count += 1;
        self.line_start = lf + 1;
        false
    }
}

impl HeadScan {
    /// Scans what is new in `buf` (the held head so far). `Ok(Some((len, body)))` once the head
    /// is whole and valid; `Ok(None)` while it is still arriving.
    fn advance(
        &mut self,
        buf: &[u8],
        limits: &HeadLimits,
    ) -> Result<Option<(usize, BodyKind)>, Violation> {
        while self.scanned < buf.len() {
            let i = self.scanned;
            if i >= limits.max_head_bytes {
                return Err(self.oversized(&buf[..i], limits));
            }
            self.scanned += 1;
            let b = buf[i];
            if let Phase::Leading = self.phase {
                if b == b'\r' || b == b'\n' {
                    continue;
                }
                self.phase = Phase::RequestLine {
                    target_start: None,
                    target_end: None,
                };
            }
            match &mut self.phase {
                Phase::Leading => {}
                Phase::RequestLine {
                    target_start,
                    target_end,
                } => match (b, *target_start, *target_end) {
                    (b'\n', _, _) => {
                        check_request_line(&buf[..=i], limits)?;
                        self.phase = Phase::Fields(Lines::starting_at(i + 1));
                    }
                    (b' ', None, _) => *target_start = Some(i + 1),
                    (b' ', Some(_), None) => *target_end = Some(i),
                    // Refuse binary garbage (a TLS hello, say) at its first byte instead of
                    // holding it until a line ends.
                    (_, None, _) if !is_tchar(b) => {
                        return Err(Violation::Malformed("invalid method"));
                    }
                    (_, Some(start), None) if i + 1 - start > limits.max_target_bytes => {
                        return Err(limits.target_too_long(&buf[start..]));
                    }
                    _ => {}
                },
                Phase::Fields(lines) => {
                    if b != b'\n' {
                        continue;
                    }
                    if lines.ends_block(buf, i) {
                        let body = check_head(&buf[..=i], limits)?;
                        return Ok(Some((i + 1, body)));
                    }
                    if lines.count > limits.max_headers {
                        return Err(Violation::TooManyHeaders {
                            limit: limits.max_headers,
                        });
                    }
                }
            }
        }
        Ok(None)
    }

    /// Names what is wrong with a head that reached `max_head_bytes` without ending.
    fn oversized(&self, held: &[u8], limits: &HeadLimits) -> Violation {
        let too_large = Violation::HeadTooLarge {
            limit: limits.max_head_bytes,
        };
        match self.phase {
            Phase::Leading => too_large,
            // The target has not ended: it is what is too long.
            Phase::RequestLine {
                target_start: Some(start),
                target_end: None,
            } => limits.target_too_long(held.get(start..).unwrap_or_default()),
            Phase::RequestLine { .. } => Violation::Malformed("request line never ends"),
            Phase::Fields(_) => {
                let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
                match httparse::Request::new(&mut fields).parse(held) {
                    Err(httparse::Error::TooManyHeaders) => Violation::TooManyHeaders {
                        limit: limits.max_headers,
                    },
                    Err(e) => Violation::Malformed(describe(e)),
                    Ok(_) => too_large,
                }
            }
        }
    }
}

/// Checks a request line (with its line end) the way hyper will parse it, plus the target rules.
fn check_request_line(line: &[u8], limits: &HeadLimits) -> Result<(), Violation> {
    let mut no_fields = [];
    let mut req = httparse::Request::new(&mut no_fields);
    if let Err(e) = req.parse(line) {
        return Err(Violation::Malformed(describe(e)));
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(Violation::Malformed("incomplete request line"));
    };
    if target.len() > limits.max_target_bytes {
        return Err(limits.target_too_long(target.as_bytes()));
    }
    if target.contains('#') {
        return Err(Violation::Fragment);
    }
    if Method::from_bytes(method.as_bytes()).is_err() {
        return Err(Violation::Malformed("invalid method"));
    }
    if target.parse::<Uri>().is_err() {
        return Err(Violation::Malformed("invalid request target"));
    }
    Ok(())
}

/// Parses a whole head (it ends with its empty line) and works out its body's framing.
fn check_head(head: &[u8], limits: &HeadLimits) -> Result<BodyKind, Violation> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        // Our scan and httparse disagree on where the head ends: refuse rather than guess.
        Ok(_) => return Err(Violation::Malformed("malformed header section")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Violation::TooManyHeaders {
                limit: limits.max_headers,
            })
        }
        Err(e) => return Err(Violation::Malformed(describe(e))),
    }
    if req
        .headers
        .iter()
        .any(|h| h.name.len() >= HYPER_MAX_HEADER_NAME)
    {
        return Err(Violation::HeadTooLarge {
            limit: limits.max_head_bytes,
        });
    }
    body_kind(req.version == Some(1), req.headers)
}

/// Hyper's body rules for requests (RFC 9112 §6.3), except that both `Transfer-Encoding` and
/// `Content-Length` is refused instead of letting the first win.
fn body_kind(http11: bool, fields: &[httparse::Header<'_>]) -> Result<BodyKind, Violation> {
    let mut chunked = None;
    let mut length = None;
    for field in fields {
        if field.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Err(Violation::Malformed(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            // Hyper decides by the last Transfer-Encoding field.
            chunked = Some(ends_in_chunked(field.value));
        } else if field.name.eq_ignore_ascii_case("content-length") {
            let n = decimal(field.value)
                .filter(|n| *n <= HYPER_MAX_CONTENT_LENGTH)
                .ok_or(Violation::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|previous| previous != n) {
                return Err(Violation::Malformed("conflicting Content-Length fields"));
            }
            length = Some(n);
        }
    }
    match (chunked, length) {
        (Some(_), Some(_)) => Err(Violation::Malformed(
            "both Transfer-Encoding and Content-Length",
        )),
        (Some(true), None) => Ok(BodyKind::Chunked),
        (Some(false), None) => Err(Violation::Malformed(
            "Transfer-Encoding must end with chunked",
        )),
        (None, Some(n)) if n > 0 => Ok(BodyKind::Length(n)),
        (None, _) => Ok(BodyKind::None),
    }
}

/// Whether the last coding in a `Transfer-Encoding` value is `chunked` (values that are not
/// visible ASCII count as not chunked, as in hyper).
fn ends_in_chunked(value: &[u8]) -> bool {
    if !value
        .iter()
        .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b))
    {
        return false;
    }
    let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Digits only: no sign, no spaces, no list (as hyper parses a request's `Content-Length`).
fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// RFC 9110 `tchar`, the bytes a method may hold.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in the request line",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests;
