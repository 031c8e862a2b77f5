// Sends rider location/status updates; the region header routes north to partition 0 and south
// to partition 1.
'use strict';

const { kafka, TOPIC, regionPartitioner } = require('./common');

const STATUSES = ['available', 'on-trip', 'offline'];

async function produceUpdates(count, client = kafka('rider-producer')) {
  const producer = client.producer({ createPartitioner: regionPartitioner });
  await producer.connect();
  const sent = [];
  try {
    const messages = [];
    for (let i = 0; i < count; i++) {
      const region = i % 3 === 0 ? 'south' : 'north';
      const update = { rider: `rider-${i % 7}`, seq: i, status: STATUSES[i % 3], region };
      messages.push({ key: update.rider, value: JSON.stringify(update), headers: { region } });
      sent.push(update);
    }
    const results = await producer.send({ topic: TOPIC, acks: -1, messages });
    console.log(`producer: ${count} updates acknowledged (${results.map((r) => `p${r.partition}@${r.baseOffset}`).join(' ')})`);
  } finally {
    await producer.disconnect();
  }
  return sent;
}

module.exports = { produceUpdates };
if (require.main === module) {
  produceUpdates(Number(process.argv[3] || 12)).catch((e) => { console.error(e); process.exit(1); });
}
