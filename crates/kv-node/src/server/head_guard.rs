//! The connection IO hyper reads through. [`HeadGuard`] holds each request head until
//! [`Framing`] has judged it whole, and hands hyper only bytes that passed; at the first
//! violation hyper sees end-of-stream right after the last valid request, finishes what it owes,
//! and the server answers the violation itself (hyper's own answers have an empty body).
//!
//! It also drops peers that stall: no byte of a request body the app is waiting for, or no byte
//! of a response taken, for the stall timeout (hyper times only heads).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::framing::{Framing, HeadLimits, Violation};

/// Smallest read from the socket: heads that arrive whole pass in one read.
const MIN_READ: usize = 8 * 1024;
/// Largest read into the guard's own buffer (reads straight into hyper's take what hyper offers).
const MAX_READ: usize = 64 * 1024;

/// Wraps a connection's IO; see the module docs. Invariant: `pending[..passable]` has passed
/// [`Framing`] and `pending[passable..]` is what `framing` is holding, so hyper never sees a
/// byte the framing has not cleared.
pub(crate) struct HeadGuard<S> {
    io: S,
    framing: Framing,
    pending: Vec<u8>,
    passable: usize,
    violation: Option<Violation>,
    /// Hyper was given end-of-stream for `violation`, so it read every byte before it.
    violation_reached: bool,
    io_eof: bool,
    stall_timeout: Duration,
    read_stall: Stall,
    write_stall: Stall,
}

/// A guard taken apart after hyper is done with it.
pub(crate) struct Finished<S> {
    pub(crate) io: S,
    pub(crate) violation: Option<Violation>,
    /// Hyper read up to the violation (rather than stopping earlier on its own).
    pub(crate) violation_reached: bool,
}

impl<S> HeadGuard<S> {
    pub(crate) fn new(io: S, limits: HeadLimits, stall_timeout: Duration) -> Self {
        HeadGuard {
            io,
            framing: Framing::new(limits),
            pending: Vec::new(),
            passable: 0,
            violation: None,
            violation_reached: false,
            io_eof: false,
            stall_timeout,
            read_stall: Stall::default(),
            write_stall: Stall::default(),
        }
    }

    pub(crate) fn finish(self) -> Finished<S> {
        Finished {
            io: self.io,
            violation: self.violation,
            violation_reached: self.violation_reached,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.passable > 0 {
                let n = this.passable.min(out.remaining());
                out.put_slice(&this.pending[..n]);
                this.pending.drain(..n);
                this.passable -= n;
                // A large held head must not pin its buffer for the connection's lifetime.
                if this.pending.is_empty() && this.pending.capacity() > 2 * MAX_READ {
                    this.pending = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.violation.is_some() {
                this.violation_reached = true;
                return Poll::Ready(Ok(()));
            }
            if this.io_eof {
                return Poll::Ready(Ok(()));
            }
            if this.pending.is_empty() {
                // The common case: read straight into hyper's buffer, then take back whatever
                // the framing holds.
                let before = out.filled().len();
                match Pin::new(&mut this.io).poll_read(cx, out) {
                    Poll::Pending => return this.read_pending(cx),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let got = out.filled().len() - before;
                if got == 0 {
                    this.io_eof = true;
                    continue;
                }
                this.read_stall.reset();
                let fed = this.framing.feed(&out.filled()[before..]);
                if fed.violation.is_none() {
                    this.pending
                        .extend_from_slice(&out.filled()[before + fed.pass..]);
                }
                this.violation = fed.violation;
                out.set_filled(before + fed.pass);
                if fed.pass > 0 {
                    return Poll::Ready(Ok(()));
                }
            } else {
                // A head is being held: append to it and judge it again.
                let start = this.pending.len();
                let want = out.remaining().clamp(MIN_READ, MAX_READ);
                this.pending.resize(start + want, 0);
                let mut buf = ReadBuf::new(&mut this.pending[start..]);
                let polled = Pin::new(&mut this.io).poll_read(cx, &mut buf);
                let got = buf.filled().len();
                this.pending.truncate(start + got);
                match polled {
                    Poll::Pending => return this.read_pending(cx),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                if got == 0 {
                    this.io_eof = true;
                    continue;
                }
                this.read_stall.reset();
                let fed = this.framing.feed(&this.pending);
                this.passable = fed.pass;
                if fed.violation.is_some() {
                    this.pending.truncate(fed.pass);
                    this.violation = fed.violation;
                }
            }
        }
    }
}

impl<S> HeadGuard<S> {
    fn read_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.framing.in_body() {
            self.read_stall.reset();
            return Poll::Pending;
        }
        if self.read_stall.expired(cx, self.stall_timeout) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request body stalled",
            )));
        }
        Poll::Pending
    }

    fn write_progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.write_stall.reset();
            return polled;
        }
        if self.write_stall.expired(cx, self.stall_timeout) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.write_progress(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.write_progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.write_progress(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.write_progress(cx, polled)
    }
}

/// Measures how long the peer has made no progress while we wait on it. Like nginx's
/// `client_body_timeout` and `send_timeout`, any progress restarts it.
#[derive(Default)]
struct Stall {
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    /// Starts the clock if it is not running; true once it has run out (the waker is registered
    /// otherwise).
    fn expired(&mut self, cx: &mut Context<'_>, after: Duration) -> bool {
        let deadline = Instant::now() + after;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        timer.as_mut().poll(cx).is_ready()
    }

    fn reset(&mut self) {
        self.armed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> HeadLimits {
        HeadLimits {
            max_head_bytes: 1024,
            max_target_bytes: 256,
            max_headers: 8,
            key_prefix: None,
        }
    }

    /// Hyper's view through the guard: every byte it may read, then end-of-stream.
    async fn read_through(input: &[&[u8]]) -> (Vec<u8>, Finished<tokio::io::DuplexStream>) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut guard = HeadGuard::new(server, limits(), Duration::from_secs(10));
        for piece in input {
            client.write_all(piece).await.expect("write");
        }
        drop(client);
        let mut seen = Vec::new();
        guard.read_to_end(&mut seen).await.expect("read");
        (seen, guard.finish())
    }

    #[tokio::test]
    async fn valid_pipelined_requests_pass_byte_for_byte() {
        let stream: &[&[u8]] = &[
            b"GET /a HTTP/1.1\r\nHost: x\r\n",
            b"\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel",
            b"lo",
            b"GET /c HTTP/1.1\r\n\r\n",
        ];
        let (seen, finished) = read_through(stream).await;
        assert_eq!(seen, stream.concat());
        assert_eq!(finished.violation, None);
    }

    #[tokio::test]
    async fn hyper_sees_the_end_right_before_a_bad_head() {
        let good: &[u8] = b"GET /a HTTP/1.1\r\n\r\n";
        let (seen, finished) = read_through(&[good, b"GET /a#b HTTP/1.1\r\n\r\n"]).await;
        assert_eq!(seen, good);
        assert_eq!(finished.violation, Some(Violation::Fragment));
        assert!(finished.violation_reached);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_an_error_after_the_stall_timeout() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut guard = HeadGuard::new(server, limits(), Duration::from_secs(10));
        let sent: &[u8] = b"PUT /k HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
        client.write_all(sent).await.expect("write");
        let mut buf = vec![0; 1024];
        let mut seen = 0;
        let err = loop {
            match guard.read(&mut buf).await {
                Ok(n) => seen += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(seen, sent.len());
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_an_error_after_the_stall_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let mut guard = HeadGuard::new(server, limits(), Duration::from_secs(10));
        let err = guard
            .write_all(&[b'x'; 4096])
            .await
            .expect_err("the peer never reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_between_requests_is_left_to_hyper() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut guard = HeadGuard::new(server, limits(), Duration::from_secs(1));
        let sent: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        client.write_all(sent).await.expect("write");
        let mut buf = vec![0; 1024];
        assert_eq!(guard.read(&mut buf).await.expect("read"), sent.len());
        let idle = tokio::time::timeout(Duration::from_secs(60), guard.read(&mut buf)).await;
        assert!(idle.is_err(), "the guard must not time out heads: {idle:?}");
    }
}
