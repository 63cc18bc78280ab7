//! Client requests a node forwards to another (multi-master and forwarding modes): one link
//! per shard and node, reused, and the order the reader passed them on kept on it.
//!
//! While the link to a node is being opened, the requests for that node wait in a queue,
//! bounded by [`MAX_FORWARDS_WAITING_FOR_LINK`], behind a single connect, and go out in
//! their order once it opens (or all fail, when it does not); a request that finds the link
//! open and nobody waiting is queued on it at once. Before, each request that found no open
//! link opened one of its own, and a burst raced to the owner over several links, stored in
//! another order than sent.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use futures_channel::oneshot;

use super::cluster::cluster;
use crate::limits::MAX_FORWARDS_WAITING_FOR_LINK;
use crate::net::connection::{Connection, LinkError};
use crate::protocol::{BodyBuf, Frame};
use crate::replication::NodeId;
use crate::rt;
use crate::shard::Shard;

/// A forwarded request's answer from the other node.
pub type Answer = Pin<Box<dyn Future<Output = Result<Frame, LinkError>>>>;

/// A request queued on a link: the link (to abort it when the answer never comes) and the
/// answer.
pub struct Queued {
    pub conn: Rc<Connection>,
    pub answer: Answer,
}

/// A shard's links for forwarded requests, one per node, and what waits for them to open.
#[derive(Default)]
pub struct ForwardLinks {
    open: RefCell<HashMap<NodeId, Rc<Connection>>>,
    waiting: RefCell<HashMap<NodeId, VecDeque<Waiting>>>,
}

struct Waiting {
    kind: u16,
    archive: BodyBuf,
    payload: Vec<Bytes>,
    queued: oneshot::Sender<Result<Queued, String>>,
}

/// Queues a request for `node`, after every request queued for it before: on the link now
/// when it is open and nothing waits for it, else once the link opens. The future says
/// what came of it (why not, when the link could not be opened).
pub fn queue(
    shard: &Rc<Shard>,
    node: NodeId,
    kind: u16,
    archive: BodyBuf,
    payload: Vec<Bytes>,
) -> impl Future<Output = Result<Queued, String>> {
    let (tx, rx) = oneshot::channel();
    let links = &cluster(shard).forwards;
    // No borrow is held across the send or the spawn: a spawned task may run at once
    // (glommio polls it before `spawn` returns when it can), and its connect may fail at
    // once too, reaching `open_link`'s own borrows (a shard panicked on this in the
    // nemesis).
    let waiting = links.waiting.borrow().get(&node).map_or(0, VecDeque::len);
    let live = links.open.borrow().get(&node).filter(|c| !c.is_broken()).cloned();
    match live {
        Some(conn) if waiting == 0 => {
            let _ = tx.send(Ok(send(conn, kind, archive, payload)));
        }
        _ if waiting >= MAX_FORWARDS_WAITING_FOR_LINK => {
            let _ = tx.send(Err(format!("{waiting} requests already wait for the link to node {node}")));
        }
        _ => {
            links.waiting.borrow_mut().entry(node).or_default().push_back(Waiting {
                kind,
                archive,
                payload,
                queued: tx,
            });
            if waiting == 0 {
                rt::spawn(open_link(shard.clone(), node));
            }
        }
    }
    async move { rx.await.unwrap_or_else(|_| Err("the shard is stopping".into())) }
}

fn send(conn: Rc<Connection>, kind: u16, archive: BodyBuf, payload: Vec<Bytes>) -> Queued {
    let answer = Box::pin(conn.send_kind(kind, archive, payload));
    Queued { conn, answer }
}

/// Opens the link to `node` (one connect at a time per node) and sends what waited for it,
/// in order; or fails it all.
async fn open_link(shard: Rc<Shard>, node: NodeId) {
    let opened = super::data_link::connect(&shard, node).await;
    let links = &cluster(&shard).forwards;
    if let Ok(conn) = &opened {
        links.open.borrow_mut().insert(node, conn.clone());
    }
    let waiting = links.waiting.borrow_mut().remove(&node).unwrap_or_default();
    // (The borrow ended above: an answer sent here may run its waiter at once.)
    for w in waiting {
        let result = match &opened {
            Ok(conn) => Ok(send(conn.clone(), w.kind, w.archive, w.payload)),
            Err(e) => Err(e.clone()),
        };
        let _ = w.queued.send(result);
    }
}
