// Two kafkajs consumers (consumer.run / eachMessage) in one group on a multi-partition topic.
// Phase 1: both run until every record produced so far is consumed; the assignment is recorded.
// Phase 2: the second disconnects (LeaveGroup); the test produces more (signalled on stdin with a
// line "N" = new total) and the first must consume them all.
// Usage: node group_members.js BOOTSTRAP TOPIC GROUP N1 TIMEOUT_MS
// Prints one JSON line per phase: {"phase":1,"assigned":[[..],[..]],"records":[[member,p,o,v]...]}
// then {"phase":2,"ok":true,"records":[...],"assigned":[..]}.
'use strict';

const path = require('path');
const readline = require('readline');
const { Kafka, logLevel } = require(path.join(__dirname, '..', '..', 'js', 'node_modules', 'kafkajs'));

const [bootstrap, topic, group, n1Arg, timeoutArg] = process.argv.slice(2);
const timeoutMs = Number(timeoutArg || 60000);

function kafka(clientId) {
  return new Kafka({
    clientId,
    brokers: [bootstrap],
    logLevel: logLevel.ERROR,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 5, initialRetryTime: 200 },
  });
}

function waitFor(pred, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      if (pred()) return resolve();
      if (Date.now() - started > timeoutMs) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 50);
    };
    tick();
  });
}

async function main() {
  const records = [];
  const assigned = [[], []];
  const consumers = [0, 1].map((i) => kafka(`js-member-${i}`).consumer({
    groupId: group, sessionTimeout: 6000, heartbeatInterval: 500, rebalanceTimeout: 20000,
  }));
  for (const [i, c] of consumers.entries()) {
    c.on(c.events.GROUP_JOIN, (e) => {
      assigned[i] = ((e.payload.memberAssignment || {})[topic] || []).slice().sort();
    });
    await c.connect();
    await c.subscribe({ topic, fromBeginning: true });
  }
  for (const [i, c] of consumers.entries()) {
    await c.run({
      autoCommit: true,
      autoCommitInterval: 100,
      eachMessage: async ({ partition, message }) => {
        records.push([i, partition, Number(message.offset), message.value.toString()]);
      },
    });
  }
  const n1 = Number(n1Arg);
  // Each member's GROUP_JOIN fires on its own SyncGroup response: the first member's event for
  // the two-member generation can land a poll after the second's, while it still holds its
  // solo generation's every partition. Wait for one generation: both own some, none owns twice.
  const settled = () => assigned[0].length > 0 && assigned[1].length > 0
    && assigned[0].every((p) => !assigned[1].includes(p));
  await waitFor(() => records.length >= n1 && settled(), 'phase 1');
  process.stdout.write(JSON.stringify({ phase: 1, assigned, records }) + '\n');
  await consumers[1].disconnect();
  const rl = readline.createInterface({ input: process.stdin });
  const total = await new Promise((resolve) => rl.once('line', (l) => resolve(Number(l))));
  await waitFor(() => records.length >= total, 'phase 2');
  await new Promise((r) => setTimeout(r, 500));
  await consumers[0].disconnect();
  process.stdout.write(JSON.stringify({ phase: 2, ok: true, assigned: assigned[0], records }) + '\n');
  process.exit(0);
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.stack || err) }) + '\n');
  process.exit(1);
});
