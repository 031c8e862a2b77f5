// kafkajs producer: N keyed records, key "key-<i % KEYS>", value "value-<i>", acks=all, sent in
// batches of BATCH_SIZE (each send awaited, so records of one key stay in order).
// Usage: node produce.js BOOTSTRAP TOPIC N [none|gzip|snappy] [KEYS] [BATCH_SIZE]
// Prints {"ok": true, "count": N, "sends_per_partition": {"<partition>": acknowledged sends}}.
'use strict';

const { makeKafka, main, CompressionTypes } = require('./common');

const [bootstrap, topic, nArg, codecArg, keysArg, batchArg] = process.argv.slice(2);
const n = Number(nArg);
const keys = Number(keysArg || 1000);
const batchSize = Number(batchArg || 500);
const compression = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
}[codecArg || 'none'];

main(async () => {
  const producer = makeKafka(bootstrap, 'sluice-js-producer').producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const acked = {};
  let count = 0;
  try {
    for (let start = 0; start < n; start += batchSize) {
      const messages = [];
      for (let i = start; i < Math.min(n, start + batchSize); i++) {
        messages.push({ key: `key-${i % keys}`, value: `value-${i}` });
      }
      const results = await producer.send({ topic, messages, acks: -1, timeout: 10000, compression });
      for (const r of results) {
        if (r.errorCode !== 0) throw new Error(`partition ${r.partition} error ${r.errorCode}`);
        acked[r.partition] = (acked[r.partition] || 0) + 1;
      }
      count += messages.length;
    }
  } finally {
    await producer.disconnect();
  }
  return { ok: true, count, sends_per_partition: acked };
});
