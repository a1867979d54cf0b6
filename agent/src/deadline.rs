//! Read deadlines for the HTTP listeners (OTLP/HTTP receiver and admin server): the
//! slow-loris defence.
//!
//! axum's `serve` configures no hyper timer, so hyper's own header timeout never fires and
//! a client that sends one header byte a minute would hold its connection (and a file
//! descriptor) forever. [`DeadlineListener`] wraps a [`TcpListener`]; every accepted
//! connection is a [`DeadlineStream`] that enforces, at the socket level:
//!
//! - **header deadline**: from the first byte of a request (or from accept, for the first
//!   request) the request head (up to the blank line `\r\n\r\n`) must arrive within
//!   `head_timeout`, however the bytes trickle in; otherwise reads fail with `TimedOut` and
//!   hyper closes the connection;
//! - **idle deadline**: a keep-alive connection with no request for its idle timeout
//!   (`receiver.idle_timeout` on the OTLP/HTTP listener, [`IDLE_TIMEOUT`] on admin) is
//!   closed.
//!
//! Connections are admitted through a [`crate::conn::Gate`] (the listener's connection cap and
//! accept-error backoff).
//!
//! The request *body* is not timed here (a handler may legitimately take long after the head,
//! e.g. `POST /drain`): handlers that read a body bound it themselves (the OTLP/HTTP receiver
//! answers 408 after [`BODY_TIMEOUT`]). Each timed-out connection is counted in
//! `loopwatch_agent_connections_timed_out_total`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use crate::conn::{Gate, Permit};

/// An admin keep-alive connection without a new request for this long is closed (5 minutes).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// An admin request head (request line and headers) must arrive within this long of its
/// first byte, or of accept for a connection's first request (10 s).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The OTLP receivers must have the whole request body within this long of the head (10 s);
/// HTTP answers 408 (counted as `requests_refused_total{reason="timeout"}`), gRPC
/// answers `CANCELLED`/`DEADLINE_EXCEEDED` from tonic's request timeout.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Cap on a request body on the admin server (64 KiB): it takes no large input.
pub(crate) const ADMIN_MAX_BODY_BYTES: usize = 64 * 1024;

/// Wraps a listener so that every connection gets header and idle deadlines.
#[derive(Debug)]
pub(crate) struct DeadlineListener {
    inner: TcpListener,
    gate: Gate,
    head_timeout: Duration,
    idle_timeout: Duration,
    timed_out: Arc<AtomicU64>,
}

impl DeadlineListener {
    /// Wraps `inner`, admitting connections through `gate`; request heads must arrive within
    /// `timeouts.0`, and a connection idle between requests for `timeouts.1` is closed.
    /// Connections closed for a deadline are counted in `timed_out`.
    pub(crate) fn new(
        inner: TcpListener,
        gate: Gate,
        timeouts: (Duration, Duration),
        timed_out: Arc<AtomicU64>,
    ) -> Self {
        DeadlineListener {
            inner,
            gate,
            head_timeout: timeouts.0,
            idle_timeout: timeouts.1,
            timed_out,
        }
    }
}

impl axum::serve::Listener for DeadlineListener {
    type Io = DeadlineStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr, permit) = self.gate.accept(&self.inner).await;
        let timer = Box::pin(tokio::time::sleep(self.head_timeout));
        let io = DeadlineStream {
            inner: stream,
            _permit: Some(permit),
            head_timeout: self.head_timeout,
            idle_timeout: self.idle_timeout,
            phase: Phase::Head,
            tail: [0; 3],
            timer,
            timed_out: self.timed_out.clone(),
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests; the idle deadline runs.
    Idle,
    /// Reading a request head; the header deadline runs.
    Head,
    /// Head complete, body or handler in progress; no deadline here.
    Body,
}

/// A TCP connection with header and idle read deadlines (see the module docs).
#[derive(Debug)]
pub(crate) struct DeadlineStream {
    inner: TcpStream,
    /// The connection's slot under the listener's cap.
    _permit: Option<Permit>,
    head_timeout: Duration,
    idle_timeout: Duration,
    phase: Phase,
    /// The last three bytes of the head seen so far (to find `\r\n\r\n` across reads).
    tail: [u8; 3],
    timer: Pin<Box<Sleep>>,
    timed_out: Arc<AtomicU64>,
}

impl DeadlineStream {
    fn observe(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.tail = [0; 3];
            let deadline = Instant::now() + self.head_timeout;
            self.timer.as_mut().reset(deadline);
        }
        if self.phase != Phase::Head {
            return;
        }
        for &b in bytes {
            if self.tail == *b"\r\n\r" && b == b'\n' {
                self.phase = Phase::Body;
                return;
            }
            self.tail = [self.tail[1], self.tail[2], b];
        }
    }

    fn expired(&mut self) -> io::Error {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
        let what = if self.phase == Phase::Idle {
            "idle keep-alive connection"
        } else {
            "request head not received in time"
        };
        tracing::debug!(what, "closing connection");
        io::Error::new(io::ErrorKind::TimedOut, what)
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let timed = this.phase != Phase::Body;
        if timed && this.timer.deadline() <= Instant::now() {
            return Poll::Ready(Err(this.expired()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                let new = filled.get(before..).unwrap_or(&[]);
                this.observe(new);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if timed && this.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(this.expired()));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
            && this.phase != Phase::Idle
        {
            // A response is going out: the request is over, the idle deadline starts.
            this.phase = Phase::Idle;
            let deadline = Instant::now() + this.idle_timeout;
            this.timer.as_mut().reset(deadline);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
            && this.phase != Phase::Idle
        {
            this.phase = Phase::Idle;
            let deadline = Instant::now() + this.idle_timeout;
            this.timer.as_mut().reset(deadline);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn head_end_is_found_across_reads() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let _c = TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        let mut d = DeadlineStream {
            inner: s,
            _permit: None,
            head_timeout: Duration::from_secs(1),
            idle_timeout: IDLE_TIMEOUT,
            phase: Phase::Head,
            tail: [0; 3],
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
            timed_out: Arc::default(),
        };
        d.observe(b"GET / HTTP/1.1\r\nHost: x\r");
        assert_eq!(d.phase, Phase::Head);
        d.observe(b"\n\r");
        assert_eq!(d.phase, Phase::Head);
        d.observe(b"\nbody");
        assert_eq!(d.phase, Phase::Body);
    }
}
