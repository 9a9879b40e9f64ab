'use strict';
// azure-iothub's module identities, module twins and methods, bulk registry
// operations, registry statistics, device scopes and model-id queries
// against the hub named by IOTHUB_CONNECTION_STRING.
//
// Usage (every scenario prints {"ok":bool,"checks":[{"name","ok","detail"|"error"}...]}
// and exits 1 if a check failed; checks run in order, later ones may depend
// on earlier ones):
//   node registry_sdk.js modules --device D --prefix P
//     Registry.addModule/getModule/getModulesOnDevice/updateModule/removeModule
//     and getModuleTwin/updateModuleTwin on modules P-a and P-b of device D
//     (which must exist). P-a is left for module-live.
//   node registry_sdk.js module-live --device D --module M --report N --run R
//     With the official ModuleClient connected as D/M (module_sdk.js --report N):
//     Client.invokeDeviceMethod(D, M, ...), getModuleTwin sees the reported
//     patch, updateModuleTwin sends desired {"fromService": R}, the device
//     itself (not connected) does not get the module's method.
//   node registry_sdk.js module-remove --device D --module M
//     removeModule(D, M); getModulesOnDevice(D) is empty; getModule is 404.
//   node registry_sdk.js bulk --prefix P
//     addDevices (with a duplicate), updateDevices (forced and with etags),
//     removeDevices, with getRegistryStatistics counting along. Run it when
//     no other test changes the registry.
//   node registry_sdk.js scopes --prefix P
//     deviceScope / parentScopes round-trip through create, get, update, getTwin.
//   node registry_sdk.js model-query --device D --model-id ID
//     getTwin(D).modelId is ID; SELECT * FROM devices WHERE modelId = ID finds D.

const lib = require('./lib');
const { assert, checkRunner, expectHTTPError } = lib;
const { Registry, Client } = require('azure-iothub');

const argv = process.argv.slice(2);
const scenario = argv.shift();
const args = lib.parseArgs(argv);
lib.hardTimeout(Number(args.timeout || 40));

const connectionString = lib.env('IOTHUB_CONNECTION_STRING');
const registry = Registry.fromConnectionString(connectionString);

function need(...names) {
  for (const n of names) {
    assert(args[n], '--' + n + ' is required');
  }
}

function invoke(client, deviceId, moduleId, params) {
  return new Promise((resolve) => {
    const cb = (err, result, response) => resolve({ err, result, statusCode: response ? response.statusCode : undefined });
    if (moduleId) {
      client.invokeDeviceMethod(deviceId, moduleId, params, cb);
    } else {
      client.invokeDeviceMethod(deviceId, params, cb);
    }
  });
}

async function runModules() {
  need('device', 'prefix');
  const deviceId = args.device;
  const a = args.prefix + '-a';
  const b = args.prefix + '-b';
  const { checks, check } = checkRunner();
  const state = {};

  await check('Registry.addModule (hub generates keys)', async () => {
    const res = await registry.addModule({ deviceId, moduleId: a });
    const m = res.responseBody;
    assert(m && m.deviceId === deviceId && m.moduleId === a, 'addModule returned ' + JSON.stringify({ deviceId: m && m.deviceId, moduleId: m && m.moduleId }));
    const keys = m.authentication && m.authentication.symmetricKey;
    assert(keys && keys.primaryKey && keys.secondaryKey && keys.primaryKey !== keys.secondaryKey,
      'addModule returned no distinct generated keys (type ' + JSON.stringify(m.authentication && m.authentication.type) + ')');
    assert(m.etag, 'addModule returned no etag');
    assert(m.generationId, 'addModule returned no generationId');
    state.a = m;
    const resB = await registry.addModule({ deviceId, moduleId: b, managedBy: 'compat' });
    assert(resB.responseBody.managedBy === 'compat', 'managedBy of ' + b + ' is ' + JSON.stringify(resB.responseBody.managedBy));
    state.b = resB.responseBody;
    return { statusCode: res.httpResponse.statusCode, etag: m.etag };
  });

  await check('Registry.addModule duplicate -> 409 ModuleAlreadyExistsOnDevice', async () => {
    return expectHTTPError(registry.addModule({ deviceId, moduleId: a }), 409, 'ModuleAlreadyExistsOnDevice');
  });

  await check('Registry.addModule on an unknown device -> 404 DeviceNotFound', async () => {
    return expectHTTPError(registry.addModule({ deviceId: args.prefix + '-nodevice', moduleId: a }), 404, 'DeviceNotFound');
  });

  await check('Registry.getModule', async () => {
    const m = (await registry.getModule(deviceId, a)).responseBody;
    assert(m.deviceId === deviceId && m.moduleId === a, 'getModule returned ' + JSON.stringify({ deviceId: m.deviceId, moduleId: m.moduleId }));
    assert(state.a && m.authentication.symmetricKey.primaryKey === state.a.authentication.symmetricKey.primaryKey, 'getModule returned a different primary key than addModule');
    assert(m.etag === state.a.etag, 'etag ' + m.etag + ' differs from addModule etag ' + state.a.etag);
    assert(m.connectionState === 'Disconnected', 'connectionState is ' + JSON.stringify(m.connectionState));
    return { connectionState: m.connectionState };
  });

  await check('Registry.getModule unknown -> 404 ModuleNotFound', async () => {
    return expectHTTPError(registry.getModule(deviceId, args.prefix + '-missing'), 404, 'ModuleNotFound');
  });

  await check('Registry.getModulesOnDevice', async () => {
    const list = (await registry.getModulesOnDevice(deviceId)).responseBody;
    assert(Array.isArray(list), 'getModulesOnDevice returned ' + typeof list);
    const ids = list.map((m) => m.moduleId).sort();
    assert(JSON.stringify(ids) === JSON.stringify([a, b].sort()), 'modules ' + JSON.stringify(ids));
    assert(list.every((m) => m.deviceId === deviceId), 'a module of another device is listed');
    return { modules: ids };
  });

  await check('Registry.updateModule with etag (managedBy)', async () => {
    assert(state.b, 'no module from addModule');
    const res = await registry.updateModule(Object.assign({}, state.b, { managedBy: 'compat-updated' }));
    const m = res.responseBody;
    assert(m.managedBy === 'compat-updated', 'updateModule returned managedBy ' + JSON.stringify(m.managedBy));
    assert(m.etag && m.etag !== state.b.etag, 'etag did not change: ' + state.b.etag + ' -> ' + m.etag);
    const again = (await registry.getModule(deviceId, b)).responseBody;
    assert(again.managedBy === 'compat-updated', 'getModule after update: managedBy ' + JSON.stringify(again.managedBy));
    assert(again.authentication.symmetricKey.primaryKey === state.b.authentication.symmetricKey.primaryKey, 'updateModule changed the keys');
    return { etagBefore: state.b.etag, etagAfter: m.etag };
  });

  await check('Registry.updateModule with a stale etag -> 412', async () => {
    return expectHTTPError(registry.updateModule(Object.assign({}, state.b, { managedBy: 'stale' })), 412);
  });

  await check('Registry.updateModule forced', async () => {
    const m = (await registry.updateModule(Object.assign({}, state.b, { managedBy: 'forced', etag: undefined }), true)).responseBody;
    assert(m.managedBy === 'forced', 'forced updateModule returned managedBy ' + JSON.stringify(m.managedBy));
    return { managedBy: m.managedBy };
  });

  await check('Registry.getModuleTwin', async () => {
    const twin = (await registry.getModuleTwin(deviceId, a)).responseBody;
    assert(twin.deviceId === deviceId && twin.moduleId === a, 'twin ids ' + JSON.stringify({ deviceId: twin.deviceId, moduleId: twin.moduleId }));
    assert(twin.etag, 'module twin has no etag');
    assert(twin.properties && twin.properties.desired && twin.properties.desired.$version !== undefined, 'no desired $version: ' + JSON.stringify(twin.properties));
    state.twinEtag = twin.etag;
    return { etag: twin.etag };
  });

  await check('Registry.updateModuleTwin (tags, desired) with etag', async () => {
    const patch = { tags: { compat: { module: a } }, properties: { desired: { moduleDesired: { level: 3 } } } };
    const t = (await registry.updateModuleTwin(deviceId, a, patch, state.twinEtag)).responseBody;
    assert(t.moduleId === a, 'updateModuleTwin returned moduleId ' + JSON.stringify(t.moduleId));
    assert(t.tags && t.tags.compat && t.tags.compat.module === a, 'tags ' + JSON.stringify(t.tags));
    assert(t.properties.desired.moduleDesired && t.properties.desired.moduleDesired.level === 3, 'desired ' + JSON.stringify(t.properties.desired));
    assert(t.etag && t.etag !== state.twinEtag, 'etag did not change');
    const device = (await registry.getTwin(deviceId)).responseBody;
    assert(!device.tags || !device.tags.compat, 'the module twin patch changed the device twin: ' + JSON.stringify(device.tags));
    return { etag: t.etag };
  });

  await check('Registry.updateModuleTwin with a stale etag -> 412', async () => {
    return expectHTTPError(registry.updateModuleTwin(deviceId, a, { tags: { stale: true } }, state.twinEtag), 412);
  });

  await check('createQuery SELECT * FROM devices.modules', async () => {
    const q = registry.createQuery("SELECT * FROM devices.modules WHERE deviceId = '" + deviceId + "'", 10);
    const res = await q.next();
    const ids = (res.result || []).map((r) => r.moduleId).sort();
    assert(JSON.stringify(ids) === JSON.stringify([a, b].sort()), 'query returned modules ' + JSON.stringify(ids));
    return { modules: ids };
  });

  await check('Registry.removeModule, then getModule -> 404', async () => {
    await registry.removeModule(deviceId, b);
    const list = (await registry.getModulesOnDevice(deviceId)).responseBody.map((m) => m.moduleId);
    assert(JSON.stringify(list) === JSON.stringify([a]), 'modules after removeModule ' + JSON.stringify(list));
    return expectHTTPError(registry.getModule(deviceId, b), 404, 'ModuleNotFound');
  });

  return checks;
}

async function runModuleLive() {
  need('device', 'module', 'report', 'run');
  const deviceId = args.device;
  const moduleId = args.module;
  const client = Client.fromConnectionString(connectionString);
  const { checks, check } = checkRunner();

  await check('Registry.getModule shows the ModuleClient connected', async () => {
    const m = (await registry.getModule(deviceId, moduleId)).responseBody;
    assert(m.connectionState === 'Connected', 'connectionState is ' + JSON.stringify(m.connectionState));
    const d = (await registry.get(deviceId)).responseBody;
    assert(d.connectionState === 'Disconnected', 'the device itself shows ' + JSON.stringify(d.connectionState));
    return { module: m.connectionState, device: d.connectionState };
  });

  await check('Client.invokeDeviceMethod(deviceId, moduleId, echo)', async () => {
    const r = await invoke(client, deviceId, moduleId, { methodName: 'echo', payload: { run: args.run }, responseTimeoutInSeconds: 10 });
    assert(!r.err, 'invoke failed: ' + JSON.stringify(lib.describeError(r.err)));
    assert(r.result.status === 200, 'status ' + r.result.status);
    const p = r.result.payload;
    assert(p && p.module === moduleId && p.echo && p.echo.run === args.run, 'payload ' + JSON.stringify(p));
    return { status: r.result.status, payload: p };
  });

  await check('Client.invokeDeviceMethod(deviceId, moduleId, fail) passes 500 through', async () => {
    const r = await invoke(client, deviceId, moduleId, { methodName: 'fail', payload: {}, responseTimeoutInSeconds: 10 });
    assert(!r.err, 'invoke failed: ' + JSON.stringify(lib.describeError(r.err)));
    assert(r.result.status === 500 && r.result.payload && r.result.payload.reason, 'result ' + JSON.stringify(r.result));
    return { status: r.result.status };
  });

  await check('invokeDeviceMethod on the device (not the module) -> 404103', async () => {
    const r = await invoke(client, deviceId, null, { methodName: 'echo', payload: null, responseTimeoutInSeconds: 5 });
    assert(r.err, 'the device answered a method although only its module is connected: ' + JSON.stringify(r.result));
    const d = lib.describeError(r.err);
    assert(d.statusCode === 404 && d.body && d.body.indexOf('404103') >= 0, 'got ' + JSON.stringify(d));
    return d;
  });

  await check('Registry.getModuleTwin has the reported patch', async () => {
    const twin = (await registry.getModuleTwin(deviceId, moduleId)).responseBody;
    const r = twin.properties.reported;
    assert(r.moduleCheck === Number(args.report), 'reported ' + JSON.stringify(r));
    return { reported: r };
  });

  await check('Registry.updateModuleTwin desired (etag *)', async () => {
    const t = (await registry.updateModuleTwin(deviceId, moduleId, { properties: { desired: { fromService: args.run } } }, '*')).responseBody;
    assert(t.properties.desired.fromService === args.run, 'desired ' + JSON.stringify(t.properties.desired));
    return { desiredVersion: t.properties.desired.$version };
  });

  return checks;
}

async function runModuleRemove() {
  need('device', 'module');
  const { checks, check } = checkRunner();
  await check('Registry.removeModule(deviceId, moduleId)', async () => {
    await registry.removeModule(args.device, args.module);
    const list = (await registry.getModulesOnDevice(args.device)).responseBody;
    assert(Array.isArray(list) && list.length === 0, 'modules after remove ' + JSON.stringify(list.map((m) => m.moduleId)));
    return expectHTTPError(registry.getModule(args.device, args.module), 404, 'ModuleNotFound');
  });
  return checks;
}

async function stats() {
  return (await registry.getRegistryStatistics()).responseBody;
}

// bulkResult runs a bulk call and returns the BulkRegistryOperationResult
// with the HTTP status, whether the SDK resolved it (HTTP 200) or rejected
// it (IoT Hub answers 400 with the result when an entry failed).
async function bulkResult(promise) {
  try {
    const res = await promise;
    return { httpStatus: res.httpResponse.statusCode, result: res.responseBody };
  } catch (err) {
    const d = lib.describeError(err);
    let body;
    try {
      body = JSON.parse(d.body);
    } catch (e) {
      throw new Error('bulk call failed without a BulkRegistryOperationResult: ' + JSON.stringify(d));
    }
    return { httpStatus: d.statusCode, result: body };
  }
}

async function runBulk() {
  need('prefix');
  const ids = [0, 1, 2].map((i) => args.prefix + '-' + i);
  const { checks, check } = checkRunner();
  const state = {};

  await check('Registry.getRegistryStatistics matches Registry.list', async () => {
    const s = await stats();
    const list = (await registry.list()).responseBody;
    const enabled = list.filter((d) => d.status === 'enabled').length;
    assert(s.totalDeviceCount === list.length, 'totalDeviceCount ' + s.totalDeviceCount + ', list has ' + list.length);
    assert(s.enabledDeviceCount === enabled, 'enabledDeviceCount ' + s.enabledDeviceCount + ', list has ' + enabled + ' enabled');
    assert(s.disabledDeviceCount === list.length - enabled, 'disabledDeviceCount ' + s.disabledDeviceCount + ', list has ' + (list.length - enabled) + ' disabled');
    state.before = s;
    return s;
  });

  await check('Registry.addDevices creates three devices', async () => {
    const devices = ids.map((id, i) => ({ deviceId: id, status: i === 2 ? 'disabled' : 'enabled' }));
    const r = await bulkResult(registry.addDevices(devices));
    assert(r.httpStatus === 200, 'HTTP ' + r.httpStatus + ': ' + JSON.stringify(r.result));
    assert(r.result.isSuccessful === true, 'isSuccessful ' + JSON.stringify(r.result));
    assert(Array.isArray(r.result.errors) && r.result.errors.length === 0, 'errors ' + JSON.stringify(r.result.errors));
    for (const id of ids) {
      const d = (await registry.get(id)).responseBody;
      assert(d.authentication.symmetricKey.primaryKey, id + ' has no generated key');
    }
    assert((await registry.get(ids[2])).responseBody.status === 'disabled', ids[2] + ' is not disabled');
    return r;
  });

  await check('Registry.getRegistryStatistics counts the new devices', async () => {
    const s = await stats();
    const b = state.before;
    assert(b, 'no statistics from before');
    assert(s.totalDeviceCount === b.totalDeviceCount + 3 && s.enabledDeviceCount === b.enabledDeviceCount + 2 &&
      s.disabledDeviceCount === b.disabledDeviceCount + 1, 'before ' + JSON.stringify(b) + ', after ' + JSON.stringify(s));
    return s;
  });

  await check('Registry.addDevices with a duplicate: per-device error', async () => {
    const fresh = args.prefix + '-3';
    const r = await bulkResult(registry.addDevices([{ deviceId: ids[0] }, { deviceId: fresh }]));
    assert(r.result.isSuccessful === false, 'isSuccessful ' + JSON.stringify(r.result));
    const errs = r.result.errors || [];
    assert(errs.length === 1 && errs[0].deviceId === ids[0], 'errors ' + JSON.stringify(errs));
    assert(errs[0].errorCode === 'DeviceAlreadyExists', 'errorCode ' + JSON.stringify(errs[0].errorCode));
    assert(errs[0].errorStatus, 'no errorStatus');
    ids.push(fresh);
    // The entries that can be applied are: the other device exists now.
    const created = (await registry.get(fresh)).responseBody;
    assert(created.deviceId === fresh, 'get ' + fresh + ' returned ' + JSON.stringify(created.deviceId));
    return { httpStatus: r.httpStatus, errors: errs };
  });

  await check('Registry.updateDevices forced (status)', async () => {
    const r = await bulkResult(registry.updateDevices([{ deviceId: ids[0], status: 'disabled' }], true));
    assert(r.httpStatus === 200 && r.result.isSuccessful === true, 'result ' + JSON.stringify(r));
    const d = (await registry.get(ids[0])).responseBody;
    assert(d.status === 'disabled', 'status after updateDevices ' + JSON.stringify(d.status));
    state.etag0 = d.etag;
    return { etag: d.etag };
  });

  await check('Registry.updateDevices with etags (updateIfMatchETag)', async () => {
    const d = (await registry.get(ids[1])).responseBody;
    const ok = await bulkResult(registry.updateDevices([{ deviceId: ids[1], status: 'disabled', etag: d.etag }], false));
    assert(ok.httpStatus === 200 && ok.result.isSuccessful === true, 'matching etag: ' + JSON.stringify(ok));
    const stale = await bulkResult(registry.updateDevices([{ deviceId: ids[1], status: 'enabled', etag: d.etag }], false));
    assert(stale.result.isSuccessful === false && (stale.result.errors || []).length === 1 && stale.result.errors[0].deviceId === ids[1],
      'stale etag: ' + JSON.stringify(stale));
    const again = (await registry.get(ids[1])).responseBody;
    assert(again.status === 'disabled', 'a stale etag changed the device: status ' + JSON.stringify(again.status));
    return { stale: stale.result.errors[0] };
  });

  await check('Registry.removeDevices', async () => {
    const withEtag = (await registry.get(ids[1])).responseBody;
    const r1 = await bulkResult(registry.removeDevices([{ deviceId: ids[1], etag: withEtag.etag }], false));
    assert(r1.httpStatus === 200 && r1.result.isSuccessful === true, 'deleteIfMatchETag: ' + JSON.stringify(r1));
    const rest = ids.filter((id) => id !== ids[1]).map((id) => ({ deviceId: id }));
    const r2 = await bulkResult(registry.removeDevices(rest, true));
    assert(r2.httpStatus === 200 && r2.result.isSuccessful === true, 'delete: ' + JSON.stringify(r2));
    for (const id of ids) {
      await expectHTTPError(registry.get(id), 404, 'DeviceNotFound');
    }
    return { removed: ids.length };
  });

  await check('Registry.getRegistryStatistics is back where it was', async () => {
    const s = await stats();
    assert(JSON.stringify(s) === JSON.stringify(state.before), 'before ' + JSON.stringify(state.before) + ', after ' + JSON.stringify(s));
    return s;
  });

  return checks;
}

async function runScopes() {
  need('prefix');
  const edge = args.prefix + '-edge';
  const leaf = args.prefix + '-leaf';
  const { checks, check } = checkRunner();
  const state = {};

  await check('Registry.create edge device has a deviceScope', async () => {
    const d = (await registry.create({ deviceId: edge, capabilities: { iotEdge: true } })).responseBody;
    assert(d.capabilities && d.capabilities.iotEdge === true, 'capabilities ' + JSON.stringify(d.capabilities));
    assert(typeof d.deviceScope === 'string' && d.deviceScope.indexOf('ms-azure-iot-edge://' + edge + '-') === 0,
      'edge deviceScope ' + JSON.stringify(d.deviceScope));
    state.scope = d.deviceScope;
    return { deviceScope: d.deviceScope };
  });

  await check('Registry.create leaf with deviceScope and parentScopes', async () => {
    assert(state.scope, 'no edge scope');
    const d = (await registry.create({ deviceId: leaf, deviceScope: state.scope, parentScopes: [state.scope] })).responseBody;
    assert(d.deviceScope === state.scope, 'deviceScope ' + JSON.stringify(d.deviceScope));
    assert(JSON.stringify(d.parentScopes) === JSON.stringify([state.scope]), 'parentScopes ' + JSON.stringify(d.parentScopes));
    const got = (await registry.get(leaf)).responseBody;
    assert(got.deviceScope === state.scope && JSON.stringify(got.parentScopes) === JSON.stringify([state.scope]),
      'get returned ' + JSON.stringify({ deviceScope: got.deviceScope, parentScopes: got.parentScopes }));
    const twin = (await registry.getTwin(leaf)).responseBody;
    assert(twin.deviceScope === state.scope && JSON.stringify(twin.parentScopes) === JSON.stringify([state.scope]),
      'twin has ' + JSON.stringify({ deviceScope: twin.deviceScope, parentScopes: twin.parentScopes }));
    state.leaf = got;
    return { deviceScope: got.deviceScope, parentScopes: got.parentScopes };
  });

  await check('Registry.update keeps the scopes it is given, clears none it is not', async () => {
    const d = state.leaf;
    assert(d, 'no leaf device');
    const updated = (await registry.update({ deviceId: leaf, status: 'disabled', authentication: d.authentication, deviceScope: d.deviceScope, parentScopes: d.parentScopes })).responseBody;
    assert(updated.deviceScope === state.scope && JSON.stringify(updated.parentScopes) === JSON.stringify([state.scope]),
      'update returned ' + JSON.stringify({ deviceScope: updated.deviceScope, parentScopes: updated.parentScopes }));
    return { status: updated.status };
  });

  await check('Registry.delete both', async () => {
    await registry.delete(leaf);
    await registry.delete(edge);
    return expectHTTPError(registry.get(edge), 404, 'DeviceNotFound');
  });
  return checks;
}

async function runModelQuery() {
  need('device', 'model-id');
  const { checks, check } = checkRunner();
  const modelId = args['model-id'];
  await check('Registry.getTwin has the modelId', async () => {
    const twin = (await registry.getTwin(args.device)).responseBody;
    assert(twin.modelId === modelId, 'twin.modelId ' + JSON.stringify(twin.modelId));
    return { modelId: twin.modelId };
  });
  await check("createQuery SELECT * FROM devices WHERE modelId = '...'", async () => {
    const q = registry.createQuery("SELECT * FROM devices WHERE modelId = '" + modelId + "'", 10);
    const res = await q.nextAsTwin();
    const got = (res.result || []).map((t) => t.deviceId);
    assert(JSON.stringify(got) === JSON.stringify([args.device]), 'query returned ' + JSON.stringify(got));
    return { deviceIds: got };
  });
  return checks;
}

const scenarios = {
  modules: runModules,
  'module-live': runModuleLive,
  'module-remove': runModuleRemove,
  bulk: runBulk,
  scopes: runScopes,
  'model-query': runModelQuery,
};

async function main() {
  const run = scenarios[scenario];
  if (!run) {
    lib.fail(new Error('unknown scenario ' + JSON.stringify(scenario) + ' (want ' + Object.keys(scenarios).join(', ') + ')'));
    return;
  }
  const checks = await run();
  const ok = checks.every((c) => c.ok);
  process.stdout.write(JSON.stringify({ ok, checks }) + '\n', () => process.exit(ok ? 0 : 1));
}

main().catch(lib.fail);
