//! A consumer: long-polling fetches of a topic's partitions (all at once, pipelined on one
//! connection), CRC checks of every batch received, and consumer-group offset commits.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::{is_retriable, Client, ClientError, ReadFrom, Requests};
use crate::protocol::batch::{BatchIter, RecordIter};
use crate::protocol::messages::{
    FetchRequest, FetchResponse, OFFSET_SPEC_EARLIEST, OFFSET_SPEC_LATEST, OFFSET_SPEC_TIMESTAMP,
};
use crate::protocol::{decode, encode, ApiKind};

/// Where a consumer starts in partitions its group has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    Offset(u64),
    /// The first record with a timestamp at or after this (ms since the epoch).
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub start: StartFrom,
    /// Consumer group whose committed offsets take precedence over `start`.
    pub group: Option<String>,
    /// Largest response per partition and fetch.
    pub max_bytes: u32,
    /// Long poll: how long a fetch waits for new data.
    pub max_wait: Duration,
    /// Which replica of each partition to read from (a cluster; a single node serves all).
    pub read_from: ReadFrom,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            start: StartFrom::Latest,
            group: None,
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(500),
            read_from: ReadFrom::Leader,
        }
    }
}

/// One record as the consumer hands it out; key and value share the fetched buffer.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
}

#[derive(Debug, Clone)]
struct Cursor {
    partition: u32,
    next_offset: u64,
    /// High watermark seen in the last fetch (`None` before the first).
    high_watermark: Option<u64>,
    /// Why the last fetch of this partition failed, if it did (retried on the next poll).
    last_failure: Option<String>,
}

/// Where a consumer stands on one partition (for a caller that wants to say why it waits).
#[derive(Debug, Clone)]
pub struct CursorState {
    pub partition: u32,
    pub next_offset: u64,
    pub high_watermark: Option<u64>,
    /// Why its last fetch failed (a retriable error: the consumer retries it).
    pub last_failure: Option<String>,
}

pub struct Consumer {
    client: Rc<Client>,
    topic: String,
    config: ConsumerConfig,
    cursors: Vec<Cursor>,
}

impl Consumer {
    /// A consumer of `partitions` of `topic` (all of them when `None`).
    pub async fn new(
        client: Rc<Client>,
        topic: &str,
        partitions: Option<Vec<u32>>,
        config: ConsumerConfig,
    ) -> Result<Consumer, ClientError> {
        let count = client.partition_count(topic).await?;
        let partitions = partitions.unwrap_or_else(|| (0..count).collect());
        let mut cursors = Vec::new();
        for p in partitions {
            if p >= count {
                return Err(ClientError::Invalid(format!(
                    "topic {topic} has {count} partitions; partition {p} does not exist"
                )));
            }
            let committed = match &config.group {
                Some(g) => client.fetch_offset(g, topic, p).await?,
                None => None,
            };
            let next_offset = match (committed, config.start) {
                (Some(o), _) => o,
                (None, StartFrom::Offset(o)) => o,
                (None, StartFrom::Earliest) => client.list_offsets(topic, p, OFFSET_SPEC_EARLIEST, 0).await?,
                (None, StartFrom::Latest) => client.list_offsets(topic, p, OFFSET_SPEC_LATEST, 0).await?,
                (None, StartFrom::Timestamp(ts)) => client.list_offsets(topic, p, OFFSET_SPEC_TIMESTAMP, ts).await?,
            };
            cursors.push(Cursor { partition: p, next_offset, high_watermark: None, last_failure: None });
        }
        Ok(Consumer { client, topic: topic.to_string(), config, cursors })
    }

    /// Fetches from every partition at once and returns the records received, in offset
    /// order per partition. Empty when nothing arrived within `max_wait`.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, ClientError> {
        let timeout = self.client.config().request_timeout + self.config.max_wait;
        // Long-poll only when no partition is known to have data waiting: otherwise one idle
        // partition would hold back the records of the others.
        let data_waiting = self.cursors.iter().any(|c| c.high_watermark.is_none_or(|hw| c.next_offset < hw));
        let max_wait_ms = if data_waiting { 0 } else { self.config.max_wait.as_millis() as u32 };
        let mut pending = Vec::new();
        for c in &self.cursors {
            let req = FetchRequest {
                topic: self.topic.clone(),
                partition: c.partition,
                offset: c.next_offset,
                max_bytes: self.config.max_bytes,
                max_wait_ms,
            };
            let fut = match self.client.partition_connection(&self.topic, c.partition, self.config.read_from).await {
                Ok(conn) => {
                    futures_lite::future::FutureExt::boxed_local(conn.request(ApiKind::Fetch, encode(&req), Vec::new()))
                }
                Err(e) => futures_lite::future::FutureExt::boxed_local(async move { Err(e) }),
            };
            pending.push(fut);
        }
        let mut records = Vec::new();
        let mut failures = 0;
        for (i, fut) in pending.into_iter().enumerate() {
            let answer = crate::rt::timeout(timeout, fut)
                .await
                .unwrap_or_else(|| Err(ClientError::Timeout("fetch did not complete".into())));
            let frame = match answer {
                Ok(f) => f,
                // A replica went away or stopped leading: ask elsewhere next time.
                Err(e) if is_retriable(&e) => {
                    self.client.route_failed(&self.topic, self.cursors[i].partition, &e);
                    self.cursors[i].last_failure = Some(e.to_string());
                    failures += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let resp = decode::<FetchResponse>(frame.archive())?;
            let cursor = &mut self.cursors[i];
            cursor.high_watermark = Some(resp.high_watermark);
            cursor.last_failure = None;
            let payload = frame.into_payload();
            decode_records(&payload, cursor, &mut records)?;
        }
        if failures > 0 && records.is_empty() {
            crate::rt::sleep(Duration::from_millis(50)).await;
        }
        Ok(records)
    }

    /// Whether every partition was read up to the high watermark of its last fetch.
    pub fn caught_up(&self) -> bool {
        self.cursors.iter().all(|c| c.high_watermark.is_some_and(|hw| c.next_offset >= hw))
    }

    /// Where the consumer stands on each partition, and why its last fetch failed.
    pub fn cursor_states(&self) -> Vec<CursorState> {
        self.cursors
            .iter()
            .map(|c| CursorState {
                partition: c.partition,
                next_offset: c.next_offset,
                high_watermark: c.high_watermark,
                last_failure: c.last_failure.clone(),
            })
            .collect()
    }

    /// The next offset to read, per partition.
    pub fn positions(&self) -> Vec<(u32, u64)> {
        self.cursors.iter().map(|c| (c.partition, c.next_offset)).collect()
    }

    /// Commits the current positions for the consumer's group.
    pub async fn commit(&self) -> Result<(), ClientError> {
        let Some(group) = &self.config.group else {
            return Err(ClientError::Invalid("commit needs a consumer group".into()));
        };
        for c in &self.cursors {
            self.client.commit_offset(group, &self.topic, c.partition, c.next_offset).await?;
        }
        Ok(())
    }
}

/// Checks each batch's CRC and collects the records at or after the cursor.
fn decode_records(payload: &Bytes, cursor: &mut Cursor, out: &mut Vec<ConsumedRecord>) -> Result<(), ClientError> {
    for item in BatchIter::new(payload) {
        let (header, batch) = item.map_err(|e| ClientError::Corrupt(format!("partition {}: {e}", cursor.partition)))?;
        if header.is_control() {
            // A leader's marker, not a message: step over it.
            cursor.next_offset = cursor.next_offset.max(header.next_offset());
            continue;
        }
        for rec in RecordIter::new(batch, &header) {
            let rec = rec.map_err(|e| ClientError::Corrupt(format!("partition {}: {e}", cursor.partition)))?;
            if rec.offset < cursor.next_offset {
                continue;
            }
            out.push(ConsumedRecord {
                partition: cursor.partition,
                offset: rec.offset,
                timestamp: rec.timestamp,
                key: rec.key.map(|k| payload.slice_ref(k)),
                value: payload.slice_ref(rec.value),
            });
        }
        cursor.next_offset = cursor.next_offset.max(header.next_offset());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::batch::{stamp_batch, BatchBuilder};

    #[test]
    fn control_batches_are_skipped_and_checked() {
        let mut data = BatchBuilder::with_capacity(16);
        data.push(None, b"m0", 1);
        let mut first = data.finish(0, 0, 0).to_vec();
        stamp_batch(&mut first, 0, 1);
        let mut control = BatchBuilder::control(2, 2).to_vec();
        stamp_batch(&mut control, 1, 2);
        let mut data = BatchBuilder::with_capacity(16);
        data.push(None, b"m2", 3);
        let mut last = data.finish(0, 0, 0).to_vec();
        stamp_batch(&mut last, 2, 2);
        // A byte the control batch's CRC covers.
        let in_control = first.len() + 30;
        let payload = Bytes::from([first, control, last].concat());
        let mut cursor = Cursor { partition: 0, next_offset: 0, high_watermark: None, last_failure: None };
        let mut out = Vec::new();
        decode_records(&payload, &mut cursor, &mut out).unwrap();
        let got: Vec<_> = out.iter().map(|r| (r.offset, r.value.to_vec())).collect();
        assert_eq!(got, vec![(0, b"m0".to_vec()), (2, b"m2".to_vec())]);
        assert_eq!(cursor.next_offset, 3);
        let mut bad = payload.to_vec();
        bad[in_control] ^= 1;
        let mut cursor = Cursor { partition: 0, next_offset: 0, high_watermark: None, last_failure: None };
        assert!(decode_records(&Bytes::from(bad), &mut cursor, &mut Vec::new()).is_err());
    }
}
