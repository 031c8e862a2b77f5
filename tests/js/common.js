// Shared by the kafkajs scripts: client construction, logging to stderr, one JSON result line.
// Every script prints exactly one JSON line on stdout (its result) and exits 0, or prints
// {"ok": false, "error": ...} and exits 1; tests/integration/helpers.py run_node() parses it.
'use strict';

const { Kafka, logLevel, CompressionTypes, CompressionCodecs } = require('kafkajs');

// kafkajs has snappy only through a codec package (LZ4 needs a native module, not used here).
try {
  CompressionCodecs[CompressionTypes.Snappy] = require('kafkajs-snappy');
} catch (e) {
  // Absent codec: a snappy test will fail with kafkajs's own error, which is what we want.
}

function stderrLogger() {
  return ({ namespace, level, label, log }) => {
    const { message, ...extra } = log;
    process.stderr.write(`[kafkajs ${label}] ${namespace}: ${message} ${JSON.stringify(extra)}\n`);
  };
}

function makeKafka(bootstrap, clientId) {
  return new Kafka({
    clientId: clientId || 'sluice-js-tests',
    brokers: [bootstrap],
    logLevel: process.env.KAFKAJS_DEBUG ? logLevel.DEBUG : logLevel.ERROR,
    logCreator: stderrLogger,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 3, initialRetryTime: 200 },
  });
}

function errorJson(err) {
  return {
    name: err && err.name,
    type: err && err.type,
    code: err && err.code,
    message: err && err.message,
    errors: err && Array.isArray(err.errors) ? err.errors.map(errorJson) : undefined,
  };
}

function done(result) {
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}

function fail(err) {
  process.stdout.write(JSON.stringify({ ok: false, error: errorJson(err) }) + '\n');
  process.exit(1);
}

function main(fn) {
  fn().then(done, fail);
}

module.exports = { makeKafka, main, fail, done, CompressionTypes };
