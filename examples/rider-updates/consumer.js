// A consumer in group `rider-dashboard` that prints every update it gets with its partition.
'use strict';

const { kafka, TOPIC } = require('./common');

async function startConsumer(name, onUpdate, onJoin = () => {}, client = kafka(name)) {
  const consumer = client.consumer({ groupId: 'rider-dashboard', sessionTimeout: 10000, heartbeatInterval: 1000 });
  consumer.on(consumer.events.GROUP_JOIN, (e) => onJoin(name, e.payload.memberAssignment[TOPIC] || []));
  await consumer.connect();
  await consumer.subscribe({ topic: TOPIC, fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      const update = JSON.parse(message.value.toString());
      console.log(`${name}: partition ${partition} offset ${message.offset} ${update.region} ${update.rider} ${update.status}`);
      onUpdate(name, partition, update);
    },
  });
  return consumer;
}

module.exports = { startConsumer };
if (require.main === module) {
  startConsumer(process.argv[3] || 'dashboard-1', () => {}).catch((e) => { console.error(e); process.exit(1); });
}
