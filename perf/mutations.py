#!/usr/bin/env python3
"""Mutation checks: break one rule of the replication, durability or producer logic at a
time and show that a test catches it (the simulator's default schedules where it models
the rule, else the named test). Each mutation is a text replacement in one file, undone
afterwards also when the run is interrupted; a replacement whose text is no longer in the
file fails loudly (update the mutation with the code).

    perf/mutations.py [name-substring ...]     (default: every mutation)

Writes the table to perf/results/<date>-mutations.md; ARCHITECTURE.md keeps a copy.
"""

import datetime
import os
import re
import subprocess
import sys
import time

SIM = ["cargo", "test", "--lib", "sim::tests::random_fault_schedules", "--", "--exact", "--test-threads", "1"]

MUTATIONS = [
    dict(
        name="acknowledge before durable (the leader counts its own unflushed log)",
        file="src/replication/replica.rs",
        old="""            .map(|r| if *r == self.id { self.durable_end } else { followers.get(r).map_or(0, |p| p.matched) })
            .collect();
        ends.sort_unstable_by(|a, b| b.cmp(a));
        // Never beyond its own durable copy, though followers may hold more (the link sends
        // batches before the leader's flush ends): a failed flush drops what the leader had
        // not made durable, and its high watermark would then lie above its log end.
        let quorum = ends.get(self.replicas.len() / 2).copied().unwrap_or(0).min(self.durable_end);""",
        new="""            .map(|r| if *r == self.id { self.log_end } else { followers.get(r).map_or(0, |p| p.matched) })
            .collect();
        ends.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = ends.get(self.replicas.len() / 2).copied().unwrap_or(0);""",
        test=SIM,
    ),
    dict(
        name="count a non-durable follower (a follower acknowledges what it received)",
        file="src/replication/replica.rs",
        old="PeerMessage::Ack { epoch: self.epoch, from: self.id, durable_match: self.durable_match() }",
        new="PeerMessage::Ack { epoch: self.epoch, from: self.id, durable_match: self.verified_end }",
        test=SIM,
    ),
    dict(
        name="skip the previous-epoch check (log matching on offsets alone)",
        file="src/replication/replica.rs",
        old="let mut prev_matches = prev <= self.log_end && (prev == 0 || self.history.epoch_at(prev - 1) == prev_epoch);",
        new="let mut prev_matches = prev <= self.log_end;",
        test=SIM,
    ),
    dict(
        name="commit a previous epoch's batch by counting copies (no current-epoch rule)",
        file="src/replication/replica.rs",
        old="if quorum > self.high_watermark && self.history.epoch_at(quorum - 1) == Some(self.epoch) {",
        new="if quorum > self.high_watermark {",
        # Random schedules rarely build the Raft paper's Figure 8 (1,000 did not): the
        # targeted five-replica schedule does.
        test=["cargo", "test", "--lib", "figure_eight"],
    ),
    dict(
        name="act on an epoch before it is recorded in the metadata log",
        file="src/replication/controller.rs",
        old="""        out.push(ControllerAction::RecordEpoch(self.epoch));
        for &r in &self.replicas {
            out.push(ControllerAction::Send(r, ControlMessage::Fence { epoch: self.epoch }));
        }""",
        new="""        for &r in &self.replicas {
            out.push(ControllerAction::Send(r, ControlMessage::Fence { epoch: self.epoch }));
        }
        out.push(ControllerAction::RecordEpoch(self.epoch));""",
        test=SIM,
    ),
    dict(
        name="serve above the high watermark (a follower trusts the leader's mark beyond what it verified and holds durably)",
        file="src/replication/replica.rs",
        old="let hw = self.leader_hw_seen.min(self.durable_match());",
        new="let hw = self.leader_hw_seen;",
        test=SIM,
    ),
    dict(
        name="accept a sequence gap",
        file="src/broker/partition/producers.rs",
        old="""        Err(SequenceError::OutOfOrder { producer_id, epoch, expected, got })
    }""",
        new="""        let _ = (expected, got);
        Ok(Admission::Append)
    }""",
        test=SIM,
    ),
    dict(
        name="acknowledge acks=leader before the leader's own write is durable",
        file="src/replication/replica.rs",
        old="""            durable_end: self.durable_end,
            high_watermark: self.high_watermark,""",
        new="""            durable_end: self.log_end,
            high_watermark: self.high_watermark,""",
        test=SIM,
    ),
    dict(
        name="answer a produce after its leader lost the epoch it was taken in",
        file="src/replication/answers.rs",
        old="""    if w.leading.is_some() && w.leading != now.leading {
        return Some(Answer::NotLeader(now.leader));
    }""",
        new="",
        # Not caught by the 1,250 default schedules (2026-12-07): it needs a fence between a
        # batch's append and its flush, then a cut and new data past the batch's end before
        # the producer gives up; the targeted schedule is the unit test.
        test=["cargo", "test", "--lib", "the_replica_answers_each_produce"],
    ),
    dict(
        name="let an empty replica vote (a wiped replica answers fences)",
        file="src/replication/replica.rs",
        old="""                    durable_end: self.durable_end,
                    voter: self.voter,""",
        new="""                    durable_end: self.durable_end,
                    voter: true,""",
        test=SIM,
    ),
    dict(
        name="forget the producer table on reopen",
        file="src/broker/partition.rs",
        old="""    visit_batch_headers(log, replay_from, |header| table.observe(header, written)).await?;
    Ok(table)""",
        new="""    visit_batch_headers(log, replay_from, |header| table.observe(header, written)).await?;
    let _ = table;
    Ok(ProducerTable::default())""",
        test=SIM,
    ),
]


MUTATIONS += [
    dict(
        name="a single node's replica listens to a peer (a forged append or fence moves the only copy)",
        file="src/replication/replica.rs",
        old="""        if self.alone {
            // It has no peers: whatever claims to be one is not listened to.
            return;
        }""",
        new="",
        test=["cargo", "test", "--lib", "a_single_node_partition_is_a_replica_set_of_one"],
    ),
    dict(
        name="a reset replica counts appends still waiting for the disk as durable",
        file="src/broker/partition/replication.rs",
        old=""".durable_below(durable);""",
        new=""";
        let _ = durable;""",
        # Not caught by the default 1,000 schedules; seed 2828 found it.
        test=["cargo", "test", "--lib", "seeds_that_found_defects"],
    ),
    dict(
        name="trust replica.json's epochs above the recovery point (no header scan at open)",
        file="src/broker/partition/replication.rs",
        old="let trusted_end = self.log.borrow().recovery_point().clamp(log_start, log_end);",
        new="let trusted_end = log_end;",
        test=SIM,
    ),
    dict(
        name="let a write report its durable end to a replica about to cut its log",
        file="src/broker/partition/replication.rs",
        old="""        if cutting {
            self.paused.set(true);
        }""",
        new="",
        test=SIM,
    ),
    dict(
        name="keep taking appends on a log whose truncation failed (no reopen)",
        file="src/broker/partition/replication.rs",
        old="""        if !self.log_failed() {
            self.log.borrow_mut().fail(e);
        }""",
        new="""        let _ = e;""",
        test=SIM,
    ),
]


def run(mutation):
    path = mutation["file"]
    original = open(path).read()
    if original.count(mutation["old"]) != 1:
        return "the mutation's text is not (once) in " + path + ": update it", None, 0
    open(path, "w").write(original.replace(mutation["old"], mutation["new"]))
    started = time.time()
    try:
        proc = subprocess.run(mutation["test"], capture_output=True, text=True)
    finally:
        open(path, "w").write(original)
    took = time.time() - started
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "NOT CAUGHT", None, took
    if "could not compile" in out:
        return "the mutant does not compile: update it", None, took
    seed = re.search(r"simulation seed (\d+) failed: (.*)", out)
    if seed:
        return "caught", (seed.group(1), seed.group(2).strip()[:140]), took
    failed = re.findall(r"^    (\S+)$", out, re.M)
    return "caught", (None, "failing: " + ", ".join(sorted(set(failed))[:4])), took


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    wanted = sys.argv[1:]
    chosen = [m for m in MUTATIONS if not wanted or any(w in m["name"] for w in wanted)]
    for m in chosen:
        if subprocess.run(["git", "diff", "--quiet", "--", m["file"]]).returncode != 0:
            sys.exit(m["file"] + " has uncommitted changes: commit them first (the runner rewrites it)")
    rows = []
    for m in chosen:
        print("mutation:", m["name"], flush=True)
        verdict, detail, took = run(m)
        print("  ", verdict, detail or "", f"({took:.0f} s)", flush=True)
        test = "default sim schedules" if m["test"] is SIM else " ".join(m["test"][2:])
        seed, how = detail if detail else (None, "")
        rows.append(f"| {m['name']} | `{m['file']}` | {test} | {verdict} | {seed or '-'} | {how} |")
    table = "\n".join(
        [
            "| mutation | where | caught by | verdict | first failing seed | how |",
            "|---|---|---|---|---:|---|",
        ]
        + rows
    )
    out = f"perf/results/{datetime.date.today()}-mutations.md"
    with open(out, "w") as f:
        f.write(f"# Mutation checks ({datetime.date.today()})\n\n")
        f.write(f"Command: `perf/mutations.py {' '.join(wanted)}`; {os.cpu_count()} cores.\n\n{table}\n")
    print(table)
    if any("NOT CAUGHT" in r or "update it" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
