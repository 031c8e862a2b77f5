// kafkajs over SASL_PLAINTEXT: produces N records (value "js-<i>") with acks=all, then reads them
// back with a group consumer, both authenticated with MECHANISM (plain, scram-sha-256,
// scram-sha-512) as USER/PASSWORD.
// Usage: node sasl.js BOOTSTRAP TOPIC N MECHANISM USER PASSWORD
// Prints {"ok": true, "values": [...values read, in offset order]}.
'use strict';

const { Kafka, logLevel } = require('kafkajs');
const { main } = require('./common');

const [bootstrap, topic, nArg, mechanism, username, password] = process.argv.slice(2);
const n = Number(nArg);

main(async () => {
  const kafka = new Kafka({
    clientId: 'sluice-js-sasl',
    brokers: [bootstrap],
    sasl: { mechanism, username, password },
    logLevel: process.env.KAFKAJS_DEBUG ? logLevel.DEBUG : logLevel.NOTHING,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 2, initialRetryTime: 200 },
  });
  const producer = kafka.producer({ allowAutoTopicCreation: true });
  await producer.connect();
  const messages = [];
  for (let i = 0; i < n; i++) messages.push({ value: `js-${i}` });
  await producer.send({ topic, messages, acks: -1 });
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `js-sasl-${Date.now()}`, sessionTimeout: 10000, heartbeatInterval: 1000 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const values = [];
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const timer = setTimeout(() => finish(false), 30000);
  await consumer.run({
    eachMessage: async ({ message }) => {
      values.push(message.value.toString());
      if (values.length >= n) finish(true);
    },
  });
  const complete = await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  return { ok: complete, values };
});
