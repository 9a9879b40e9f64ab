'use strict';
// A device on the official azure-iot-device client (MQTT) with a firmware
// handler on the twin schema of Azure's firmware-update tutorial:
// a desired "firmware" {fwVersion, fwPackageURI, fwPackageCheckValue} that
// differs from the running version starts an update, and the reported
// "firmware" {currentFwVersion, pendingFwVersion, fwUpdateStatus,
// fwUpdateSubstatus, lastFwUpdateStartTime, lastFwUpdateEndTime} follows it
// through downloading, verifying, applying, rebooting and current. The
// package is really downloaded (HTTPS, trusting NODE_EXTRA_CA_CERTS) and its
// SHA-256 (hex, any case) compared with fwPackageCheckValue; a failed
// download or a wrong checksum reports error, then rolledback with the old
// version kept. A desired version that arrives during an update is handled
// after it.
//
// Usage: DEVICE_CONNECTION_STRING=... node firmware_device.js --version V
//          [--corrupt-download] [--timeout S]
// --corrupt-download flips a bit of every package as it arrives (a damaged
// transfer), so the checksum never matches.
// Output (JSON lines): {"event":"ready","reported"} once the initial
// firmware is reported; {"event":"status","status","version","substatus"}
// for every reported status; {"event":"downloaded","uri","bytes","sha256"};
// {"ok":true,"event":"closed"} after stdin ends.

const crypto = require('crypto');
const https = require('https');
const lib = require('./lib');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const args = lib.parseArgs(process.argv.slice(2));
lib.hardTimeout(Number(args.timeout || 90));
if (!args.version) {
  lib.fail(new Error('--version is required'));
}

const client = Client.fromConnectionString(lib.env('DEVICE_CONNECTION_STRING'), Mqtt);
client.on('error', (err) => lib.log('client error: ' + JSON.stringify(lib.describeError(err))));
let twin = null;
let current = args.version;
let busy = false;
let next = null; // the newest desired firmware that arrived during an update

function report(firmware) {
  return new Promise((resolve, reject) => {
    twin.properties.reported.update({ firmware }, (err) => (err ? reject(err) : resolve()));
  });
}

async function status(fwUpdateStatus, fields) {
  await report(Object.assign({ fwUpdateStatus }, fields));
  lib.emit({ event: 'status', status: fwUpdateStatus, version: current, substatus: (fields && fields.fwUpdateSubstatus) || '' });
}

// download fetches uri and returns its size and SHA-256 (hex).
function download(uri) {
  return new Promise((resolve, reject) => {
    const req = https.get(uri, { timeout: 20000 }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        reject(new Error('download failed: HTTP ' + res.statusCode));
        return;
      }
      const hash = crypto.createHash('sha256');
      let bytes = 0;
      let first = true;
      res.on('data', (chunk) => {
        if (first && args['corrupt-download'] && chunk.length > 0) {
          chunk = Buffer.from(chunk);
          chunk[0] ^= 1;
        }
        first = false;
        bytes += chunk.length;
        hash.update(chunk);
      });
      res.on('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('download timed out')));
    req.on('error', (err) => reject(new Error('download failed: ' + err.message)));
  });
}

async function update(desired) {
  const version = desired.fwVersion;
  const old = current;
  await status('downloading', {
    currentFwVersion: old,
    pendingFwVersion: version,
    fwUpdateSubstatus: '',
    lastFwUpdateStartTime: new Date().toISOString(),
  });
  try {
    const got = await download(desired.fwPackageURI);
    lib.emit({ event: 'downloaded', uri: desired.fwPackageURI, bytes: got.bytes, sha256: got.sha256 });
    await status('verifying', {});
    const want = String(desired.fwPackageCheckValue || '').toLowerCase();
    if (got.sha256 !== want) {
      throw new Error('checksum mismatch: package has SHA-256 ' + got.sha256 + ', desired fwPackageCheckValue is ' + want);
    }
    await status('applying', {});
    await status('rebooting', {});
    current = version;
    await status('current', {
      currentFwVersion: version,
      pendingFwVersion: '',
      lastFwUpdateEndTime: new Date().toISOString(),
    });
  } catch (err) {
    await status('error', { fwUpdateSubstatus: err.message });
    await status('rolledback', {
      currentFwVersion: old,
      pendingFwVersion: '',
      fwUpdateSubstatus: err.message,
      lastFwUpdateEndTime: new Date().toISOString(),
    });
  }
}

// onDesired starts an update for a new desired version, or queues it when
// one is running (only the newest queued one is kept).
function onDesired(desired) {
  if (!desired || !desired.fwVersion || desired.fwVersion === current) {
    return;
  }
  if (busy) {
    next = desired;
    return;
  }
  busy = true;
  (async () => {
    let d = desired;
    while (d) {
      await update(d);
      d = next && next.fwVersion !== current ? next : null;
      next = null;
    }
    busy = false;
  })().catch(lib.fail);
}

async function main() {
  await client.open();
  twin = await client.getTwin();
  twin.on('error', (err) => lib.log('twin error: ' + JSON.stringify(lib.describeError(err))));
  const reported = {
    currentFwVersion: current,
    pendingFwVersion: '',
    fwUpdateStatus: 'current',
    fwUpdateSubstatus: '',
  };
  await report(reported);
  // Subscribing to the desired firmware delivers the twin's current desired
  // firmware first, then every change.
  twin.on('properties.desired.firmware', () => onDesired(twin.properties.desired.firmware));
  await new Promise((resolve, reject) => twin.enableTwinDesiredPropertiesUpdates((err) => (err ? reject(err) : resolve())));
  lib.emit({ event: 'ready', reported });
  process.stdin.on('end', () => {
    client.close().then(() => lib.finish({ event: 'closed' })).catch(lib.fail);
  });
  process.stdin.resume();
}

main().catch(lib.fail);
