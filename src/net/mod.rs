//! Framed connections shared by the broker and the client: reading one frame with limits
//! and a completion deadline, and a writer that coalesces small frames into few syscalls;
//! over plain TCP or TLS ([`tls`]).

pub mod connection;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use futures_lite::{AsyncRead, AsyncWrite};
pub use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

use crate::limits::FRAME_HEADER_BYTES;
use crate::protocol::{BodyBuf, Frame, FrameError, FrameHeader, OutFrame};
use crate::rt::{self, Notify};

/// Payload chunks at least this large are written straight from their buffer, not copied.
const DIRECT_WRITE_BYTES: usize = 16 * 1024;
/// Coalescing buffer size of the writer.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Read buffer size of the reader.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Why reading a frame stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    Closed,
    Io(io::Error),
    /// A frame started but did not complete in time (a stalled or very slow peer).
    Timeout,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// The header is invalid: framing is lost, the connection must close.
    BadHeader(FrameError),
    /// The header was valid but the body is not: framing is intact, the peer may go on.
    BadBody {
        header: FrameHeader,
        error: FrameError,
    },
}

/// Limits on reading one frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    pub max_frame_bytes: usize,
    /// Once a frame's first byte arrived, the rest must follow within this time (plus 1 ms
    /// per KB of body, so slow links still work).
    pub completion_timeout: Duration,
    /// How long to wait for a frame's first byte (None: without limit).
    pub idle_timeout: Option<Duration>,
}

impl FrameLimits {
    fn deadline(&self, body_len: usize) -> Duration {
        self.completion_timeout + Duration::from_millis(body_len as u64 / 1000)
    }
}

/// Reads one frame. Waits for its first byte up to the idle timeout.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limits: FrameLimits) -> Result<Frame, ReadError> {
    let mut head = [0u8; FRAME_HEADER_BYTES];
    let first = r.read(&mut head);
    let n = match limits.idle_timeout {
        Some(idle) => rt::timeout(idle, first).await.ok_or(ReadError::Idle)?,
        None => first.await,
    }
    .map_err(ReadError::Io)?;
    if n == 0 {
        return Err(ReadError::Closed);
    }
    match rt::timeout(limits.deadline(0), r.read_exact(&mut head[n..])).await {
        None => return Err(ReadError::Timeout),
        Some(Err(e)) => return Err(ReadError::Io(e)),
        Some(Ok(())) => {}
    }
    let header = FrameHeader::decode(&head, limits.max_frame_bytes).map_err(ReadError::BadHeader)?;
    let mut body = BodyBuf::new();
    match rt::timeout(limits.deadline(header.body_len()), read_body(r, &mut body, header.body_len())).await {
        None => return Err(ReadError::Timeout),
        Some(Err(e)) => return Err(ReadError::Io(e)),
        Some(Ok(())) => {}
    }
    Frame::from_parts(header, body).map_err(|error| ReadError::BadBody { header, error })
}

/// First step of a body's buffer; it then doubles as bytes arrive.
const BODY_FIRST_STEP_BYTES: usize = 64 * 1024;

/// Reads `len` bytes into `body`, growing it as they arrive (at most twice what arrived,
/// plus a first step): a header alone, declaring the largest frame, costs no memory.
async fn read_body<R: AsyncRead + Unpin>(r: &mut R, body: &mut BodyBuf, len: usize) -> io::Result<()> {
    while body.len() < len {
        let filled = body.len();
        let next = len.min(filled.saturating_mul(2).max(BODY_FIRST_STEP_BYTES));
        body.resize(next, 0);
        r.read_exact(&mut body[filled..next]).await?;
    }
    Ok(())
}

/// Frames waiting to be written on one connection, each with what it holds until written
/// (the broker's in-flight and answer-bytes permits: an answer counts against its
/// connection's limits until it is on the wire, not merely queued).
#[derive(Default)]
pub struct Outbox {
    queue: RefCell<VecDeque<(OutFrame, Option<Held>)>>,
    ready: Notify,
    closed: Cell<bool>,
}

impl Outbox {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Queues a frame; dropped if the connection is closed.
    pub fn push(&self, frame: OutFrame) {
        self.push_holding(frame, None);
    }

    /// Queues a frame that keeps `held` until it was written (or dropped).
    pub fn push_holding(&self, frame: OutFrame, held: Option<Held>) {
        if !self.closed.get() {
            self.queue.borrow_mut().push_back((frame, held));
            self.ready.notify();
        }
    }

    /// The writer sends what is queued, then stops.
    pub fn close(&self) {
        self.closed.set(true);
        self.ready.notify();
    }

    /// The connection is gone: drops what is queued (and what it holds), takes nothing more.
    pub fn abandon(&self) {
        self.closed.set(true);
        self.queue.borrow_mut().clear();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }
}

/// Writes queued frames until the outbox is closed and drained, coalescing small frames
/// into one buffer and writing large payload chunks directly.
pub async fn write_loop<W: AsyncWrite + Unpin>(w: &mut W, outbox: Rc<Outbox>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(WRITE_BUFFER_BYTES);
    loop {
        loop {
            let Some((frame, _held_until_written)) = outbox.queue.borrow_mut().pop_front() else { break };
            buf.extend_from_slice(&frame.header);
            buf.extend_from_slice(&frame.archive);
            for chunk in &frame.payload {
                if chunk.len() >= DIRECT_WRITE_BYTES {
                    w.write_all(&buf).await?;
                    buf.clear();
                    w.write_all(chunk).await?;
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
            if buf.len() >= WRITE_BUFFER_BYTES {
                w.write_all(&buf).await?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            w.write_all(&buf).await?;
            buf.clear();
        }
        // (TLS: pushes out what the session still holds; plain TCP: nothing to do.)
        w.flush().await?;
        if outbox.closed.get() && outbox.queue.borrow().is_empty() {
            w.flush().await?;
            return Ok(());
        }
        outbox.ready.notified().await;
    }
}

/// What an answer holds until it is written: permits of its connection's limits.
pub type Held = Vec<crate::rt::StaticPermit>;

/// Opens a TCP connection, failing after `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(addr, timeout).await.map_err(io::Error::from)
}

/// The address a node's outgoing links leave from: the IP it listens on, unless that is the
/// wildcard (then the kernel chooses). Nodes on one machine with their own loopback
/// addresses (127.0.0.2, 127.0.0.3, ...) thus send from their own address, so a firewall
/// rule can cut the link between two of them (the nemesis tests do).
pub fn link_source(listen: SocketAddr) -> Option<IpAddr> {
    Some(listen.ip()).filter(|ip| !ip.is_unspecified())
}

/// [`connect`] from the local address `source` (port chosen by the kernel). The connect is
/// non-blocking and its completion polled every millisecond, so a peer that drops SYNs never
/// blocks the shard; it happens once per (re)connection, never per request.
pub async fn connect_from(source: Option<IpAddr>, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let Some(source) = source else { return connect(addr, timeout).await };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => wait_connected(&socket, timeout).await?,
        Err(e) => return Err(e),
    }
    socket.set_nonblocking(false)?;
    // SAFETY: `into_raw_fd` gives up ownership of a connected TCP socket's descriptor,
    // which the stream then owns.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// Waits for a non-blocking connect to finish: the socket has a peer, or an error.
async fn wait_connected(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(e) = socket.take_error()? {
            return Err(e);
        }
        if socket.peer_addr().is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        rt::sleep(Duration::from_millis(1)).await;
    }
}

/// A connection's stream: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tls::TlsStream>),
}

/// The reading half of a [`Stream`].
pub enum ReadHalf {
    /// A descriptor of its own (see [`split`]).
    Plain(TcpStream),
    Tls(futures_lite::io::ReadHalf<Box<tls::TlsStream>>),
}

/// The writing half of a [`Stream`], with the socket's descriptor to shut it down.
pub struct WriteHalf {
    inner: WriteInner,
    fd: std::os::fd::RawFd,
}

enum WriteInner {
    Plain(TcpStream),
    Tls(futures_lite::io::WriteHalf<Box<tls::TlsStream>>),
}

/// Splits a stream into a buffered reading half and a writing half, so a reader task and a
/// writer task can run at once. Plain TCP: two descriptors of one socket, no lock; TLS: the
/// halves share the session (one rustls state machine), behind an uncontended lock.
pub fn split(stream: Stream) -> io::Result<(BufReader<ReadHalf>, WriteHalf)> {
    let (read, inner, fd) = match stream {
        Stream::Plain(stream) => {
            stream.set_nodelay(true).map_err(io::Error::from)?;
            // SAFETY: dup returns a new descriptor we own, or -1 which we check.
            let fd = unsafe { libc::dup(stream.as_raw_fd()) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh, owned descriptor of a connected TCP socket.
            let writer = unsafe { TcpStream::from_raw_fd(fd) };
            let raw = writer.as_raw_fd();
            (ReadHalf::Plain(stream), WriteInner::Plain(writer), raw)
        }
        Stream::Tls(tls) => {
            let tcp = tls::tcp_of(&tls);
            tcp.set_nodelay(true).map_err(io::Error::from)?;
            let raw = tcp.as_raw_fd();
            let (r, w) = futures_lite::io::split(tls);
            (ReadHalf::Tls(r), WriteInner::Tls(w), raw)
        }
    };
    Ok((BufReader::with_capacity(READ_BUFFER_BYTES, read), WriteHalf { inner, fd }))
}

impl WriteHalf {
    /// Shuts the socket down in both directions (wakes a reader blocked on it).
    pub fn shutdown(&self) {
        // SAFETY: shutdown on the descriptor of a socket this half keeps open (it owns it,
        // or shares the TLS stream that owns it).
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            ReadHalf::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            WriteInner::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            WriteInner::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            WriteInner::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            WriteInner::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            WriteInner::Plain(s) => std::pin::Pin::new(s).poll_close(cx),
            WriteInner::Tls(s) => std::pin::Pin::new(s).poll_close(cx),
        }
    }
}

/// A descriptor of the stream's socket of its own, to shut the socket down later from
/// outside the tasks that read and write it ([`shutdown_fd`]).
pub fn shutdown_handle(stream: &TcpStream) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: dup returns a new descriptor we own, or -1 which we check.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Shuts down, in both directions, the socket `fd` is a descriptor of.
pub fn shutdown_fd(fd: &std::os::fd::OwnedFd) {
    // SAFETY: shutdown on a descriptor we own.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
}
