// One kafkajs group member (consumer.run / eachMessage) in its own process, so that the test can
// kill -9 it like a crashed consumer. It commits each record's offset itself (autoCommit off)
// after processing it, and reports on stdout, one JSON object a line:
//   {"event":"assigned","partitions":[..]}           after every join (GROUP_JOIN)
//   {"event":"committed","record":[p,o,v]}           processed, and its commit was accepted
//   {"event":"uncommitted","record":[p,o,v],"error"} processed, but the commit was refused
//   {"event":"crash","error":".."}                   the consumer gave up
// Usage: node group_member.js BOOTSTRAP TOPIC GROUP SESSION_TIMEOUT_MS
// KAFKAJS_LOG_LEVEL (NOTHING, ERROR, WARN, INFO, DEBUG; default WARN) sets the client's stderr log.
'use strict';

const path = require('path');
const { Kafka, logLevel } = require(path.join(__dirname, '..', '..', 'js', 'node_modules', 'kafkajs'));

const [bootstrap, topic, group, sessionArg] = process.argv.slice(2);

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// kafkajs's default logger prints INFO and DEBUG to stdout, which carries the reports.
const stderrLog = () => ({ namespace, label, log }) => {
  const message = namespace ? `[${namespace}] ${log.message}` : log.message;
  process.stderr.write(JSON.stringify({ ...log, level: label, message }) + '\n');
};

async function main() {
  const kafka = new Kafka({
    clientId: `js-member-${process.pid}`,
    brokers: [bootstrap],
    logLevel: logLevel[process.env.KAFKAJS_LOG_LEVEL || 'WARN'],
    logCreator: stderrLog,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 5, initialRetryTime: 200 },
  });
  const consumer = kafka.consumer({
    groupId: group,
    sessionTimeout: Number(sessionArg),
    heartbeatInterval: 500,
    rebalanceTimeout: 20000,
    // Heartbeats go out between fetches: an idle fetch must not outlast a few intervals.
    maxWaitTimeInMs: 200,
  });
  consumer.on(consumer.events.GROUP_JOIN, (e) => {
    const parts = ((e.payload.memberAssignment || {})[topic] || []).slice().sort();
    report({ event: 'assigned', partitions: parts });
  });
  consumer.on(consumer.events.CRASH, (e) => {
    report({ event: 'crash', error: String(e.payload.error && e.payload.error.stack) });
  });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      const record = [partition, Number(message.offset), message.value.toString()];
      const next = (BigInt(message.offset) + 1n).toString();
      try {
        await consumer.commitOffsets([{ topic, partition, offset: next }]);
      } catch (err) {
        // A rebalance refused the commit: the record may be delivered again (at-least-once).
        // Rethrown so that kafkajs rejoins and does not go on with the rest of this batch.
        report({ event: 'uncommitted', record, error: String(err && err.message) });
        throw err;
      }
      report({ event: 'committed', record });
    },
  });
}

main().catch((err) => {
  report({ event: 'crash', error: String(err && err.stack || err) });
  process.exit(1);
});
