'use strict';
// An official azure-iot-device client (MQTT or MQTT over WebSockets) against
// the hub named by DEVICE_CONNECTION_STRING.
//
// Usage: node device_sdk.js --transport mqtt|mqttws [--mode check|reboot|open]
//                           [--report N] [--timeout SECONDS]
//                           [--token-ttl SECONDS --token-margin SECONDS]
//
// It connects, registers the direct methods, reads the twin, patches the
// reported property {"sdkCheck": N} (mode check) and listens for desired
// patches. Output is JSON lines on stdout:
//   {"event":"ready", "transport", "desired", "reported"}   twin as first read, after the reported patch
//   {"event":"desired", "patch"}                            every desired notification (the first one is
//                                                           the desired set from the twin read)
//   {"event":"method", "name", "payload"}                   every method call, before it is answered
//   {"event":"rebooted", "rebootTime"}                      mode reboot: after rebootTime was reported
//   {"event":"telemetry", "ok", "error"}                    mode check: one sendEvent (QoS 1, waits for PUBACK)
//   {"event":"renewed", "n", "desired"}                      after each SAS renewal (the SDK reconnects with
//                                                           the new token) and a twin read that follows it
//   {"ok":true, "event":"closed"}                           last line, after a clean close
// Methods: echo -> 200 {"echo": payload}; fail -> 500 {"reason": ...};
// quit -> 200 then close; rebootDevice -> 200, then (mode reboot) report
// {"rebootTime": <ISO time>} like the device-management tutorial's device.
// The script closes cleanly when stdin ends or after the quit method.
// Mode open only opens and closes the client: {"ok":true,"event":"closed"},
// or the SDK's error ({"ok":false,"error":{name,message}}, exit 1).

const lib = require('./lib');
const { Client, Message, SharedAccessKeyAuthenticationProvider } = require('azure-iot-device');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');

const args = lib.parseArgs(process.argv.slice(2));
lib.hardTimeout(Number(args.timeout || 60));

const transports = { mqtt: Mqtt, mqttws: MqttWs };
const Transport = transports[args.transport || 'mqtt'];
if (!Transport) {
  lib.fail(new Error('unknown --transport ' + args.transport + ' (want mqtt or mqttws)'));
}
const mode = args.mode || 'check';
if (mode !== 'check' && mode !== 'reboot' && mode !== 'open') {
  lib.fail(new Error('unknown --mode ' + mode + ' (want check, reboot or open)'));
}

let client;
let renewals = 0;
if (args['token-ttl']) {
  // Short-lived tokens make the SDK renew (disconnect, reconnect with the new
  // SAS, no new SUBSCRIBE: it relies on the clean-session-0 session) every
  // ttl - margin seconds.
  const provider = SharedAccessKeyAuthenticationProvider.fromConnectionString(
    lib.env('DEVICE_CONNECTION_STRING'), Number(args['token-ttl']), Number(args['token-margin'] || 1));
  client = Client.fromAuthenticationProvider(provider, Transport);
  // Registered after the transport's own listener, which starts the
  // reconnect: the twin read below is then queued behind it.
  provider.on('newTokenAvailable', () => {
    const n = ++renewals;
    lib.log('SAS renewed (' + n + ')');
    client.getTwin()
      .then((t) => lib.emit({ event: 'renewed', n, desired: t.properties.desired }))
      .catch(lib.fail);
  });
} else {
  client = Client.fromConnectionString(lib.env('DEVICE_CONNECTION_STRING'), Transport);
}
let twin = null;
let closing = false;

client.on('error', (err) => lib.log('client error: ' + JSON.stringify(lib.describeError(err))));
client.on('disconnect', (reason) => {
  lib.log('client disconnect: ' + JSON.stringify(lib.describeError(reason)));
  lib.emit({ event: 'disconnect', reason: lib.describeError(reason) });
});

// reportedUpdate patches reported properties. The SDK's
// twin.properties.reported.update takes a callback only (no promise form).
function reportedUpdate(patch) {
  return new Promise((resolve, reject) => {
    twin.properties.reported.update(patch, (err) => (err ? reject(err) : resolve()));
  });
}

function respond(response, status, payload) {
  return new Promise((resolve, reject) => {
    response.send(status, payload, (err) => (err ? reject(err) : resolve()));
  });
}

async function close() {
  if (closing) {
    return;
  }
  closing = true;
  await client.close();
  lib.finish({ event: 'closed' });
}

function onMethod(name, handler) {
  client.onDeviceMethod(name, (request, response) => {
    lib.emit({ event: 'method', name: request.methodName, payload: request.payload === undefined ? null : request.payload });
    handler(request, response).catch(lib.fail);
  });
}

onMethod('echo', async (request, response) => {
  await respond(response, 200, { echo: request.payload === undefined ? null : request.payload });
});

onMethod('fail', async (request, response) => {
  await respond(response, 500, { reason: 'the method asked for a failure' });
});

onMethod('quit', async (request, response) => {
  await respond(response, 200, { quitting: true });
  await close();
});

onMethod('rebootDevice', async (request, response) => {
  await respond(response, 200, { message: 'rebooting' });
  if (mode !== 'reboot') {
    return;
  }
  const rebootTime = new Date().toISOString();
  await reportedUpdate({ rebootTime });
  lib.emit({ event: 'rebooted', rebootTime });
});

async function main() {
  await client.open();
  lib.log('connected over ' + (args.transport || 'mqtt'));
  if (mode === 'open') {
    await close();
    return;
  }
  // onDeviceMethod subscribes in the background; this waits for the SUBACK so
  // that the hub knows the methods before "ready" is printed.
  await new Promise((resolve, reject) => client._enableMethods((err) => (err ? reject(err) : resolve())));
  twin = await client.getTwin();
  twin.on('error', (err) => lib.log('twin error: ' + JSON.stringify(lib.describeError(err))));
  twin.on('properties.desired', (patch) => lib.emit({ event: 'desired', patch }));
  // Same for the desired-properties subscription.
  await new Promise((resolve, reject) => twin.enableTwinDesiredPropertiesUpdates((err) => (err ? reject(err) : resolve())));
  if (mode === 'check') {
    await reportedUpdate({ sdkCheck: Number(args.report || 1) });
  }
  const { update, ...reported } = twin.properties.reported; // eslint-disable-line no-unused-vars
  lib.emit({ event: 'ready', transport: args.transport || 'mqtt', desired: twin.properties.desired, reported });
  process.stdin.on('end', () => close().catch(lib.fail));
  process.stdin.resume();
  if (mode === 'check') {
    const msg = new Message(JSON.stringify({ temperature: 21.5 }));
    msg.properties.add('source', 'compat');
    msg.contentType = 'application/json';
    msg.contentEncoding = 'utf-8';
    try {
      await client.sendEvent(msg);
      lib.emit({ event: 'telemetry', ok: true });
    } catch (err) {
      lib.emit({ event: 'telemetry', ok: false, error: lib.describeError(err) });
    }
  }
}

main().catch(lib.fail);
