'use strict';
// An official azure-iot-device Client over MQTT that logs in with an X.509
// certificate or announces an IoT Plug and Play model id, against the hub
// named by DEVICE_CONNECTION_STRING.
//
// Usage: node device_identity.js [--cert FILE --key FILE [--ca FILE]]
//                                [--model-id ID] [--report N] [--mode check|open]
//                                [--timeout SECONDS]
//
// --cert/--key: the connection string says x509=true; the PEM files go to
// Client.setOptions({cert, key, ca}) before open (ca is a file name, which
// the SDK reads itself). --model-id: Client.setOptions({modelId}).
// Mode check opens, sends one event (QoS 1), reads the twin, patches the
// reported property {"identityCheck": N}, reads the twin again and closes:
//   {"ok":true,"telemetry":true,"reported":{...},"twinModelId"?}
// Mode open only opens and closes: {"ok":true}. A failure prints
// {"ok":false,"error":{name,message}} and exits 1.

const fs = require('fs');
const lib = require('./lib');
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const args = lib.parseArgs(process.argv.slice(2));
lib.hardTimeout(Number(args.timeout || 40));
const mode = args.mode || 'check';
if (mode !== 'check' && mode !== 'open') {
  lib.fail(new Error('unknown --mode ' + mode + ' (want check or open)'));
}
if (!!args.cert !== !!args.key) {
  lib.fail(new Error('--cert and --key go together'));
}

const client = Client.fromConnectionString(lib.env('DEVICE_CONNECTION_STRING'), Mqtt);
client.on('error', (err) => lib.log('client error: ' + JSON.stringify(lib.describeError(err))));

function reportedUpdate(twin, patch) {
  return new Promise((resolve, reject) => {
    twin.properties.reported.update(patch, (err) => (err ? reject(err) : resolve()));
  });
}

async function main() {
  const options = {};
  if (args.cert) {
    options.cert = fs.readFileSync(args.cert, 'utf8');
    options.key = fs.readFileSync(args.key, 'utf8');
    if (args.ca) {
      options.ca = args.ca;
    }
  }
  if (args['model-id']) {
    options.modelId = args['model-id'];
  }
  if (Object.keys(options).length > 0) {
    await client.setOptions(options);
  }
  await client.open();
  lib.log('connected');
  if (mode === 'open') {
    await client.close();
    lib.finish({});
    return;
  }
  const msg = new Message(JSON.stringify({ identity: 'check' }));
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  await client.sendEvent(msg);
  const twin = await client.getTwin();
  await reportedUpdate(twin, { identityCheck: Number(args.report || 1) });
  const again = await client.getTwin();
  const { update, ...reported } = again.properties.reported; // eslint-disable-line no-unused-vars
  await client.close();
  lib.finish({ telemetry: true, reported });
}

main().catch(lib.fail);
