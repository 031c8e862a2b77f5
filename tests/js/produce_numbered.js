// kafkajs idempotent producer for failover tests: sends the values "0", "1", ... to one
// partition, BATCH at a time (each send awaited, acks=all), for DURATION_MS, retrying through
// leader changes with kafkajs's own retries (no restart). Any send that still fails ends the
// run with ok=false.
// Usage: node produce_numbered.js BOOTSTRAP[,BOOTSTRAP...] TOPIC PARTITION DURATION_MS OUT [BATCH]
// Writes "acked N" progress lines to stderr and [[number, offset], ...] of every acknowledged
// record to the file OUT (too large for one stdout line); prints {"ok": true, "count": N}.
'use strict';

const { Kafka, logLevel } = require('kafkajs');
const { main } = require('./common');

const fs = require('fs');

const [bootstrap, topic, partitionArg, durationArg, outPath, batchArg] = process.argv.slice(2);
const partition = Number(partitionArg);
const durationMs = Number(durationArg);
const batch = Number(batchArg || 20);

main(async () => {
  const kafka = new Kafka({
    clientId: 'sluice-js-failover',
    brokers: bootstrap.split(','),
    logLevel: process.env.KAFKAJS_DEBUG ? logLevel.DEBUG : logLevel.NOTHING,
    connectionTimeout: 3000,
    requestTimeout: 10000,
    // Long enough to outlast a leader's fencing (the broker session) and the election.
    retry: { retries: 12, initialRetryTime: 300, maxRetryTime: 3000 },
  });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
  await producer.connect();
  const acked = [];
  const endAt = Date.now() + durationMs;
  let next = 0;
  try {
    while (Date.now() < endAt) {
      const messages = [];
      for (let i = 0; i < batch; i++) {
        messages.push({ value: String(next + i), partition });
      }
      const results = await producer.send({ topic, messages, acks: -1, timeout: 10000 });
      const result = results.find((r) => r.partition === partition);
      if (!result || result.errorCode !== 0) {
        throw new Error(`send answered ${JSON.stringify(results)}`);
      }
      const base = Number(result.baseOffset);
      for (let i = 0; i < batch; i++) {
        acked.push([next + i, base + i]);
      }
      next += batch;
      process.stderr.write(`acked ${next}\n`);
    }
  } finally {
    fs.writeFileSync(outPath, JSON.stringify(acked));
    await producer.disconnect();
  }
  return { ok: true, count: acked.length };
});
