//! The cost of one offset commit in a cluster's metadata: applying it and publishing the
//! copy the shards follow. Measured against the deep copy the publish used to make (every
//! topic and every group's offsets), in the same run, with 100 and 10,000 groups.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use quorra::cluster::meta::{GroupOffsets, MetaCommand, MetaState, TopicMeta};

fn state_with(groups: usize) -> MetaState {
    let mut s = MetaState::default();
    for t in 0..64 {
        let replicas = vec![vec![1, 2, 3]; 16];
        s.apply(&MetaCommand::CreateTopic {
            name: format!("topic-{t}"),
            replication_factor: 3,
            created_ms: 1,
            replicas,
        })
        .unwrap();
    }
    for g in 0..groups {
        s.apply(&commit(g, 1)).unwrap();
    }
    s
}

fn commit(group: usize, offset: u64) -> MetaCommand {
    MetaCommand::CommitOffset {
        group: format!("group-{group}"),
        topic: format!("topic-{}", group % 64),
        partition: (group % 16) as u32,
        offset,
        metadata: String::new(),
        max_groups: 0,
    }
}

fn offset_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("offset commit + publish");
    for groups in [100, 10_000] {
        let mut s = state_with(groups);
        let mut offset = 2;
        // The shards hold the last published copy while the next commit applies: its
        // shared parts must be copied where the commit changes them (the path to the
        // committing group in the persistent group map, and that group's map).
        let mut published = s.clone();
        g.bench_with_input(BenchmarkId::new("shared copy (now)", groups), &groups, |b, &groups| {
            b.iter(|| {
                offset += 1;
                s.apply(&commit(offset as usize % groups, offset)).unwrap();
                published = black_box(s.clone());
            })
        });
        drop(published);
        g.bench_with_input(BenchmarkId::new("deep copy (before)", groups), &groups, |b, &groups| {
            b.iter(|| {
                offset += 1;
                s.apply(&commit(offset as usize % groups, offset)).unwrap();
                let topics: BTreeMap<String, TopicMeta> = (*s.topics).clone();
                let offsets: BTreeMap<String, GroupOffsets> =
                    s.offsets.iter().map(|(k, v)| (k.clone(), (**v).clone())).collect();
                black_box((topics, offsets))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, offset_commit);
criterion_main!(benches);
