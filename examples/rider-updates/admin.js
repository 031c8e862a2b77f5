// Creates topic `rider-updates` with 2 partitions (one per region) if it does not exist.
'use strict';

const { kafka, TOPIC } = require('./common');

async function createTopic(client = kafka('rider-admin')) {
  const admin = client.admin();
  await admin.connect();
  try {
    const created = await admin.createTopics({
      topics: [{ topic: TOPIC, numPartitions: 2 }],
      waitForLeaders: true,
    });
    const meta = await admin.fetchTopicMetadata({ topics: [TOPIC] });
    const partitions = meta.topics[0].partitions.length;
    console.log(`admin: topic ${TOPIC} ${created ? 'created' : 'already exists'} with ${partitions} partitions`);
    return partitions;
  } finally {
    await admin.disconnect();
  }
}

module.exports = { createTopic };
if (require.main === module) createTopic().catch((e) => { console.error(e); process.exit(1); });
