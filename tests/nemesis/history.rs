//! The history checker: what the producers were told and what the consumers read during the
//! run, against the log the cluster holds after it; and how long each fault kept producers
//! waiting.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use super::common::cluster::{read_all, verdict_of, Acked, Seen, Verdict};
use super::faults::{FaultKind, FaultRecord};
use quorra::client::{Client, ClientConfig, ReadFrom};
use quorra::protocol::batch::BatchIter;

/// What a run's history shows.
#[derive(Debug, Default)]
pub struct History {
    /// Every acknowledged record read back from the leaders: lost, duplicated, reordered,
    /// corrupt (the load generator's checker).
    pub verdict: Verdict,
    /// Records consumers read during the run, from leaders and from followers.
    pub reads: u64,
    /// A record a consumer read whose offset later held another record.
    pub stale_reads: u64,
    /// A record a consumer read whose offset later held nothing.
    pub phantom_reads: u64,
    /// Places where a partition's batches (markers included) skip or overlap offsets.
    pub offset_gaps: u64,
    /// The first few problems, for the failure message.
    pub examples: Vec<String>,
}

impl History {
    pub fn is_clean(&self) -> bool {
        self.verdict.is_clean() && self.stale_reads == 0 && self.phantom_reads == 0 && self.offset_gaps == 0
    }
}

/// Checks the run: `acked` from the producers, `seen` from the consumers that read during it.
pub fn check_history(bootstrap: &str, topic: &str, partitions: u32, acked: &Acked, seen: &[&Seen]) -> History {
    // One read of the whole log from the leaders serves the checker and the read checks.
    let mut records = read_all(bootstrap, topic, ReadFrom::Leader, true);
    let verdict = verdict_of(&mut records, acked);
    let log: HashMap<(u32, u64), Vec<u8>> = records.into_iter().map(|(p, o, v)| ((p, o), v)).collect();
    let mut h = History { verdict, ..Default::default() };
    for &(p, offset, ref value) in seen.iter().flat_map(|s| s.iter()) {
        h.reads += 1;
        match log.get(&(p, offset)) {
            Some(v) if v == value => {}
            Some(_) => {
                h.stale_reads += 1;
                note(&mut h.examples, format!("read {p}/{offset} that later held another record"));
            }
            None => {
                h.phantom_reads += 1;
                note(&mut h.examples, format!("read {p}/{offset} that later held nothing"));
            }
        }
    }
    for p in 0..partitions {
        for problem in batch_chain_breaks(bootstrap, topic, p) {
            h.offset_gaps += 1;
            note(&mut h.examples, problem);
        }
    }
    h
}

/// Reads a partition's batches (control batches, the leaders' epoch-start markers,
/// included) from its leader and returns every place where a batch does not start at the
/// offset after the previous one: offsets are dense.
fn batch_chain_breaks(bootstrap: &str, topic: &str, partition: u32) -> Vec<String> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    super::common::run(move || async move {
        let client = Client::connect(ClientConfig::with_bootstrap(&b)).await.expect("connect");
        let mut breaks = Vec::new();
        let mut next = 0u64;
        loop {
            let fetched = fetch_retrying(&client, &t, partition, next).await;
            if next >= fetched.high_watermark {
                return breaks;
            }
            let before = next;
            for item in BatchIter::new(&fetched.batches) {
                let (header, _) = item.expect("a valid batch");
                if header.next_offset() <= next {
                    continue; // the batch holding `next` starts before it: seen already
                }
                if header.base_offset != next {
                    breaks
                        .push(format!("partition {partition}: a batch at {} after offset {next}", header.base_offset));
                }
                next = header.next_offset();
            }
            if next == before {
                breaks.push(format!("partition {partition}: nothing served at {next} below the high watermark"));
                return breaks;
            }
        }
    })
}

/// How long the final read waits for a partition that is between leaders (the last fault
/// may have just healed: an election, a replica's repair).
const LEADER_WAIT: Duration = Duration::from_secs(60);

/// A fetch, retried while the answer is retriable (no leader yet, a leader changing) for up
/// to [`LEADER_WAIT`]; then the error is final.
async fn fetch_retrying(client: &Client, topic: &str, partition: u32, offset: u64) -> quorra::client::FetchResult {
    let deadline = std::time::Instant::now() + LEADER_WAIT;
    loop {
        match client.fetch(topic, partition, offset, 1 << 20, Duration::ZERO).await {
            Ok(f) => return f,
            Err(e) if e.code().is_some_and(|c| c.is_retriable()) && std::time::Instant::now() < deadline => {
                quorra::rt::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("fetch of {topic}/{partition} at {offset}: {e:?}"),
        }
    }
}

fn note(examples: &mut Vec<String>, what: String) {
    if examples.len() < 10 {
        examples.push(what);
    }
}

/// The longest stretch of `[from, to]` ms in which no producer got an acknowledgement
/// (`acks`: acknowledgement times, sorted). A silence crossing an end counts only its part
/// inside the window.
pub fn longest_silence(acks: &[u64], from: u64, to: u64) -> u64 {
    let mut last = from;
    let mut longest = 0;
    for &t in &acks[acks.partition_point(|&t| t < from)..] {
        longest = longest.max(t.min(to) - last);
        if t >= to {
            return longest;
        }
        last = t;
    }
    longest.max(to.saturating_sub(last))
}

/// Each fault with the producers' longest silence from its start to the next fault's start.
pub fn unavailability(faults: &[FaultRecord], acked: &Acked, run_end_ms: u64) -> Vec<(FaultRecord, u64)> {
    let mut acks: Vec<u64> = acked.times_ms.iter().map(|&(_, t)| t).collect();
    acks.sort_unstable();
    faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let until = faults.get(i + 1).map_or(run_end_ms, |next| next.start_ms);
            (f.clone(), longest_silence(&acks, f.start_ms, until))
        })
        .collect()
}

/// The report of one mode's run, in Markdown.
pub fn report(mode: &str, seed: u64, secs: u64, history: &History, faults: &[(FaultRecord, u64)], ops: u64) -> String {
    let mut out = String::new();
    let v = &history.verdict;
    let _ = writeln!(out, "## {mode}: {secs} s, seed {seed}\n");
    let _ = writeln!(
        out,
        "| operations (acks) | reads | lost | duplicated | reordered | corrupt | stale reads | phantom reads | offset gaps |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| {ops} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        history.reads,
        v.lost,
        v.duplicated,
        v.reordered,
        v.corrupt,
        history.stale_reads,
        history.phantom_reads,
        history.offset_gaps
    );
    let mut by_kind: HashMap<FaultKind, Vec<u64>> = HashMap::new();
    for (f, silence) in faults {
        by_kind.entry(f.kind).or_default().push(*silence);
    }
    let _ = writeln!(out, "Longest time without an acknowledgement, per fault kind (ms):\n");
    let _ = writeln!(out, "| fault | applied | median | p99 | max |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort();
    for (kind, mut silences) in kinds {
        silences.sort_unstable();
        let at = |q: f64| silences[((silences.len() - 1) as f64 * q).round() as usize];
        let _ = writeln!(out, "| {kind:?} | {} | {} | {} | {} |", silences.len(), at(0.5), at(0.99), at(1.0));
    }
    let _ = writeln!(out, "\n<details><summary>every fault</summary>\n");
    for (f, silence) in faults {
        let _ = writeln!(
            out,
            "- {} ms: {:?} {} (healed +{} ms, recovered +{} ms): {silence} ms without an ack",
            f.start_ms,
            f.kind,
            f.detail,
            f.healed_ms - f.start_ms,
            f.recovered_ms - f.start_ms
        );
    }
    let _ = writeln!(out, "\n</details>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::longest_silence;

    #[test]
    fn the_longest_silence_is_measured_inside_the_window() {
        let acks = [0, 10, 20, 500, 510, 2_000];
        assert_eq!(longest_silence(&acks, 15, 600), 480, "20 -> 500");
        // A silence that began before the window counts from the window's start...
        assert_eq!(longest_silence(&acks, 100, 600), 400, "100 -> 500");
        // ...and one that runs past its end until the end.
        assert_eq!(longest_silence(&acks, 505, 1_000), 490, "510 -> 1000");
        // No acknowledgement after the window: silent until its end.
        assert_eq!(longest_silence(&acks, 2_100, 3_000), 900);
    }
}
