//! One pipelined framed connection to a broker: many requests in flight, answers matched by
//! correlation id, a reader task and a writer task. The client library's requests and a
//! node's links to other nodes (replication, forwarded requests) both ride on it; it knows
//! frames and correlation ids, not what the requests mean.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;

use crate::net::{self, Outbox, ReadError};
use crate::protocol::messages::ErrorResponse;
use crate::protocol::{decode, ApiKind, BodyBuf, ErrorCode, Frame, OutFrame};
use crate::rt;

/// Why a request on a [`Connection`] got no answer, or got an error for one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("connection to {addr} lost: {reason}")]
    Disconnected { addr: String, reason: String },
    /// The broker answered with an error frame.
    #[error("{message} ({code})")]
    Server { code: ErrorCode, message: String, leader_hint: Option<String> },
    #[error("protocol error: {0}")]
    Protocol(String),
}

type Pending = RefCell<HashMap<u64, oneshot::Sender<Result<Frame, LinkError>>>>;

pub struct Connection {
    addr: SocketAddr,
    outbox: Rc<Outbox>,
    pending: Rc<Pending>,
    next_correlation_id: Cell<u64>,
    broken: Rc<RefCell<Option<String>>>,
    /// A descriptor of the socket kept only to shut it down ([`Self::abort`]): it stays
    /// valid while the connection lives, whatever its tasks have closed.
    shutdown: std::os::fd::OwnedFd,
}

impl Connection {
    /// Connects and starts the reader and writer tasks.
    pub async fn connect(
        addr: SocketAddr,
        timeout: Duration,
        max_frame_bytes: usize,
        tls: Option<&crate::net::tls::ClientTls>,
    ) -> Result<Rc<Connection>, LinkError> {
        Self::connect_from(None, addr, timeout, max_frame_bytes, tls).await
    }

    /// [`Self::connect`] from a local address (a node's links leave from its own address).
    pub async fn connect_from(
        source: Option<std::net::IpAddr>,
        addr: SocketAddr,
        timeout: Duration,
        max_frame_bytes: usize,
        tls: Option<&crate::net::tls::ClientTls>,
    ) -> Result<Rc<Connection>, LinkError> {
        let connect_error = |e: std::io::Error| LinkError::Connect { addr: addr.to_string(), message: e.to_string() };
        let stream = net::connect_from(source, addr, timeout).await.map_err(connect_error)?;
        let shutdown = net::shutdown_handle(&stream).map_err(connect_error)?;
        let stream = match tls {
            None => net::Stream::Plain(stream),
            Some(tls) => match rt::timeout(timeout, tls.connect(addr, stream)).await {
                Some(Ok(tls)) => net::Stream::Tls(Box::new(tls)),
                Some(Err(e)) => {
                    return Err(LinkError::Connect { addr: addr.to_string(), message: format!("TLS: {e}") })
                }
                None => return Err(connect_error(std::io::Error::other("the TLS handshake timed out"))),
            },
        };
        let (mut reader, writer) = net::split(stream).map_err(connect_error)?;
        let outbox = Outbox::new();
        let conn = Rc::new(Connection {
            addr,
            outbox: outbox.clone(),
            pending: Rc::new(RefCell::new(HashMap::new())),
            next_correlation_id: Cell::new(1),
            broken: Rc::new(RefCell::new(None)),
            shutdown,
        });
        let (pending, broken, out) = (conn.pending.clone(), conn.broken.clone(), outbox.clone());
        let limits = net::FrameLimits {
            max_frame_bytes,
            completion_timeout: Duration::from_millis(crate::limits::DEFAULT_FRAME_TIMEOUT_MS),
            // A client waits for its answers as long as its requests' own timeouts say.
            idle_timeout: None,
        };
        rt::spawn(async move {
            let mut writer = writer;
            if let Err(e) = net::write_loop(&mut writer, out).await {
                log::debug!("connection to {addr}: write failed: {e}");
            }
            // Wakes the reader task too: the connection is over.
            writer.shutdown();
        });
        rt::spawn(async move {
            let reason = loop {
                match net::read_frame(&mut reader, limits).await {
                    Ok(frame) => {
                        if frame.header.correlation_id == 0 && frame.header.is_error() {
                            break describe_error(&frame).to_string();
                        }
                        let tx = pending.borrow_mut().remove(&frame.header.correlation_id);
                        if let Some(tx) = tx {
                            let _ = tx.send(Ok(frame));
                        }
                    }
                    // Also what a reader sees after this client closed the connection.
                    Err(ReadError::Closed) => {
                        break broken.borrow().clone().unwrap_or_else(|| "the broker closed the connection".into())
                    }
                    Err(ReadError::Io(e)) => break e.to_string(),
                    Err(ReadError::Timeout) => break "a response stalled mid-frame".to_string(),
                    Err(ReadError::Idle) => break "the connection was idle".to_string(),
                    Err(ReadError::BadHeader(e)) => break format!("corrupt response: {e}"),
                    Err(ReadError::BadBody { error, .. }) => break format!("corrupt response: {error}"),
                }
            };
            *broken.borrow_mut() = Some(reason.clone());
            outbox.close();
            for (_, tx) in pending.borrow_mut().drain() {
                let _ = tx.send(Err(LinkError::Disconnected { addr: addr.to_string(), reason: reason.clone() }));
            }
        });
        Ok(conn)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the connection failed; new requests need a new connection.
    pub fn is_broken(&self) -> bool {
        self.broken.borrow().is_some()
    }

    /// Ends the connection now: what is queued is dropped, the socket is shut down (a
    /// write blocked on it fails, the reader stops), and every request waiting for an answer
    /// fails with `reason`. For a peer that stopped answering on a connection TCP still
    /// thinks is open (a machine gone without a reset: nothing is left to retransmit, so
    /// nothing would ever fail).
    pub fn abort(&self, reason: &str) {
        self.broken.borrow_mut().get_or_insert_with(|| reason.to_string());
        self.outbox.abandon();
        net::shutdown_fd(&self.shutdown);
    }

    /// Queues a request now and returns the future of its response. Requests queued in
    /// order are written in order.
    pub fn send(
        &self,
        kind: ApiKind,
        archive: BodyBuf,
        payload: Vec<Bytes>,
    ) -> impl std::future::Future<Output = Result<Frame, LinkError>> {
        self.send_kind(kind as u16, archive, payload)
    }

    /// [`Self::send`] for any frame kind (node-to-node links use kinds of their own).
    pub fn send_kind(
        &self,
        kind: u16,
        archive: BodyBuf,
        payload: Vec<Bytes>,
    ) -> impl std::future::Future<Output = Result<Frame, LinkError>> {
        let id = self.next_correlation_id.get();
        self.next_correlation_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        let broken = self.broken.borrow().clone();
        if broken.is_none() {
            self.pending.borrow_mut().insert(id, tx);
            self.outbox.push(OutFrame::new(kind, 0, id, archive, payload));
        }
        let addr = self.addr.to_string();
        async move {
            if let Some(reason) = broken {
                return Err(LinkError::Disconnected { addr, reason });
            }
            let frame =
                rx.await.map_err(|_| LinkError::Disconnected { addr, reason: "connection dropped".into() })??;
            if frame.header.is_error() {
                return Err(describe_error(&frame));
            }
            if frame.header.kind != kind {
                return Err(LinkError::Protocol(format!(
                    "response of kind {} to a request of kind {kind}",
                    frame.header.kind
                )));
            }
            Ok(frame)
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.broken.borrow_mut().get_or_insert_with(|| "closed by this client".into());
        self.outbox.close();
    }
}

fn describe_error(frame: &Frame) -> LinkError {
    match decode::<ErrorResponse>(frame.archive()) {
        Ok(e) => {
            LinkError::Server { code: ErrorCode::from_u16(e.code), message: e.message, leader_hint: e.leader_hint }
        }
        Err(e) => LinkError::Protocol(format!("undecodable error response: {e}")),
    }
}
