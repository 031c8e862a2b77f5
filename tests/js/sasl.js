// kafkajs over SASL_PLAINTEXT, or over SASL_SSL when CA_PEM (the broker's CA) is given: produces
// N records (value "js-<i>-é\0") with acks=all to partition 0 in two sends, a client with a wrong
// password trying to connect between them, then reads them back with a group consumer; all
// authenticated with MECHANISM (plain, scram-sha-256, scram-sha-512) as USER/PASSWORD.
// Usage: node sasl.js BOOTSTRAP TOPIC N MECHANISM USER PASSWORD [CA_PEM]
// Prints {"ok": true, "baseOffsets": [of each send], "refused": name of the wrong password's
// error, "offsets": [...offsets read], "values": [...values read, in offset order]}.
'use strict';

const fs = require('fs');
const { Kafka, logLevel } = require('kafkajs');
const { main } = require('./common');

const [bootstrap, topic, nArg, mechanism, username, password, caPath] = process.argv.slice(2);
const n = Number(nArg);

function client(secret) {
  return new Kafka({
    clientId: 'sluice-js-sasl',
    brokers: [bootstrap],
    ssl: caPath ? { ca: [fs.readFileSync(caPath, 'utf8')], rejectUnauthorized: true } : false,
    sasl: { mechanism, username, password: secret },
    logLevel: process.env.KAFKAJS_DEBUG ? logLevel.DEBUG : logLevel.NOTHING,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 2, initialRetryTime: 200 },
  });
}

// The name of the error a wrong password gets (null if it was let in).
async function refusal() {
  const admin = client(`${password}-wrong`).admin();
  try {
    await admin.connect();
    await admin.disconnect();
    return null;
  } catch (e) {
    return e.name;
  }
}

main(async () => {
  const kafka = client(password);
  const producer = kafka.producer({ allowAutoTopicCreation: true });
  await producer.connect();
  const messages = [];
  for (let i = 0; i < n; i++) messages.push({ value: `js-${i}-\u00e9\u0000`, partition: 0 });
  const half = Math.floor(n / 2);
  const baseOffsets = [];
  const first = await producer.send({ topic, messages: messages.slice(0, half), acks: -1 });
  baseOffsets.push(Number(first[0].baseOffset));
  const refused = await refusal();
  const second = await producer.send({ topic, messages: messages.slice(half), acks: -1 });
  baseOffsets.push(Number(second[0].baseOffset));
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `js-sasl-${Date.now()}`, sessionTimeout: 10000, heartbeatInterval: 1000 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const values = [];
  const offsets = [];
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const timer = setTimeout(() => finish(false), 30000);
  await consumer.run({
    eachMessage: async ({ message }) => {
      values.push(message.value.toString());
      offsets.push(Number(message.offset));
      if (values.length >= n) finish(true);
    },
  });
  const complete = await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  return { ok: complete, baseOffsets, refused, offsets, values };
});
