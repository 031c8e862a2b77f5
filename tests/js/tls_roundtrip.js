// kafkajs over TLS (mutual TLS when a client certificate is given): produces COUNT values
// to TOPIC partition 0 and reads them back from offset 0 with a consumer group. Prints
// {"ok": true, "sent": [hex...], "got": [hex...]} for the test to compare byte for byte.
// Usage: node tls_roundtrip.js BOOTSTRAP TOPIC COUNT CA_PEM [CERT_PEM KEY_PEM]
'use strict';

const fs = require('fs');
const { Kafka, logLevel } = require('kafkajs');
const { main } = require('./common');

const [bootstrap, topic, countArg, caPath, certPath, keyPath] = process.argv.slice(2);
const count = Number(countArg);

main(async () => {
  const ssl = { ca: [fs.readFileSync(caPath, 'utf8')], rejectUnauthorized: true };
  if (certPath) {
    ssl.cert = fs.readFileSync(certPath, 'utf8');
    ssl.key = fs.readFileSync(keyPath, 'utf8');
  }
  const kafka = new Kafka({
    clientId: 'sluice-js-tls',
    brokers: [bootstrap],
    ssl,
    logLevel: process.env.KAFKAJS_DEBUG ? logLevel.DEBUG : logLevel.NOTHING,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 5, initialRetryTime: 200 },
  });
  const sent = [];
  for (let i = 0; i < count; i++) {
    sent.push(Buffer.from(`kafkajs-${i}-` + 'x'.repeat(i % 97) + '\u00e9', 'utf8'));
  }
  const producer = kafka.producer({ allowAutoTopicCreation: true });
  await producer.connect();
  await producer.send({ topic, acks: -1, messages: sent.map((value) => ({ value, partition: 0 })) });
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `tls-js-${Date.now()}`, maxWaitTimeInMs: 200 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const got = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${got.length} of ${count} read`)), 60000);
    consumer.run({
      eachMessage: async ({ message }) => {
        got.push(message.value);
        if (got.length >= count) {
          clearTimeout(timer);
          resolve();
        }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  return {
    ok: true,
    sent: sent.map((b) => b.toString('hex')),
    got: got.map((b) => b.toString('hex')),
  };
});
