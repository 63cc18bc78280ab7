//! The client-facing server of a shard: accepting connections, reading frames, routing each
//! request to the shard that owns its partition, and writing the answers.
//!
//! A connection is served by two tasks: the reader (this module) and the writer
//! ([`crate::net::write_loop`]). Requests are pipelined: up to
//! [`MAX_IN_FLIGHT_PER_CONNECTION`] run at once and their answers go out as they complete,
//! matched by correlation id. Requests for one partition keep their order: local ones are
//! spawned in arrival order and append before their first `.await`; those for another
//! shard are sent over the mesh, and those for another node (`placement::Route::Node`)
//! queued on its link, in arrival order by the reader itself. The reader decides where a
//! request goes once (`Placement::route`); nothing downstream routes it again.

mod auth;
mod authz;
mod cluster_handlers;
pub mod connections;
pub mod handlers;
pub(crate) mod placement;
pub mod quotas;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::net::{TcpListener, TcpStream};
use crate::rt::Semaphore;
use crate::shard::mesh::MeshReceiver;

use crate::limits::MAX_IN_FLIGHT_PER_CONNECTION;
use crate::net::{self, Outbox, ReadError};
use crate::protocol::messages::ApiKind;
use crate::protocol::node_auth::{fresh_nonce, Handshake, LinkKind, Nonce};
use crate::protocol::peer::{check_hello, AppendRequest, PeerAccepted, PeerChallenge, PeerHello, PeerKind, PeerProof};
use crate::protocol::{access, ErrorCode, Frame};
use crate::replication::NodeId;
use crate::rt;
use crate::shard::mesh::{MeshMsg, MeshReply, MeshRequest};
use crate::shard::Shard;
use placement::{Placement, Route};

pub use handlers::error_frame;

/// Accepts connections until `stopped()` says so (checked every 50 ms).
///
/// The accept itself runs in its own task and is never raced against a timer: dropping an
/// io_uring accept that the kernel has just completed would lose that connection (accepted
/// by the kernel, never served), so one accept stays pending for the life of the shard.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, stopped: impl Fn() -> bool) {
    spawn_acceptor(shard, listener, "client", serve_connection);
    while !stopped() {
        rt::sleep(Duration::from_millis(50)).await;
    }
}

/// Accepts connections on `listener` for the life of the shard, each served by `serve` in
/// a task of its own (the native port and the Kafka port; `what` names it in the log).
pub fn spawn_acceptor<F, Fut>(shard: Rc<Shard>, listener: TcpListener, what: &'static str, serve: F)
where
    F: Fn(Rc<Shard>, TcpStream) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    rt::spawn(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => rt::spawn(serve(shard.clone(), stream)),
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    log::warn!("{what} listener: accept failed: {e}");
                    rt::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}

async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) {
    let peer_addr = stream.peer_addr().ok();
    let peer = peer_addr.map_or_else(|| "?".to_string(), |a| a.to_string());
    let admitted = match peer_addr {
        Some(addr) => shard.connections.admit(addr.ip()),
        None => Err(connections::Refused::Broker(0)),
    };
    let Some((stream, certified)) = secure(&shard, stream, &peer).await else { return };
    let (mut reader, writer) = match net::split(stream) {
        Ok(halves) => halves,
        Err(e) => {
            log::warn!("connection from {peer}: {e}");
            return;
        }
    };
    let outbox = Outbox::new();
    let out = outbox.clone();
    // Requests in flight, and bytes of answers not yet written (reserved when a request is
    // read): at their limits the reader stops reading, and the client's sends back up.
    let in_flight = Rc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION as u64));
    let answer_bytes = Rc::new(Semaphore::new(shard.config.max_answer_bytes_per_connection as u64));
    let (in_flight_w, answer_bytes_w) = (in_flight.clone(), answer_bytes.clone());
    let writer_task = rt::spawn_joinable(async move {
        let mut writer = writer;
        let result = net::write_loop(&mut writer, out.clone()).await;
        // The socket is gone: what is queued will never be written; a reader waiting for
        // permits must not wait for ever.
        out.abandon();
        in_flight_w.close();
        answer_bytes_w.close();
        result
    });
    let _slot = match admitted {
        Ok(slot) => slot,
        Err(refused) => {
            log::warn!("refusing the connection from {peer}: {refused}");
            outbox.push(error_frame(0, 0, ErrorCode::TooManyConnections, &refused.to_string()));
            outbox.close();
            let _ = writer_task.await;
            return;
        }
    };
    let limits = shard.config.frame_limits();
    // Moved on by the node handshake (node-to-node links only).
    let mut auth = PeerAuth::Client;
    // Client authentication (`[auth]`).
    let mut client_auth = auth::ConnectionAuth::new(peer_addr.map(|a| a.ip()), certified.principal.clone());
    let mut quota: Option<quotas::ConnectionQuota> = None;
    loop {
        let mut frame = match net::read_frame(&mut reader, limits).await {
            Ok(frame) => frame,
            Err(ReadError::Closed) => break,
            Err(ReadError::Idle) => {
                log::debug!("closing connection from {peer}: idle for idle_timeout_ms");
                break;
            }
            Err(ReadError::Io(e)) => {
                log::debug!("connection from {peer}: {e}");
                break;
            }
            Err(ReadError::Timeout) => {
                log::warn!("closing connection from {peer}: a frame started but did not complete in time");
                outbox.push(error_frame(0, 0, ErrorCode::Timeout, "frame incomplete: closing the connection"));
                break;
            }
            Err(ReadError::BadHeader(e)) => {
                log::warn!("closing connection from {peer}: {e}");
                let code = match e {
                    crate::protocol::FrameError::TooLarge { .. } | crate::protocol::FrameError::ArchiveTooLarge(_) => {
                        ErrorCode::FrameTooLarge
                    }
                    crate::protocol::FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
                    _ => ErrorCode::CorruptFrame,
                };
                outbox.push(error_frame(0, 0, code, &format!("{e}: closing the connection")));
                break;
            }
            Err(ReadError::BadBody { header, error }) => {
                log::warn!("connection from {peer}: {error} (request {})", header.correlation_id);
                outbox.push(error_frame(
                    header.kind,
                    header.correlation_id,
                    ErrorCode::CorruptFrame,
                    &error.to_string(),
                ));
                continue;
            }
        };
        if shard.shutting_down.get() {
            outbox.push(error_frame(
                frame.header.kind,
                frame.header.correlation_id,
                ErrorCode::ShuttingDown,
                "the broker is shutting down",
            ));
            break;
        }
        if PeerKind::from_u16(frame.header.kind).is_some() {
            match check_peer_frame(&shard, &frame, &mut auth, &certified.dns_names) {
                PeerCheck::Dispatch => {}
                PeerCheck::Answered(out) => {
                    outbox.push(out);
                    continue;
                }
                PeerCheck::Refused(out) => {
                    // (Rate-limited: a flood of forged hellos must not fill the disk.)
                    crate::log_limited!(warn, "node-to-node link from {peer} refused: {}", describe(&out));
                    outbox.push(out);
                    break;
                }
            }
        }
        frame.from_node = auth.node();
        let (kind, corr) = (frame.header.kind, frame.header.correlation_id);
        if kind == ApiKind::Authenticate as u16 && frame.from_node.is_none() {
            match auth::authenticate(&shard, &frame, &mut client_auth) {
                Ok((result, _)) => outbox.push(handlers::answer(kind, corr, result)),
                Err(e) => {
                    // (Rate-limited: a flood of bad passwords must not fill the disk.)
                    crate::log_limited!(warn, "connection from {peer}: {}", e.message);
                    outbox.push(error_frame(kind, corr, e.code, &e.message));
                    break;
                }
            }
            continue;
        }
        if let Err(e) = auth::admit(&shard, &frame, &client_auth) {
            crate::log_limited!(warn, "connection from {peer} refused: {}", e.message);
            outbox.push(error_frame(kind, corr, e.code, &e.message));
            break;
        }
        frame.principal = client_auth.principal();
        let placement = Placement::of(&frame);
        if let Err(e) = authz::authorize(&shard, &frame, &placement) {
            crate::log_limited!(warn, "denied a request from {peer}: {}", e.message);
            outbox.push(error_frame(kind, corr, e.code, &e.message));
            continue;
        }
        let route = placement.route(&shard, frame.from_node);
        let reserve = placement.answer_reservation().min(shard.config.max_answer_bytes_per_connection as u64);
        match quota_wait(&shard, &frame, &mut quota) {
            Ok(wait) if !wait.is_zero() => {
                // Throttled: this answer comes later, and nothing more is read meanwhile.
                frame.throttle_ms = wait.as_millis() as u32;
                rt::sleep(wait).await;
            }
            Ok(_) => {}
            Err(e) => {
                crate::log_limited!(warn, "connection from {peer} refused: {}", e.message);
                outbox.push(error_frame(kind, corr, e.code, &e.message));
                break;
            }
        }
        let permits = async {
            let request = in_flight.clone().acquire_static_permit(1).await.ok()?;
            let bytes = answer_bytes.clone().acquire_static_permit(reserve).await.ok()?;
            Some(vec![request, bytes])
        };
        // A client that reads none of its answers for the idle timeout is gone or hostile.
        let held = match limits.idle_timeout {
            Some(idle) => rt::timeout(idle, permits).await.flatten(),
            None => permits.await,
        };
        let Some(held) = held else {
            log::warn!("closing connection from {peer}: its answers have not been read");
            break;
        };
        let fetch_quota = quota.as_ref().filter(|_| kind == ApiKind::Fetch as u16).map(|q| q.shared());
        dispatch(&shard, frame, route, &outbox, held, fetch_quota).await;
    }
    outbox.close();
    let _ = writer_task.await;
}

/// The connection's stream: plain, or (with `[tls]`) after a TLS handshake, which must
/// complete within the frame timeout; and the principal its client certificate names.
/// None when the handshake failed (logged, rate-limited: a flood must not fill the disk).
async fn secure(shard: &Shard, stream: TcpStream, peer: &str) -> Option<(net::Stream, Certified)> {
    let Some(tls) = &shard.tls else { return Some((net::Stream::Plain(stream), Certified::default())) };
    let within = Duration::from_millis(shard.config.frame_timeout_ms);
    match rt::timeout(within, tls.accept(stream)).await {
        Some(Ok(accepted)) => {
            let certified = Certified { principal: accepted.principal.map(Arc::from), dns_names: accepted.dns_names };
            Some((net::Stream::Tls(Box::new(accepted.stream)), certified))
        }
        Some(Err(e)) => {
            crate::log_limited!(warn, "TLS handshake with {peer} failed: {e}");
            None
        }
        None => {
            crate::log_limited!(warn, "TLS handshake with {peer} did not complete within {within:?}: closing");
            None
        }
    }
}

/// What a connection's verified TLS client certificate says.
#[derive(Default)]
struct Certified {
    /// The user it authenticates the connection as.
    principal: Option<Arc<str>>,
    /// Its DNS names: a node's certificate names the node ([`net::tls::node_name`]).
    dns_names: Vec<String>,
}

enum PeerCheck {
    /// A valid replication frame from an authenticated node: route it like a request.
    Dispatch,
    /// Answered here (a step of the handshake).
    Answered(crate::protocol::OutFrame),
    /// Refused; the connection closes.
    Refused(crate::protocol::OutFrame),
}

/// Where a connection stands in the node handshake ([`crate::protocol::node_auth`]).
enum PeerAuth {
    /// A client, or a node that has not said hello.
    Client,
    /// A node said hello and was challenged: its proof must come next.
    Challenged { node: NodeId, initiator_nonce: Nonce, acceptor_nonce: Nonce },
    /// A node that proved it holds the cluster secret.
    Node(NodeId),
}

impl PeerAuth {
    fn node(&self) -> Option<NodeId> {
        match self {
            PeerAuth::Node(n) => Some(*n),
            _ => None,
        }
    }
}

/// Node-to-node frames: the handshake must come first (hello, then proof), and appends
/// must come from the node that proved who it is.
fn check_peer_frame(shard: &Shard, frame: &Frame, auth: &mut PeerAuth, cert_names: &[String]) -> PeerCheck {
    let (kind, corr) = (frame.header.kind, frame.header.correlation_id);
    let refuse = |code, msg: &str| PeerCheck::Refused(error_frame(kind, corr, code, msg));
    let Some(cluster) = shard.cluster.as_ref() else {
        return refuse(ErrorCode::InvalidRequest, "this broker is not a cluster member");
    };
    let settings = &cluster.control.settings;
    let answer = |archive| {
        PeerCheck::Answered(crate::protocol::OutFrame::new(
            kind,
            crate::protocol::frame::FLAG_RESPONSE,
            corr,
            archive,
            Vec::new(),
        ))
    };
    match (PeerKind::from_u16(kind), &*auth) {
        (Some(PeerKind::Hello), PeerAuth::Client) => {
            let hello = match crate::protocol::decode::<PeerHello>(frame.archive()) {
                Ok(h) => h,
                Err(e) => return refuse(ErrorCode::AuthenticationFailed, &format!("bad hello: {e}")),
            };
            let node = match check_hello(&hello, &settings.cluster_id, &settings.node_ids(), cluster.node_id) {
                Ok(node) => node,
                Err(e) => return refuse(ErrorCode::AuthenticationFailed, &e.to_string()),
            };
            // With TLS, the link's certificate must name the node it says it is.
            let wanted = net::tls::node_name(&settings.cluster_id, node);
            if shard.tls.is_some() && !cert_names.contains(&wanted) {
                let msg = format!("node {node}'s link presented no certificate naming {wanted}");
                return refuse(ErrorCode::AuthenticationFailed, &msg);
            }
            let acceptor_nonce = fresh_nonce();
            let proof = handshake(settings, node, cluster.node_id, hello.nonce, acceptor_nonce).acceptor_proof();
            *auth = PeerAuth::Challenged { node, initiator_nonce: hello.nonce, acceptor_nonce };
            answer(crate::protocol::encode(&PeerChallenge { node_id: cluster.node_id, nonce: acceptor_nonce, proof }))
        }
        (Some(PeerKind::Proof), &PeerAuth::Challenged { node, initiator_nonce, acceptor_nonce }) => {
            let checked = crate::protocol::decode::<PeerProof>(frame.archive())
                .map_err(|e| format!("bad proof: {e}"))
                .and_then(|p| {
                    handshake(settings, node, cluster.node_id, initiator_nonce, acceptor_nonce)
                        .check_initiator(&p.proof)
                        .map_err(|e| e.to_string())
                });
            match checked {
                Ok(()) => {
                    *auth = PeerAuth::Node(node);
                    answer(crate::protocol::encode(&PeerAccepted { node_id: cluster.node_id }))
                }
                Err(why) => refuse(ErrorCode::AuthenticationFailed, &why),
            }
        }
        (Some(PeerKind::Append), &PeerAuth::Node(node)) => match access::<AppendRequest>(frame.archive()) {
            Ok(r) if r.leader.to_native() == node => PeerCheck::Dispatch,
            Ok(r) => refuse(
                ErrorCode::InvalidRequest,
                &format!("node {node} sent an append as node {}", r.leader.to_native()),
            ),
            Err(e) => refuse(ErrorCode::InvalidRequest, &format!("bad append: {e}")),
        },
        (Some(PeerKind::Hello), _) => refuse(ErrorCode::AuthenticationFailed, "a second hello"),
        (Some(PeerKind::Proof), _) => refuse(ErrorCode::AuthenticationFailed, "a proof without a hello"),
        (Some(_), PeerAuth::Node(_)) => {
            refuse(ErrorCode::UnknownKind, &format!("node-to-node kind {kind} is an answer"))
        }
        (Some(_), _) => refuse(
            ErrorCode::AuthenticationFailed,
            &format!("node-to-node kind {kind} before the node proved the cluster secret"),
        ),
        (None, _) => refuse(ErrorCode::UnknownKind, &format!("unknown node-to-node kind {kind}")),
    }
}

fn handshake(
    settings: &crate::config::ClusterSettings,
    initiator: NodeId,
    acceptor: NodeId,
    initiator_nonce: Nonce,
    acceptor_nonce: Nonce,
) -> Handshake<'_> {
    Handshake {
        secret: &settings.secret,
        link: LinkKind::Data,
        cluster_id: &settings.cluster_id,
        initiator,
        acceptor,
        initiator_nonce,
        acceptor_nonce,
    }
}

fn describe(out: &crate::protocol::OutFrame) -> String {
    crate::protocol::decode::<crate::protocol::messages::ErrorResponse>(&out.archive)
        .map_or_else(|_| "?".into(), |e| e.message)
}

/// With quotas, the connection's hold on its principal's (taken with its first request
/// once authenticated: refused when the principal holds all the connections it may), and
/// how long this request must wait first.
fn quota_wait(
    shard: &Shard,
    frame: &Frame,
    quota: &mut Option<quotas::ConnectionQuota>,
) -> Result<Duration, handlers::ApiError> {
    let (Some(quotas), Some(principal), None) = (&shard.quotas, &frame.principal, frame.from_node) else {
        return Ok(Duration::ZERO);
    };
    if quota.is_none() {
        let admitted =
            quotas.admit(principal).map_err(|m| handlers::ApiError::new(ErrorCode::TooManyConnections, m))?;
        *quota = Some(admitted);
    }
    let produced = (frame.header.kind == ApiKind::Produce as u16).then_some(u64::from(frame.header.payload_len));
    Ok(quota.as_ref().map_or(Duration::ZERO, |q| q.before(produced)))
}

/// Routes a request to its `owner` shard: handled here, or forwarded over the mesh.
/// `fetch_quota`: charged with the answer's bytes.
async fn dispatch(
    shard: &Rc<Shard>,
    frame: Frame,
    route: Route,
    outbox: &Rc<Outbox>,
    held: net::Held,
    fetch_quota: Option<Arc<quotas::PrincipalQuota>>,
) {
    // A local request runs in the one task that also queues its answer (the hot path of a
    // connection on its partition's shard: one task per request, not two).
    let answer: PendingAnswer = match route {
        Route::Shard(owner) if owner == shard.id => {
            let shard = shard.clone();
            Box::pin(async move { handlers::handle(&shard, frame).await })
        }
        route => send_request(shard, frame, route).await,
    };
    let outbox = outbox.clone();
    rt::spawn(async move {
        let out = answer.await;
        if let Some(q) = &fetch_quota {
            q.fetched(out.payload.iter().map(|c| c.len() as u64).sum());
        }
        outbox.push_holding(out, Some(held));
    });
}

/// An answer to come.
pub type PendingAnswer = std::pin::Pin<Box<dyn std::future::Future<Output = crate::protocol::OutFrame>>>;

/// Sends a request on its way to `route` and returns its answer to come. What must happen
/// in the order requests arrive happens before this returns: a local request is spawned
/// (it appends before its first `.await`), one for another shard is queued on the mesh, one
/// for another node on its link. The native reader and the Kafka listener both send
/// requests this way.
pub(crate) async fn send_request(shard: &Rc<Shard>, frame: Frame, route: Route) -> PendingAnswer {
    let (kind, corr) = (frame.header.kind, frame.header.correlation_id);
    match route {
        Route::Shard(owner) if owner == shard.id => {
            let shard = shard.clone();
            let task = rt::spawn_joinable(async move { handlers::handle(&shard, frame).await });
            Box::pin(async move {
                task.await.unwrap_or_else(|| error_frame(kind, corr, ErrorCode::Unavailable, "the request was dropped"))
            })
        }
        Route::Shard(owner) => {
            let reply = shard.mesh.send(owner, MeshRequest::Client(frame)).await;
            Box::pin(async move {
                match reply.await {
                    Ok(MeshReply::Client(out)) => out,
                    _ => error_frame(kind, corr, ErrorCode::Unavailable, &format!("shard {owner} did not answer")),
                }
            })
        }
        Route::Node(node) => {
            // Queued on the node's link now (when open), in the order the reader read them.
            let answer = cluster_handlers::forward(shard, node, frame);
            Box::pin(async move { handlers::answer(kind, corr, answer.await) })
        }
    }
}

/// Serves the requests and replies that arrive from one peer shard.
pub async fn serve_peer(shard: Rc<Shard>, _peer: usize, rx: MeshReceiver<MeshMsg>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            MeshMsg::Reply { id, reply } => shard.mesh.deliver(id, reply),
            MeshMsg::Request { id, from, request } => {
                let shard = shard.clone();
                rt::spawn(async move {
                    let reply = handlers::handle_mesh_request(&shard, request).await;
                    shard.mesh.reply(from, id, reply).await;
                });
            }
        }
    }
}
