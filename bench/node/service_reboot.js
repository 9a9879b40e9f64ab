'use strict';
// One-shot official azure-iothub service call, the peer of
// `dmctl service reboot --no-wait`: invoke rebootDevice on DEVICE_ID through
// the hub named by IOTHUB_CONNECTION_STRING, print the result, exit.
// The bench times the whole process, Node start-up included.

const { Client } = require('azure-iothub');

const cs = process.env.IOTHUB_CONNECTION_STRING;
const id = process.env.DEVICE_ID;
if (!cs || !id) {
  process.stderr.write('IOTHUB_CONNECTION_STRING and DEVICE_ID are required\n');
  process.exit(2);
}
const client = Client.fromConnectionString(cs);
client.invokeDeviceMethod(id, { methodName: 'rebootDevice', payload: {}, responseTimeoutInSeconds: 30, connectTimeoutInSeconds: 10 }, (err, result) => {
  if (err) {
    process.stderr.write('invoke failed: ' + err.message + '\n');
    process.exit(1);
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result && result.status >= 200 && result.status < 300 ? 0 : 1);
});
