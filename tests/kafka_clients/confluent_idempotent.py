"""confluent-kafka (librdkafka 2.x) against Quorra's Kafka listener: an idempotent producer
(enable.idempotence, acks=all, 5 requests in flight per partition) writes N numbered messages
round-robin to every partition of TOPIC, then a consumer with assigned partitions reads them
all back. Prints one line of counts; exits non-zero unless nothing is lost, duplicated,
reordered or changed.

    python3 confluent_idempotent.py BOOTSTRAP TOPIC PARTITIONS N
"""
import sys

from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap, topic, partitions, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

producer = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 2,
})
failures = []


def delivered(err, msg):
    if err is not None:
        failures.append(str(err))


for i in range(n):
    p = i % partitions
    producer.produce(topic, value=f"{p}:{i // partitions}:{'x' * (i % 50)}".encode(), partition=p, on_delivery=delivered)
    if i % 1000 == 0:
        producer.poll(0)
left = producer.flush(60)
if left or failures:
    print(f"not delivered: {left} left, failures {failures[:3]}")
    sys.exit(1)

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "unused-no-commits",
    "enable.auto.commit": False,
    "enable.partition.eof": True,
})
consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
expected = {p: [f"{p}:{j}:{'x' * ((j * partitions + p) % 50)}" for j in range(len(range(p, n, partitions)))]
            for p in range(partitions)}
got = {p: [] for p in range(partitions)}
offsets = {p: [] for p in range(partitions)}
at_end = set()
while len(at_end) < partitions:
    msg = consumer.poll(10)
    if msg is None:
        print("consumer: nothing for 10 s")
        sys.exit(1)
    if msg.error():
        if msg.error().code() == -191:  # _PARTITION_EOF
            at_end.add(msg.partition())
            continue
        print(f"consumer error: {msg.error()}")
        sys.exit(1)
    got[msg.partition()].append(msg.value().decode())
    offsets[msg.partition()].append(msg.offset())
consumer.close()

lost = sum(len(set(expected[p]) - set(got[p])) for p in range(partitions))
duplicated = sum(len(got[p]) - len(set(got[p])) for p in range(partitions))
# Messages out of place, counted when every message came exactly once.
reordered = sum(a != b for p in range(partitions) for a, b in zip(got[p], expected[p])) if not (lost or duplicated) else 0
dense = all(offsets[p] == list(range(len(offsets[p]))) for p in range(partitions))
print(f"produced {n}, read {sum(len(g) for g in got.values())}, lost {lost}, duplicated {duplicated}, "
      f"reordered {reordered}, offsets dense {dense}")
sys.exit(0 if (lost, duplicated, reordered, dense) == (0, 0, 0, True) else 1)
