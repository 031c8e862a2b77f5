// Shared settings for the rider-updates example. Owns the broker address and the region ->
// partition rule; nothing else.
'use strict';

const { Kafka, logLevel } = require('kafkajs');

const TOPIC = 'rider-updates';
const REGIONS = { north: 0, south: 1 }; // region -> partition

function kafka(clientId) {
  const brokers = (process.env.BOOTSTRAP || process.argv[2] || '127.0.0.1:9092').split(',');
  return new Kafka({ clientId, brokers, logLevel: logLevel.WARN, retry: { retries: 10 } });
}

// A kafkajs partitioner: the record's `region` header picks the partition.
const regionPartitioner = () => ({ message }) => {
  const region = message.headers && message.headers.region && message.headers.region.toString();
  if (!(region in REGIONS)) throw new Error(`unknown region ${region}`);
  return REGIONS[region];
};

module.exports = { kafka, TOPIC, REGIONS, regionPartitioner };
