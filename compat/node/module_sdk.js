'use strict';
// An official azure-iot-device ModuleClient over MQTT against the hub named
// by MODULE_CONNECTION_STRING (HostName=localhost;DeviceId=D;ModuleId=M;
// SharedAccessKey=...).
//
// Usage: node module_sdk.js [--report N] [--timeout SECONDS]
//
// It connects, registers the direct methods (onMethod), reads the module
// twin, patches the reported property {"moduleCheck": N} and listens for
// desired patches. Output is JSON lines on stdout:
//   {"event":"ready", "desired", "reported"}   twin as read, after the reported patch
//   {"event":"desired", "patch"}               every desired notification
//   {"event":"method", "name", "payload"}      every method call, before it is answered
//   {"ok":true, "event":"closed"}              last line, after a clean close (stdin ended)
// Methods: echo -> 200 {"echo": payload, "module": moduleId}; fail -> 500.

const lib = require('./lib');
const { ModuleClient } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const args = lib.parseArgs(process.argv.slice(2));
lib.hardTimeout(Number(args.timeout || 60));

const connectionString = lib.env('MODULE_CONNECTION_STRING');
const moduleId = (/(?:^|;)ModuleId=([^;]*)/.exec(connectionString) || [])[1];
if (!moduleId) {
  lib.fail(new Error('MODULE_CONNECTION_STRING has no ModuleId'));
}
const client = ModuleClient.fromConnectionString(connectionString, Mqtt);
let twin = null;
let closing = false;

client.on('error', (err) => lib.log('client error: ' + JSON.stringify(lib.describeError(err))));
client.on('disconnect', (reason) => lib.log('client disconnect: ' + JSON.stringify(lib.describeError(reason))));

function respond(response, status, payload) {
  return new Promise((resolve, reject) => {
    response.send(status, payload, (err) => (err ? reject(err) : resolve()));
  });
}

function onMethod(name, handler) {
  client.onMethod(name, (request, response) => {
    lib.emit({ event: 'method', name: request.methodName, payload: request.payload === undefined ? null : request.payload });
    handler(request, response).catch(lib.fail);
  });
}

onMethod('echo', async (request, response) => {
  await respond(response, 200, { echo: request.payload === undefined ? null : request.payload, module: moduleId });
});

onMethod('fail', async (request, response) => {
  await respond(response, 500, { reason: 'the method asked for a failure' });
});

async function close() {
  if (closing) {
    return;
  }
  closing = true;
  await client.close();
  lib.finish({ event: 'closed' });
}

async function main() {
  await client.open();
  lib.log('module connected');
  // onMethod subscribes in the background; wait for the SUBACK so that the
  // hub knows the methods before "ready" is printed.
  await new Promise((resolve, reject) => client._enableMethods((err) => (err ? reject(err) : resolve())));
  twin = await client.getTwin();
  twin.on('error', (err) => lib.log('twin error: ' + JSON.stringify(lib.describeError(err))));
  twin.on('properties.desired', (patch) => lib.emit({ event: 'desired', patch }));
  await new Promise((resolve, reject) => twin.enableTwinDesiredPropertiesUpdates((err) => (err ? reject(err) : resolve())));
  await new Promise((resolve, reject) => {
    twin.properties.reported.update({ moduleCheck: Number(args.report || 1) }, (err) => (err ? reject(err) : resolve()));
  });
  const { update, ...reported } = twin.properties.reported; // eslint-disable-line no-unused-vars
  lib.emit({ event: 'ready', desired: twin.properties.desired, reported });
  process.stdin.on('end', () => close().catch(lib.fail));
  process.stdin.resume();
}

main().catch(lib.fail);
