// One command for the whole flow against a running broker:
//
//     node run.js 127.0.0.1:9092
//
// Creates the topic, starts two consumers in one group (each gets one partition), produces
// updates routed by region, waits until every update was printed once, checks the routing
// (north only on partition 0, south only on 1), and exits. The last line is a JSON summary.
'use strict';

const { TOPIC, REGIONS } = require('./common');
const { createTopic } = require('./admin');
const { produceUpdates } = require('./producer');
const { startConsumer } = require('./consumer');

const COUNT = Number(process.env.UPDATES || 30);

async function main() {
  const partitions = await createTopic();
  const received = [];
  const consumers = [];
  const assigned = new Map();
  for (const name of ['dashboard-1', 'dashboard-2']) {
    consumers.push(await startConsumer(
      name,
      (who, partition, update) => received.push({ who, partition, update }),
      (who, partitions) => assigned.set(who, partitions),
    ));
  }
  // Wait until the group has settled: each member owns one of the two partitions.
  const settled = () => assigned.size === 2
    && [...assigned.values()].every((ps) => ps.length === 1)
    && new Set([...assigned.values()].flat()).size === 2;
  const settleDeadline = Date.now() + 30000;
  while (!settled() && Date.now() < settleDeadline) await new Promise((r) => setTimeout(r, 200));
  const sent = await produceUpdates(COUNT);
  const deadline = Date.now() + 30000;
  while (received.length < sent.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  await Promise.all(consumers.map((c) => c.disconnect()));

  const seqs = received.map((r) => r.update.seq).sort((a, b) => a - b);
  const misrouted = received.filter((r) => REGIONS[r.update.region] !== r.partition);
  const summary = {
    topic: TOPIC,
    partitions,
    sent: sent.length,
    received: received.length,
    distinct: new Set(seqs).size,
    misrouted: misrouted.length,
    by_consumer: Object.fromEntries(['dashboard-1', 'dashboard-2'].map((n) => [n, received.filter((r) => r.who === n).length])),
    by_partition: { 0: received.filter((r) => r.partition === 0).length, 1: received.filter((r) => r.partition === 1).length },
    assignments: Object.fromEntries(assigned.entries()),
  };
  const ok = summary.received === summary.sent && summary.distinct === summary.sent && summary.misrouted === 0;
  console.log(JSON.stringify({ ok, ...summary }));
  process.exit(ok ? 0 : 1);
}

main().catch((e) => { console.error(e); process.exit(1); });
