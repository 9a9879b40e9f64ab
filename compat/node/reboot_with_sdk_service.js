'use strict';
// The device-management tutorial's service side, done with the official
// azure-iothub package against IOTHUB_CONNECTION_STRING: read the twin's
// reported rebootTime, invoke rebootDevice, then poll the twin until
// reported.rebootTime changes.
//
// Usage: node reboot_with_sdk_service.js --device ID [--payload JSON] [--timeout S]
// Prints {"ok":true,"status","payload","previousRebootTime","rebootTime","polls"}.

const lib = require('./lib');
const { Registry, Client } = require('azure-iothub');

const args = lib.parseArgs(process.argv.slice(2));
lib.hardTimeout(Number(args.timeout || 30));

async function reportedRebootTime(registry, deviceId) {
  const res = await registry.getTwin(deviceId);
  const reported = (res.responseBody.properties && res.responseBody.properties.reported) || {};
  return reported.rebootTime;
}

async function main() {
  const deviceId = args.device;
  if (!deviceId) {
    throw new Error('--device is required');
  }
  const cs = lib.env('IOTHUB_CONNECTION_STRING');
  const registry = Registry.fromConnectionString(cs);
  const client = Client.fromConnectionString(cs);

  const previous = await reportedRebootTime(registry, deviceId);
  lib.log('baseline rebootTime ' + JSON.stringify(previous));

  const params = { methodName: 'rebootDevice', payload: args.payload ? JSON.parse(args.payload) : null, responseTimeoutInSeconds: 15 };
  const res = await client.invokeDeviceMethod(deviceId, params);
  const result = res.result;
  lib.log('rebootDevice answered ' + JSON.stringify(result));
  if (!result || result.status < 200 || result.status >= 300) {
    throw new Error('rebootDevice answered ' + JSON.stringify(result));
  }

  let polls = 0;
  for (;;) {
    polls++;
    const now = await reportedRebootTime(registry, deviceId);
    if (now !== undefined && now !== null && now !== previous) {
      lib.finish({ status: result.status, payload: result.payload, previousRebootTime: previous === undefined ? null : previous, rebootTime: now, polls });
      return;
    }
    await lib.sleep(250);
  }
}

main().catch(lib.fail);
