// kafkajs group consumer (consumer.run / eachMessage): reads until N records or TIMEOUT_MS.
// Usage: node consume_group.js BOOTSTRAP TOPIC GROUP N TIMEOUT_MS
// Prints {"ok": true, "records": [[partition, offset, key, value], ...]} (ok is false on timeout).
'use strict';

const { makeKafka, main } = require('./common');

const [bootstrap, topic, group, nArg, timeoutArg] = process.argv.slice(2);
const n = Number(nArg);
const timeoutMs = Number(timeoutArg || 60000);

main(async () => {
  const consumer = makeKafka(bootstrap, 'sluice-js-consumer').consumer({
    groupId: group,
    sessionTimeout: 10000,
    heartbeatInterval: 1000,
  });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const records = [];
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const timer = setTimeout(() => finish(false), timeoutMs);
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      records.push([partition, Number(message.offset), message.key && message.key.toString(), message.value && message.value.toString()]);
      if (records.length >= n) finish(true);
    },
  });
  const complete = await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  return { ok: complete, count: records.length, records };
});
