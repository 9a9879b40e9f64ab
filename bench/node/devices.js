'use strict';
// Official azure-iot-device clients (MQTT) for dmctl's benchmark: one
// connection per line of the connection-strings file, all in this process.
//
// Usage: node devices.js FILE [OPEN_CONCURRENCY]
//
// Every client answers the direct method "bench" with 200 and the request
// payload. Once every client is open and subscribed to method requests it
// prints one JSON line {"event":"ready","devices":N,"ms":M} (M: time since
// start of the first open). It closes every client and exits 0 when stdin
// ends (the bench closes it), and exits 1 on the first failure.

const fs = require('fs');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

function fail(err) {
  process.stdout.write(JSON.stringify({ event: 'error', error: String((err && err.message) || err) }) + '\n');
  process.exit(1);
}

const file = process.argv[2];
if (!file) fail(new Error('usage: node devices.js FILE [OPEN_CONCURRENCY]'));
const limit = Number(process.argv[3] || 100);
const lines = fs.readFileSync(file, 'utf8').split('\n').map((s) => s.trim()).filter((s) => s && !s.startsWith('#'));
const clients = [];

function openOne(cs) {
  return new Promise((resolve, reject) => {
    const c = Client.fromConnectionString(cs, Mqtt);
    c.on('error', () => {});
    c.onDeviceMethod('bench', (req, res) => res.send(200, req.payload, () => {}));
    clients.push(c);
    c.open((err) => {
      if (err) return reject(err);
      // onDeviceMethod subscribes in the background; asking the client to
      // enable methods again calls back once the SUBACK is in, so "ready"
      // means the hub can route calls to every client.
      c._enableMethods((e) => (e ? reject(e) : resolve()));
    });
  });
}

async function main() {
  const start = process.hrtime.bigint();
  let next = 0;
  async function worker() {
    while (next < lines.length) {
      const cs = lines[next++];
      await openOne(cs);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, lines.length) }, worker));
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  process.stdout.write(JSON.stringify({ event: 'ready', devices: clients.length, ms }) + '\n');
}

process.stdin.resume();
process.stdin.on('end', () => {
  Promise.all(clients.map((c) => c.close().catch(() => {}))).then(() => process.exit(0));
  setTimeout(() => process.exit(0), 5000).unref();
});
main().catch(fail);
