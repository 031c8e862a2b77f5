// kafkajs transactions: one committed transaction (4 records over 2 partitions, plus consumer
// offsets through sendOffsets) and one aborted. Prints the group's committed offset.
// Usage: node transactions.js BOOTSTRAP TOPIC
'use strict';

const { makeKafka, main } = require('./common');

main(async () => {
  const [bootstrap, topic] = process.argv.slice(2);
  const kafka = makeKafka(bootstrap, 'sluice-js-txn');
  const groupId = `js-txn-${Date.now()}`;
  const producer = kafka.producer({
    transactionalId: `js-txn-${Date.now()}`,
    idempotent: true,
    maxInFlightRequests: 1,
  });
  await producer.connect();
  const committed = await producer.transaction();
  await committed.send({
    topic,
    messages: [0, 1, 2, 3].map((i) => ({ value: `c-${i}`, partition: i % 2 })),
  });
  await committed.sendOffsets({
    consumerGroupId: groupId,
    topics: [{ topic, partitions: [{ partition: 0, offset: '4' }] }],
  });
  await committed.commit();
  const aborted = await producer.transaction();
  await aborted.send({
    topic,
    messages: [0, 1].map((i) => ({ value: `a-${i}`, partition: i % 2 })),
  });
  await aborted.sendOffsets({
    consumerGroupId: groupId,
    topics: [{ topic, partitions: [{ partition: 0, offset: '99' }] }],
  });
  await aborted.abort();
  await producer.disconnect();
  const admin = kafka.admin();
  await admin.connect();
  const offsets = await admin.fetchOffsets({ groupId, topics: [topic] });
  await admin.disconnect();
  const partition0 = offsets[0].partitions.find((p) => p.partition === 0);
  return { ok: true, committed_offset: partition0.offset };
});
