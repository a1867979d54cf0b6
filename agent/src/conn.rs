//! Connection limits shared by the three listeners (OTLP/gRPC, OTLP/HTTP, admin).
//!
//! - **Cap**: each listener keeps at most its `max_connections` open
//!   (`receiver.max_connections`, `admin.max_connections`). A connection accepted beyond
//!   the cap is closed at once and counted in
//!   `loopwatch_agent_connections_refused_total{listener, reason="max_connections"}`: the
//!   kernel's backlog would otherwise queue it with no bound the agent controls. Connections
//!   already open are never evicted, so a service's persistent exporter connection keeps
//!   working while a flood is refused.
//! - **Accept errors**: per-connection errors (reset or aborted before accept) are ignored;
//!   any other error (`EMFILE`, `ENFILE`, `ENOBUFS`) is counted in
//!   `loopwatch_agent_accept_errors_total`, logged, and the listener backs off (10 ms doubling
//!   to 1 s) instead of spinning on a socket that stays readable.
//! - **gRPC deadlines** ([`GrpcConn`]): the HTTP/2 preface must arrive within
//!   `receiver.handshake_timeout` of accept, and a connection with no request in flight for
//!   `receiver.idle_timeout` is closed; both count in
//!   `loopwatch_agent_connections_timed_out_total`. The HTTP listeners' deadlines are in
//!   [`crate::deadline`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// First backoff after an accept error.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// Longest backoff after repeated accept errors.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Length of the HTTP/2 client connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const PREFACE_LEN: usize = 24;

/// Which listener a connection came in on (label `listener`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP.
    Http,
    /// Admin HTTP.
    Admin,
}

impl Listener {
    /// All listeners, for exposition.
    pub const ALL: [Listener; 3] = [Listener::Grpc, Listener::Http, Listener::Admin];
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Http => "http",
            Listener::Admin => "admin",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Connection counters, per listener.
#[derive(Debug, Default)]
pub struct ConnStats {
    open: [AtomicUsize; 3],
    refused: [AtomicU64; 3],
    accept_errors: AtomicU64,
}

impl ConnStats {
    /// Connections open now on `l`.
    pub fn open(&self, l: Listener) -> usize {
        self.open[l.index()].load(Ordering::Relaxed)
    }
    /// Connections closed at accept on `l` because its cap was reached.
    pub fn refused(&self, l: Listener) -> u64 {
        self.refused[l.index()].load(Ordering::Relaxed)
    }
    /// Accept errors other than per-connection ones, all listeners.
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }
}

/// Admits connections on one listener up to its cap.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    listener: Listener,
    max: usize,
    stats: Arc<ConnStats>,
}

/// One admitted connection; dropping it frees its slot.
#[derive(Debug)]
pub(crate) struct Permit {
    listener: Listener,
    stats: Arc<ConnStats>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.stats.open[self.listener.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

impl Gate {
    /// A gate for `listener` admitting at most `max` open connections.
    pub(crate) fn new(listener: Listener, max: usize, stats: Arc<ConnStats>) -> Self {
        Gate {
            listener,
            max,
            stats,
        }
    }

    fn admit(&self) -> Option<Permit> {
        let open = &self.stats.open[self.listener.index()];
        open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < self.max).then_some(n + 1)
        })
        .ok()?;
        Some(Permit {
            listener: self.listener,
            stats: self.stats.clone(),
        })
    }

    /// Accepts the next connection within the cap (TCP_NODELAY set: a response written in
    /// parts must not wait for the peer's delayed ACK). Connections over the cap are closed
    /// and counted; accept errors back off.
    pub(crate) async fn accept(&self, listener: &TcpListener) -> (TcpStream, SocketAddr, Permit) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    backoff = MIN_BACKOFF;
                    let Some(permit) = self.admit() else {
                        self.stats.refused[self.listener.index()].fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = self.listener.as_str(), %addr, "connection cap reached: closing");
                        drop(stream);
                        continue;
                    };
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    return (stream, addr, permit);
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    self.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(listener = self.listener.as_str(), error = %e, ?backoff, "accept error: backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Requests in flight on one gRPC connection and when the last one ended.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `base` when the connection last became idle.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// Marks a request in flight until the returned guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Relaxed);
        Some(self.base + Duration::from_millis(ms))
    }
}

/// A request in flight on a gRPC connection (see [`Activity::begin`]).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(ms, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every gRPC request carries in its extensions (tonic's `Connected::connect_info`).
#[derive(Debug, Clone)]
pub(crate) struct GrpcConnInfo {
    /// The peer.
    pub remote: SocketAddr,
    /// The connection's request activity, for the idle deadline.
    pub activity: Arc<Activity>,
}

/// A gRPC connection with the preface and idle deadlines of the module docs.
#[derive(Debug)]
pub(crate) struct GrpcConn {
    inner: TcpStream,
    _permit: Permit,
    info: GrpcConnInfo,
    preface_left: usize,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    timed_out: Arc<AtomicU64>,
}

impl GrpcConn {
    /// Wraps an admitted connection; the preface deadline starts now.
    pub(crate) fn new(
        inner: TcpStream,
        remote: SocketAddr,
        permit: Permit,
        timeouts: (Duration, Duration),
        timed_out: Arc<AtomicU64>,
    ) -> Self {
        let (handshake, idle_timeout) = timeouts;
        GrpcConn {
            inner,
            _permit: permit,
            info: GrpcConnInfo {
                remote,
                activity: Arc::new(Activity::new()),
            },
            preface_left: PREFACE_LEN,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep(handshake)),
            timed_out,
        }
    }

    fn expired(&self, what: &'static str) -> io::Error {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(what, remote = %self.info.remote, "closing gRPC connection");
        io::Error::new(io::ErrorKind::TimedOut, what)
    }

    /// Polls the deadline timer; `Some` when the connection must close now.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            if self.preface_left > 0 {
                return Some(self.expired("HTTP/2 preface not received in time"));
            }
            let now = Instant::now();
            let next = match self.info.activity.idle_since() {
                None => now + self.idle_timeout,
                Some(since) if since + self.idle_timeout <= now => {
                    return Some(self.expired("idle gRPC connection"));
                }
                Some(since) => since + self.idle_timeout,
            };
            self.timer.as_mut().reset(next);
        }
    }
}

impl tonic::transport::server::Connected for GrpcConn {
    type ConnectInfo = GrpcConnInfo;
    fn connect_info(&self) -> GrpcConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if this.preface_left > 0 && n > 0 {
                    this.preface_left = this.preface_left.saturating_sub(n);
                    if this.preface_left == 0 {
                        let next = Instant::now() + this.idle_timeout;
                        this.timer.as_mut().reset(next);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_deadline(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The gRPC server's incoming connections: an accept task behind a channel of one, so a
/// connection is accepted only when the server is ready for it. The task ends when the
/// server drops the stream.
#[derive(Debug)]
pub(crate) struct GrpcIncoming {
    rx: tokio::sync::mpsc::Receiver<GrpcConn>,
}

impl GrpcIncoming {
    /// Spawns the accept loop on `listener` through `gate` on the current runtime.
    pub(crate) fn spawn(
        listener: TcpListener,
        gate: Gate,
        timeouts: (Duration, Duration),
        timed_out: Arc<AtomicU64>,
    ) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let (stream, addr, permit) = tokio::select! {
                    c = gate.accept(&listener) => c,
                    _ = tx.closed() => return,
                };
                let conn = GrpcConn::new(stream, addr, permit, timeouts, timed_out.clone());
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
        });
        GrpcIncoming { rx }
    }
}

impl tokio_stream::Stream for GrpcIncoming {
    type Item = io::Result<GrpcConn>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}
