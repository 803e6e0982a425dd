//! Serving HTTP/1.1 so that hostile clients cannot starve real ones.
//!
//! axum's own `serve` has no header-read, body or idle timeout and no cap on
//! connections: a thousand clients that each send a byte a second hold a
//! file descriptor each until the process has none left, and from then on no
//! delivery gets in. Here each listener runs an accept loop of its own with:
//!
//! - a deadline for a request's line and headers, counted from their first
//!   byte (`header_read_timeout`), and one for a connection with no request
//!   in flight and nothing arriving (`idle_timeout`). When the one that
//!   applies passes, the connection is closed;
//! - a deadline for a request's body ([`body_timeout`], a layer) answered
//!   with 408;
//! - a cap on open connections. At the cap a new connection takes the place
//!   of the oldest one with no request in flight (a slow client still
//!   sending its headers, or an idle keep-alive one), so whoever holds many
//!   connections open keeps losing them to new arrivals, while a delivery,
//!   which sends its request as soon as it is connected, is answered. Only
//!   when every connection has a request in flight does the loop wait until
//!   one finishes; the connection just accepted waits for that place, later
//!   ones in the kernel's backlog;
//! - accept errors never end the loop. Out of file descriptors, it closes
//!   the oldest connection with no request in flight, backs off briefly and
//!   carries on; any other error (a connection reset before it was
//!   accepted) is skipped.
//!
//! Each request carries its connection's TCP peer as axum's
//! `ConnectInfo<SocketAddr>` extension, as under `axum::serve`.
//!
//! On shutdown the loop stops accepting, every connection finishes the
//! request it has in flight and closes, and [`serve`] returns when all have.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::error::{ApiError, Code};

/// What a listener allows each connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// How long the accept loop backs off when the process is out of file
/// descriptors, after closing a connection to free one. Short, since a
/// delivery waiting in the backlog has 5 s in all.
const OUT_OF_DESCRIPTORS_BACKOFF: Duration = Duration::from_millis(50);

/// How long the accept loop waits for an evicted connection to close
/// before it looks again (the connection may have started a request).
const EVICTION_WAIT: Duration = Duration::from_millis(50);

/// Descriptors kept free of connections for everything else the process
/// opens: the SQLite files and their readers, outgoing HTTP clients, the
/// runtime's own. At least this many, or an eighth of the limit.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The state of one connection, shared by its I/O, its service and its
/// watchdog. Times are milliseconds since the listener's epoch.
struct Conn {
    epoch: Instant,
    /// Requests whose response is not yet complete.
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight: accepted, or a
    /// response finished.
    idle_since: AtomicU64,
    /// One more than when the first byte of the next request arrived while
    /// there was none in flight; 0 while nothing has arrived.
    head_since: AtomicU64,
    /// Chosen to make room at the cap: closes as soon as no request is in
    /// flight.
    evicted: AtomicBool,
    /// Wakes the watchdog when any of the above changes.
    changed: Notify,
}

impl Conn {
    fn new(epoch: Instant) -> Self {
        let conn = Self {
            epoch,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            changed: Notify::new(),
        };
        conn.idle_since.store(conn.now(), Ordering::SeqCst);
        conn
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0
            && self
                .head_since
                .compare_exchange(0, self.now() + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(0, Ordering::SeqCst);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// When the connection is to be closed, if nothing changes first;
    /// `None` while a request is in flight (the body timeout bounds that).
    fn deadline(&self, limits: &Limits) -> Option<u64> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if self.evicted.load(Ordering::SeqCst) {
            return Some(0);
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Some(match self.head_since.load(Ordering::SeqCst) {
            0 => self
                .idle_since
                .load(Ordering::SeqCst)
                .saturating_add(ms(limits.idle_timeout)),
            since => (since - 1).saturating_add(ms(limits.header_read_timeout)),
        })
    }
}

/// A request in flight on a connection, until dropped.
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.idle_since.store(conn.now(), Ordering::SeqCst);
        if conn.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            conn.changed.notify_one();
        }
    }
}

/// Resolves when the connection is to be closed: its header or idle
/// deadline passed, or it was evicted with no request in flight.
async fn watchdog(conn: &Conn, limits: Limits) {
    loop {
        match conn.deadline(&limits) {
            Some(at) => {
                let now = conn.now();
                if at <= now {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(at - now)) => {}
                    () = conn.changed.notified() => {}
                }
            }
            None => conn.changed.notified().await,
        }
    }
}

/// The connection's socket, noting when bytes arrive.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A listener's open connections, oldest first, and its cap.
struct Registry {
    epoch: Instant,
    slots: Arc<Semaphore>,
    open: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn new(max_connections: usize) -> Self {
        Self {
            epoch: Instant::now(),
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            open: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    fn open(self: &Arc<Self>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let conn = Arc::new(Conn::new(self.epoch));
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, conn.clone());
        Registered {
            registry: self.clone(),
            id,
            conn,
        }
    }

    /// Mark the oldest connection with no request in flight to be closed,
    /// unless one so marked is still closing (one place is made at a time).
    /// False when every connection has a request in flight.
    fn evict_oldest_idle(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let idle = |conn: &Arc<Conn>| conn.in_flight.load(Ordering::SeqCst) == 0;
        if open
            .values()
            .any(|conn| idle(conn) && conn.evicted.load(Ordering::SeqCst))
        {
            return true;
        }
        for conn in open.values() {
            if conn.in_flight.load(Ordering::SeqCst) == 0 && !conn.evicted.load(Ordering::SeqCst) {
                conn.evicted.store(true, Ordering::SeqCst);
                conn.changed.notify_one();
                return true;
            }
        }
        false
    }

    /// A slot for one more connection, making room at the cap; `None` when
    /// told to stop while waiting.
    async fn slot(&self, stop: &mut watch::Receiver<bool>) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return Some(permit);
            }
            self.evict_oldest_idle();
            tokio::select! {
                waited = tokio::time::timeout(EVICTION_WAIT, self.slots.clone().acquire_owned()) => {
                    if let Ok(Ok(permit)) = waited {
                        return Some(permit);
                    }
                }
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
    }
}

/// A connection's place in the registry, given up when dropped.
struct Registered {
    registry: Arc<Registry>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// The listen backlog asked for (the kernel caps it at its own limit,
/// `net.core.somaxconn` on Linux). The default of 128 is soon full when
/// slow clients keep reconnecting at the cap; from then on the kernel drops
/// new connections' SYNs, and a delivery waits for its client to send its
/// SYN again, 1 s and then 3 s later, most of Didit's 5 s.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Bind `addr` (`host:port`) with [`LISTEN_BACKLOG`].
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    let mut last = None;
    for resolved in tokio::net::lookup_host(addr).await? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(resolved) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (the process's limit) and ENFILE (the system's), without a
    // libc dependency: their raw numbers are the same on every Unix kycd
    // runs on.
    matches!(e.raw_os_error(), Some(23) | Some(24))
}

/// Serve `router` on `listener` within `limits` until `stop` turns true,
/// then let every connection finish its request in flight and return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let registry = Arc::new(Registry::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut warned_at: Option<Instant> = None;
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Room is made when a connection has arrived, not ahead of
                // one: below the cap nothing is closed.
                let Some(permit) = registry.slot(&mut stop).await else {
                    break;
                };
                let _ = stream.set_nodelay(true);
                let registered = registry.open();
                connections.spawn(connection(
                    stream,
                    peer,
                    router.clone(),
                    registered,
                    permit,
                    limits,
                    stop.clone(),
                ));
            }
            Err(e) if out_of_descriptors(&e) => {
                // Once a second at most: under attack this happens often.
                if warned_at.is_none_or(|at| at.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!(
                        error = %e,
                        "out of file descriptors: closing the oldest idle connection"
                    );
                    warned_at = Some(Instant::now());
                }
                registry.evict_oldest_idle();
                tokio::select! {
                    () = tokio::time::sleep(OUT_OF_DESCRIPTORS_BACKOFF) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            Err(e) => tracing::debug!(error = %e, "accept failed"),
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    registered: Registered,
    _permit: OwnedSemaphorePermit,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let conn = registered.conn.clone();
    let io = TokioIo::new(Watched {
        stream,
        conn: conn.clone(),
    });
    let on_request = conn.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let in_flight = on_request.request_started();
        let router = router.clone();
        // What axum::serve would give handlers: the TCP peer, for the
        // console's trusted proxies (`proxy`).
        request.extensions_mut().insert(ConnectInfo(peer));
        async move {
            let response = router.oneshot(request.map(Body::new)).await;
            drop(in_flight);
            response
        }
    });
    let mut http = http1::Builder::new();
    // The watchdog keeps the header deadline (from the first byte, not from
    // the end of the previous response as hyper's own would).
    http.timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let served = http.serve_connection(io, service);
    tokio::pin!(served);
    let dog = watchdog(&conn, limits);
    tokio::pin!(dog);
    tokio::select! {
        result = served.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        // Dropping the connection closes its socket.
        () = &mut dog => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    served.as_mut().graceful_shutdown();
    tokio::select! {
        _ = served => {}
        () = dog => {}
    }
}

/// The largest number of connections per listener that `limit` open file
/// descriptors leave room for.
pub fn fit_connections(limit: u64, listeners: usize) -> usize {
    let reserved = RESERVED_DESCRIPTORS.max(limit / 8);
    let room = limit.saturating_sub(reserved) / listeners.max(1) as u64;
    usize::try_from(room.max(1)).unwrap_or(usize::MAX)
}

/// `wanted` connections per listener, lowered (with a warning) to what the
/// process's file-descriptor limit leaves room for, after raising the soft
/// limit toward the hard one as far as `wanted` needs.
pub fn connection_cap(wanted: usize, listeners: usize) -> usize {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limits = getrlimit(Resource::Nofile);
        let needed = (wanted as u64)
            .saturating_mul(listeners.max(1) as u64)
            .saturating_add(RESERVED_DESCRIPTORS.max(wanted as u64 / 8));
        let mut soft = limits.current.unwrap_or(u64::MAX);
        if soft < needed {
            let raised = limits.maximum.unwrap_or(u64::MAX).min(needed);
            if raised > soft
                && setrlimit(
                    Resource::Nofile,
                    Rlimit {
                        current: Some(raised),
                        maximum: limits.maximum,
                    },
                )
                .is_ok()
            {
                soft = raised;
            }
        }
        let fits = fit_connections(soft, listeners);
        if fits < wanted {
            tracing::warn!(
                wanted,
                cap = fits,
                descriptors = soft,
                "the file-descriptor limit leaves room for fewer connections than KYCD_MAX_CONNECTIONS; the cap is lowered to fit"
            );
            return fits;
        }
    }
    wanted
}

/// The body deadline: wraps each request's body so that reading it fails
/// once `State(timeout)` has passed since the headers, and answers 408 (and
/// closes the connection) if the handler's body read failed that way.
pub async fn body_timeout(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let timed_out = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timed_out: timed_out.clone(),
        })
    });
    let response = next.run(request).await;
    if !timed_out.load(Ordering::SeqCst) {
        return response;
    }
    let mut response = ApiError::new(
        Code::RequestTimeout,
        format!("request body not received within {} s", timeout.as_secs()),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The error a body read gets once its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("request body not received in time")]
pub struct BodyTimedOut;

/// Whether `error` (from reading a request body) is the body deadline.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        source = e.source();
    }
    false
}

struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.timed_out.store(true, Ordering::SeqCst);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_room_for_the_rest_of_the_process() {
        assert_eq!(fit_connections(128, 1), 64);
        assert_eq!(fit_connections(1024, 1), 896);
        assert_eq!(fit_connections(1024, 2), 448);
        assert_eq!(fit_connections(10, 1), 1);
    }

    #[tokio::test]
    async fn a_connection_idles_out_reads_headers_against_their_own_deadline_and_never_times_out_mid_request(
    ) {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 1,
        };
        let conn = Arc::new(Conn::new(Instant::now()));
        let idle = conn.deadline(&limits).unwrap();
        assert!(idle >= 3_600_000);
        conn.bytes_arrived();
        let head = conn.deadline(&limits).unwrap();
        assert!(head < 1_000, "{head}");
        let request = conn.request_started();
        assert_eq!(conn.deadline(&limits), None);
        conn.evicted.store(true, Ordering::SeqCst);
        assert_eq!(conn.deadline(&limits), None, "evicted mid-request");
        drop(request);
        assert_eq!(conn.deadline(&limits), Some(0), "evicted once idle");
    }

    #[test]
    fn eviction_takes_the_oldest_connection_without_a_request() {
        let registry = Arc::new(Registry::new(3));
        let (a, b, c) = (registry.open(), registry.open(), registry.open());
        let _busy = a.conn.request_started();
        assert!(registry.evict_oldest_idle());
        assert!(!a.conn.evicted.load(Ordering::SeqCst));
        assert!(b.conn.evicted.load(Ordering::SeqCst));
        // One place at a time: b has not closed yet.
        assert!(registry.evict_oldest_idle());
        assert!(!c.conn.evicted.load(Ordering::SeqCst));
        drop(b);
        assert_eq!(registry.open.lock().unwrap().len(), 2);
        assert!(registry.evict_oldest_idle());
        assert!(c.conn.evicted.load(Ordering::SeqCst));
        drop(c);
        assert!(!registry.evict_oldest_idle(), "only a busy one is left");
    }
}
