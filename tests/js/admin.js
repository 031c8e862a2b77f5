// kafkajs admin client.
// Usage: node admin.js BOOTSTRAP create TOPIC PARTITIONS [key=value ...]
//        node admin.js BOOTSTRAP create-validate TOPIC PARTITIONS
//        node admin.js BOOTSTRAP list
//        node admin.js BOOTSTRAP delete TOPIC [TOPIC ...]
//        node admin.js BOOTSTRAP metadata TOPIC
//        node admin.js BOOTSTRAP create-partitions TOPIC TOTAL_COUNT
//        node admin.js BOOTSTRAP offsets TOPIC
// Prints {"ok": true, ...} or {"ok": false, "error": {...}} (exit 1).
'use strict';

const { makeKafka, main } = require('./common');

const [bootstrap, cmd, ...rest] = process.argv.slice(2);

main(async () => {
  const admin = makeKafka(bootstrap, 'sluice-js-admin').admin();
  await admin.connect();
  try {
    switch (cmd) {
      case 'create':
      case 'create-validate': {
        const [topic, partitions, ...configs] = rest;
        const configEntries = configs.map((kv) => {
          const i = kv.indexOf('=');
          return { name: kv.slice(0, i), value: kv.slice(i + 1) };
        });
        const created = await admin.createTopics({
          validateOnly: cmd === 'create-validate',
          waitForLeaders: cmd === 'create',
          topics: [{ topic, numPartitions: Number(partitions), configEntries }],
        });
        return { ok: true, created };
      }
      case 'list':
        return { ok: true, topics: (await admin.listTopics()).sort() };
      case 'delete':
        await admin.deleteTopics({ topics: rest, timeout: 10000 });
        return { ok: true };
      case 'metadata': {
        const md = await admin.fetchTopicMetadata({ topics: rest });
        return {
          ok: true,
          topics: md.topics.map((t) => ({
            name: t.name,
            partitions: t.partitions
              .map((p) => ({ partition: p.partitionId, leader: p.leader, error: p.partitionErrorCode }))
              .sort((a, b) => a.partition - b.partition),
          })),
        };
      }
      case 'create-partitions': {
        const [topic, count] = rest;
        await admin.createPartitions({ topicPartitions: [{ topic, count: Number(count) }] });
        return { ok: true };
      }
      case 'offsets': {
        const offsets = await admin.fetchTopicOffsets(rest[0]);
        return {
          ok: true,
          offsets: offsets
            .map((o) => ({ partition: o.partition, low: Number(o.low), high: Number(o.high) }))
            .sort((a, b) => a.partition - b.partition),
        };
      }
      default:
        throw new Error(`unknown command ${cmd}`);
    }
  } finally {
    await admin.disconnect();
  }
});
