//! The Kafka-protocol listener (docs/kafka.md): Kafka clients produce and consume through
//! it unchanged.
//!
//! Every shard accepts on the Kafka port (SO_REUSEPORT, as on the native port). A request
//! is decoded with the `kafka-protocol` crate (codecs generated from Kafka's schemas;
//! `third_party/kafka-protocol`, patched so that no count on the wire sizes an allocation),
//! then taken apart per partition into the native request it is (`bridge.rs`), which goes
//! the native way: routed once to the owning shard or node (`server::placement`), the same
//! handlers, the same log. Batches are Kafka's RecordBatch v2 on both protocols
//! (`protocol/batch.rs`), so a produced batch is stored, and a stored one served, as is.
//!
//! Kafka answers the requests of a connection in the order they came: the reader sends
//! each request on its way (in order, as the native reader does) and queues its answer to
//! come; the writer writes the answers in that order.

mod admin;
mod apis;
mod bridge;
pub mod codec;
mod data;
mod metadata;
pub mod settings;

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};

use crate::net::{self, TcpStream};
use crate::rt;
use crate::shard::Shard;

pub use settings::KafkaSettings;

/// Requests of one connection in flight at once (librdkafka pipelines up to 5 produces per
/// partition, 1,000,000 in all by default; Kafka's brokers read one request at a time).
const MAX_IN_FLIGHT: usize = 64;

/// A request's buffer grows by at most this much before its bytes arrive.
const READ_STEP_BYTES: usize = 64 * 1024;

/// An answer to come: the bytes to write (length prefix included), or nothing (a produce
/// with `acks=0` is not answered).
type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Bytes>>>>;

/// Serves one Kafka client connection (accepted by `server::spawn_acceptor`).
pub async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    let admitted = match stream.peer_addr() {
        Ok(addr) => shard.connections.admit(addr.ip()),
        Err(_) => return,
    };
    let Ok(_slot) = admitted.inspect_err(|refused| log::warn!("kafka: refusing the connection from {peer}: {refused}"))
    else {
        return;
    };
    let (mut reader, mut writer) = match net::split(net::Stream::Plain(stream)) {
        Ok(halves) => halves,
        Err(e) => {
            log::warn!("kafka: connection from {peer}: {e}");
            return;
        }
    };
    let (mut answers, mut queued) = futures_channel::mpsc::channel::<Answer>(MAX_IN_FLIGHT);
    let writer_task = rt::spawn_joinable(async move {
        while let Some(answer) = queued.next().await {
            let Some(bytes) = answer.await else { continue };
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
    });
    let limits = Limits::of(&shard);
    loop {
        let request = match read_request(&mut reader, &limits).await.and_then(|b| codec::decode(b).map_err(Some)) {
            Ok(r) => r,
            Err(why) => {
                if let Some(why) = why {
                    crate::log_limited!(warn, "kafka: closing the connection from {peer}: {why}");
                }
                break;
            }
        };
        if shard.shutting_down.get() {
            break;
        }
        let answer = match apis::serve(&shard, request).await {
            Ok(answer) => answer,
            Err(why) => {
                crate::log_limited!(warn, "kafka: closing the connection from {peer}: {why}");
                break;
            }
        };
        // A full queue waits for the writer: the client must read its answers.
        match rt::timeout(limits.idle, std::future::poll_fn(|cx| answers.poll_ready(cx))).await {
            None => {
                log::warn!("kafka: closing the connection from {peer}: its answers have not been read");
                break;
            }
            Some(Err(_)) => break,
            Some(Ok(())) => {}
        }
        if answers.start_send(answer).is_err() {
            break;
        }
    }
    drop(answers);
    let _ = writer_task.await;
}

struct Limits {
    max_request_bytes: usize,
    frame: Duration,
    idle: Duration,
}

impl Limits {
    fn of(shard: &Shard) -> Limits {
        Limits {
            max_request_bytes: shard.config.kafka.max_request_bytes,
            frame: Duration::from_millis(shard.config.frame_timeout_ms),
            idle: match shard.config.idle_timeout_ms {
                0 => Duration::from_secs(u64::from(u32::MAX)),
                ms => Duration::from_millis(ms),
            },
        }
    }
}

/// Reads one request's bytes: its 4-byte length (within the idle timeout), then the rest
/// (within the frame timeout). `Err(None)`: the client closed the connection.
async fn read_request<R: futures_lite::AsyncRead + Unpin>(
    reader: &mut R,
    limits: &Limits,
) -> Result<Bytes, Option<String>> {
    let mut size = [0u8; 4];
    match rt::timeout(limits.idle, reader.read_exact(&mut size)).await {
        None => return Err(Some("idle for idle_timeout_ms".into())),
        Some(Err(_)) => return Err(None),
        Some(Ok(())) => {}
    }
    let size = i32::from_be_bytes(size);
    if size < 8 || size as usize > limits.max_request_bytes {
        return Err(Some(format!(
            "a request of {size} bytes (at most {} with kafka.max_request_bytes)",
            limits.max_request_bytes
        )));
    }
    // The buffer grows as the bytes arrive: a length alone reserves nothing.
    let size = size as usize;
    let mut buf = BytesMut::new();
    let read = async {
        while buf.len() < size {
            let start = buf.len();
            buf.resize(start + (size - start).min(READ_STEP_BYTES), 0);
            reader.read_exact(&mut buf[start..]).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    match rt::timeout(limits.frame, read).await {
        None => Err(Some("a request started but did not complete within frame_timeout_ms".into())),
        Some(Err(e)) => Err(Some(e.to_string())),
        Some(Ok(())) => Ok(buf.freeze()),
    }
}
