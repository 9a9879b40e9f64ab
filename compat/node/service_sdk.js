'use strict';
// The official azure-iothub service client against the hub named by
// IOTHUB_CONNECTION_STRING (HostName=localhost;SharedAccessKeyName=...).
//
// Usage:
//   node service_sdk.js checks --prefix P [--timeout S]
//     Registry, twin, query and error checks on devices P-0 .. P-4 (created
//     here with empty keys, deleted at the end). Prints
//     {"ok":bool,"checks":[{"name","ok","detail"|"error"}...]}; exit 1 if a
//     check failed. Checks run in order; later ones may depend on earlier ones.
//   node service_sdk.js jobs --device ID --prefix P [--timeout S]
//     JobClient checks against the connected device ID (the official device
//     script in mode check): a method job, a twin-update job, a cancelled
//     future job, the job list and the per-device job rows. Output as checks.
//   node service_sdk.js invoke --device ID [--module MID] --method M [--payload JSON] [--response-timeout S]
//     Client.invokeDeviceMethod (on module MID of the device with --module); prints {"ok":true,"status","payload"} or
//     {"ok":false,"error":{name,message,statusCode,body}} (exit 1).

const lib = require('./lib');
const { Registry, Client, JobClient } = require('azure-iothub');

const argv = process.argv.slice(2);
const scenario = argv.shift();
const args = lib.parseArgs(argv);
lib.hardTimeout(Number(args.timeout || 30));

const connectionString = lib.env('IOTHUB_CONNECTION_STRING');

function badKeyConnectionString(cs) {
  // The same policy with a different (well-formed) key.
  return cs.replace(/SharedAccessKey=[^;]*/, 'SharedAccessKey=' + Buffer.alloc(32, 7).toString('base64'));
}

function invoke(client, deviceId, params, moduleId) {
  return new Promise((resolve) => {
    const cb = (err, result, response) => {
      resolve({ err, result, statusCode: response ? response.statusCode : undefined });
    };
    if (moduleId) {
      client.invokeDeviceMethod(deviceId, moduleId, params, cb);
    } else {
      client.invokeDeviceMethod(deviceId, params, cb);
    }
  });
}

async function expectError(promise, want) {
  let v;
  try {
    v = await promise;
  } catch (err) {
    if (err.constructor.name !== want) {
      throw new Error('expected ' + want + ', got ' + JSON.stringify(lib.describeError(err)));
    }
    return lib.describeError(err);
  }
  // Not the body: it may hold keys.
  const status = v && v.httpResponse && v.httpResponse.statusCode;
  throw new Error('expected ' + want + ', the call succeeded (HTTP ' + status + ')');
}

function assert(cond, msg) {
  if (!cond) {
    throw new Error(msg);
  }
}

// checkRunner collects named checks: each runs even if an earlier one failed.
function checkRunner() {
  const checks = [];
  async function check(name, fn) {
    try {
      const detail = await fn();
      checks.push({ name, ok: true, detail: detail === undefined ? null : detail });
    } catch (err) {
      lib.log('check ' + name + ' failed: ' + (err.stack || err));
      checks.push({ name, ok: false, error: lib.describeError(err) });
    }
  }
  return { checks, check };
}

async function runChecks() {
  const prefix = args.prefix;
  assert(prefix, '--prefix is required');
  const ids = [0, 1, 2, 3, 4].map((i) => prefix + '-' + i);
  const registry = Registry.fromConnectionString(connectionString);
  const client = Client.fromConnectionString(connectionString);
  const { checks, check } = checkRunner();
  const state = {};

  await check('Registry.create (hub generates keys)', async () => {
    state.created = {};
    for (const id of ids) {
      const res = await registry.create({ deviceId: id });
      const d = res.responseBody;
      assert(d && d.deviceId === id, 'create returned deviceId ' + JSON.stringify(d && d.deviceId));
      const keys = d.authentication && d.authentication.symmetricKey;
      assert(keys && keys.primaryKey && keys.secondaryKey, 'create returned no generated keys (primary ' + !!(keys && keys.primaryKey) +
        ', secondary ' + !!(keys && keys.secondaryKey) + ', type ' + JSON.stringify(d.authentication && d.authentication.type) + ')');
      assert(keys.primaryKey !== keys.secondaryKey, 'primary and secondary key are equal');
      assert(Buffer.from(keys.primaryKey, 'base64').length >= 16, 'primary key is not base64 of at least 16 bytes');
      assert(d.etag, 'create returned no etag');
      assert(d.status === 'enabled', 'status is ' + JSON.stringify(d.status));
      state.created[id] = d;
    }
    return { devices: ids.length, statusCode: 200 };
  });

  await check('Registry.get', async () => {
    const res = await registry.get(ids[0]);
    const d = res.responseBody;
    assert(d.deviceId === ids[0], 'get returned deviceId ' + JSON.stringify(d.deviceId));
    const want = state.created[ids[0]].authentication.symmetricKey.primaryKey;
    assert(d.authentication.symmetricKey.primaryKey === want, 'get returned a different primary key than create');
    assert(d.connectionState === 'Disconnected', 'connectionState is ' + JSON.stringify(d.connectionState));
    return { connectionState: d.connectionState, etag: d.etag };
  });

  await check('Registry.update (status disabled, keys kept)', async () => {
    const current = (await registry.get(ids[4])).responseBody;
    const res = await registry.update({ deviceId: ids[4], status: 'disabled', authentication: current.authentication });
    const d = res.responseBody;
    assert(d.deviceId === ids[4] && d.status === 'disabled', 'update returned ' + JSON.stringify({ deviceId: d.deviceId, status: d.status }));
    const again = (await registry.get(ids[4])).responseBody;
    assert(again.status === 'disabled', 'get after update: status ' + JSON.stringify(again.status));
    assert(again.authentication.symmetricKey.primaryKey === current.authentication.symmetricKey.primaryKey, 'update changed the primary key');
    assert(again.etag && again.etag !== current.etag, 'etag did not change: ' + current.etag + ' -> ' + again.etag);
    return { status: again.status, etagBefore: current.etag, etagAfter: again.etag };
  });

  await check('Registry.create duplicate -> DeviceAlreadyExistsError', async () => {
    return expectError(registry.create({ deviceId: ids[0] }), 'DeviceAlreadyExistsError');
  });

  await check('Registry.get unknown -> DeviceNotFoundError', async () => {
    return expectError(registry.get(prefix + '-missing'), 'DeviceNotFoundError');
  });

  await check('Registry.getTwin + twin.update(tags, desired)', async () => {
    const res = await registry.getTwin(ids[1]);
    const twin = res.responseBody;
    assert(twin.deviceId === ids[1], 'twin deviceId ' + JSON.stringify(twin.deviceId));
    assert(twin.etag, 'twin has no etag');
    const before = twin.etag;
    const stale = (await registry.getTwin(ids[1])).responseBody;
    const patch = {
      tags: { compat: { run: prefix, site: 'lab' } },
      properties: { desired: { sdkDesired: { interval: 5, label: 'from azure-iothub' } } },
    };
    const updated = await twin.update(patch);
    const t = updated.result;
    assert(t.tags && t.tags.compat && t.tags.compat.run === prefix && t.tags.compat.site === 'lab', 'update returned tags ' + JSON.stringify(t.tags));
    const d = t.properties && t.properties.desired && t.properties.desired.sdkDesired;
    assert(d && d.interval === 5 && d.label === 'from azure-iothub', 'update returned desired ' + JSON.stringify(t.properties));
    assert(t.etag && t.etag !== before, 'etag did not change: ' + before + ' -> ' + t.etag);
    // Read back through a fresh getTwin.
    const again = (await registry.getTwin(ids[1])).responseBody;
    assert(again.tags.compat.run === prefix, 'getTwin after update returned tags ' + JSON.stringify(again.tags));
    assert(again.properties.desired.sdkDesired.interval === 5, 'getTwin after update returned desired ' + JSON.stringify(again.properties.desired));
    assert(again.etag === t.etag, 'getTwin etag ' + again.etag + ' differs from update etag ' + t.etag);
    state.staleTwin = stale;
    return { etagBefore: before, etagAfter: t.etag, desiredVersion: again.properties.desired.$version };
  });

  await check('twin.update with stale etag -> InvalidEtagError', async () => {
    assert(state.staleTwin, 'no twin from the previous check');
    return expectError(state.staleTwin.update({ properties: { desired: { sdkDesired: { interval: 6 } } } }), 'InvalidEtagError');
  });

  await check('Registry.updateTwin (etag "*") null deletes a desired key', async () => {
    const res = await registry.updateTwin(ids[1], { properties: { desired: { sdkDesired: { label: null } } } }, '*');
    const d = res.responseBody.properties.desired.sdkDesired;
    assert(d && d.interval === 5 && !('label' in d), 'desired after null patch: ' + JSON.stringify(d));
    return { desired: d };
  });

  await check('createQuery paged (pageSize 2) with WHERE deviceId IN', async () => {
    const sql = 'SELECT * FROM devices WHERE deviceId IN [' + ids.map((id) => "'" + id + "'").join(', ') + ']';
    return pagedQuery(registry, sql, ids, true);
  });

  await check('createQuery paged (pageSize 2) SELECT * FROM devices', async () => {
    return pagedQuery(registry, 'SELECT * FROM devices', ids, false);
  });

  await check('createQuery SELECT COUNT() (raw rows via next)', async () => {
    const sql = 'SELECT COUNT() AS total FROM devices WHERE deviceId IN [' + ids.map((id) => "'" + id + "'").join(', ') + ']';
    const res = await registry.createQuery(sql).next();
    assert(Array.isArray(res.result) && res.result.length === 1 && res.result[0].total === ids.length, 'COUNT() returned ' + JSON.stringify(res.result));
    return { result: res.result };
  });

  await check('createQuery tags filter', async () => {
    const q = registry.createQuery("SELECT * FROM devices WHERE tags.compat.run = '" + prefix + "'", 10);
    const res = await q.nextAsTwin();
    const got = (res.result || []).map((t) => t.deviceId);
    assert(got.length === 1 && got[0] === ids[1], 'tag query returned ' + JSON.stringify(got));
    assert(!q.hasMoreResults, 'hasMoreResults is still true after the only page');
    return { deviceIds: got };
  });

  await check('invokeDeviceMethod unknown device -> DeviceNotFoundError', async () => {
    const r = await invoke(client, prefix + '-missing', { methodName: 'echo', payload: null, responseTimeoutInSeconds: 5 });
    assert(r.err, 'invoke on an unknown device succeeded: ' + JSON.stringify(r.result));
    const d = lib.describeError(r.err);
    assert(d.name === 'DeviceNotFoundError', 'got ' + JSON.stringify(d));
    return d;
  });

  await check('invokeDeviceMethod offline device -> 404 with 404103', async () => {
    const r = await invoke(client, ids[2], { methodName: 'echo', payload: null, responseTimeoutInSeconds: 5 });
    assert(r.err, 'invoke on an offline device succeeded: ' + JSON.stringify(r.result));
    const d = lib.describeError(r.err);
    assert(d.statusCode === 404, 'status ' + d.statusCode + ': ' + JSON.stringify(d));
    assert(d.body && d.body.indexOf('404103') >= 0, 'body lacks 404103: ' + JSON.stringify(d));
    return d;
  });

  await check('bad key: Registry.get -> UnauthorizedError', async () => {
    const bad = Registry.fromConnectionString(badKeyConnectionString(connectionString));
    return expectError(bad.get(ids[0]), 'UnauthorizedError');
  });

  await check('bad key: invokeDeviceMethod -> UnauthorizedError', async () => {
    const bad = Client.fromConnectionString(badKeyConnectionString(connectionString));
    const r = await invoke(bad, ids[0], { methodName: 'echo', payload: null, responseTimeoutInSeconds: 5 });
    assert(r.err, 'invoke with a bad key succeeded');
    const d = lib.describeError(r.err);
    assert(d.name === 'UnauthorizedError', 'got ' + JSON.stringify(d));
    return d;
  });

  await check('Registry.list contains the devices', async () => {
    const res = await registry.list();
    const got = new Set(res.responseBody.map((d) => d.deviceId));
    const missing = ids.filter((id) => !got.has(id));
    assert(missing.length === 0, 'list lacks ' + JSON.stringify(missing));
    return { listed: res.responseBody.length };
  });

  await check('Registry.delete, then get -> DeviceNotFoundError', async () => {
    for (const id of ids) {
      await registry.delete(id);
    }
    return expectError(registry.get(ids[0]), 'DeviceNotFoundError');
  });

  return checks;
}

const finalStates = ['completed', 'failed', 'cancelled'];

async function waitJob(jobClient, jobId) {
  for (;;) {
    const res = await jobClient.getJob(jobId);
    const job = res.jobStatus;
    if (finalStates.indexOf(job.status) >= 0) {
      return job;
    }
    await lib.sleep(200);
  }
}

async function runJobs() {
  const deviceId = args.device;
  const prefix = args.prefix;
  assert(deviceId && prefix, '--device and --prefix are required');
  const jobClient = JobClient.fromConnectionString(connectionString);
  const registry = Registry.fromConnectionString(connectionString);
  const where = "deviceId = '" + deviceId + "'";
  const methodJob = prefix + '-method';
  const twinJob = prefix + '-twin';
  const laterJob = prefix + '-later';
  const { checks, check } = checkRunner();

  await check('JobClient.scheduleDeviceMethod runs to completed', async () => {
    const res = await jobClient.scheduleDeviceMethod(methodJob, where, { methodName: 'echo', payload: { job: methodJob }, responseTimeoutInSeconds: 10 });
    assert(res.jobStatus && res.jobStatus.jobId === methodJob, 'schedule returned ' + JSON.stringify(res.jobStatus));
    assert(res.jobStatus.type === 'scheduleDeviceMethod', 'type ' + JSON.stringify(res.jobStatus.type));
    const job = await waitJob(jobClient, methodJob);
    assert(job.status === 'completed', 'final status ' + JSON.stringify(job));
    const st = job.deviceJobStatistics || {};
    assert(st.deviceCount === 1 && st.succeededCount === 1 && st.failedCount === 0, 'deviceJobStatistics ' + JSON.stringify(st));
    return { status: job.status, deviceJobStatistics: st };
  });

  await check('devices.jobs query returns the device method response', async () => {
    const q = registry.createQuery("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '" + methodJob + "'");
    const res = await q.next();
    const rows = res.result || [];
    assert(rows.length === 1, 'rows ' + JSON.stringify(rows));
    const row = rows[0];
    assert(row.deviceId === deviceId && row.jobId === methodJob && row.status === 'completed', 'row ' + JSON.stringify(row));
    const out = row.outcome && row.outcome.deviceMethodResponse;
    assert(out && out.status === 200 && out.payload && out.payload.echo && out.payload.echo.job === methodJob, 'outcome ' + JSON.stringify(row.outcome));
    return { row: { deviceId: row.deviceId, status: row.status, outcome: row.outcome } };
  });

  await check('JobClient.scheduleTwinUpdate sets desired', async () => {
    const patch = { etag: '*', properties: { desired: { fromJob: twinJob } } };
    const res = await jobClient.scheduleTwinUpdate(twinJob, where, patch);
    assert(res.jobStatus && res.jobStatus.jobId === twinJob, 'schedule returned ' + JSON.stringify(res.jobStatus));
    const job = await waitJob(jobClient, twinJob);
    assert(job.status === 'completed', 'final status ' + JSON.stringify(job));
    const twin = (await registry.getTwin(deviceId)).responseBody;
    assert(twin.properties.desired.fromJob === twinJob, 'twin desired ' + JSON.stringify(twin.properties.desired));
    return { status: job.status };
  });

  await check('JobClient.cancelJob on a future job', async () => {
    const later = new Date(Date.now() + 3600 * 1000);
    const res = await jobClient.scheduleDeviceMethod(laterJob, where, { methodName: 'echo', payload: null }, later, 600);
    assert(res.jobStatus && res.jobStatus.jobId === laterJob, 'schedule returned ' + JSON.stringify(res.jobStatus));
    assert(finalStates.indexOf(res.jobStatus.status) < 0, 'a job starting in an hour is already ' + res.jobStatus.status);
    const cancelled = await jobClient.cancelJob(laterJob);
    assert(cancelled.jobStatus && cancelled.jobStatus.status === 'cancelled', 'cancel returned ' + JSON.stringify(cancelled.jobStatus));
    const again = (await jobClient.getJob(laterJob)).jobStatus;
    assert(again.status === 'cancelled', 'getJob after cancel: ' + JSON.stringify(again.status));
    return { status: again.status };
  });

  await check('JobClient.createQuery lists the jobs', async () => {
    const q = jobClient.createQuery('scheduleDeviceMethod', null, 100);
    const seen = new Set();
    for (let page = 0; q.hasMoreResults && page < 100; page++) {
      const res = await q.next();
      for (const j of res.result || []) {
        seen.add(j.jobId);
      }
    }
    assert(seen.has(methodJob) && seen.has(laterJob), 'listed ' + JSON.stringify([...seen]));
    assert(!seen.has(twinJob), 'jobType=scheduleDeviceMethod listed the twin job');
    return { listed: seen.size };
  });

  await check('scheduleDeviceMethod with an existing jobId -> 409', async () => {
    try {
      await jobClient.scheduleDeviceMethod(methodJob, where, { methodName: 'echo' });
    } catch (err) {
      const d = lib.describeError(err);
      assert(d.statusCode === 409, 'got ' + JSON.stringify(d));
      return d;
    }
    throw new Error('a second job with the same id was accepted');
  });

  await check('getJob unknown -> 404', async () => {
    try {
      await jobClient.getJob(prefix + '-missing');
    } catch (err) {
      const d = lib.describeError(err);
      assert(d.statusCode === 404, 'got ' + JSON.stringify(d));
      return d;
    }
    throw new Error('getJob on an unknown job succeeded');
  });

  return checks;
}

async function pagedQuery(registry, sql, ids, exact) {
  const q = registry.createQuery(sql, 2);
  const seen = new Map();
  const pages = [];
  for (let page = 0; q.hasMoreResults; page++) {
    assert(page < 1000, 'more than 1000 pages: the continuation never ends');
    const res = await q.nextAsTwin();
    const items = res.result || [];
    pages.push(items.length);
    assert(items.length <= 2, 'page ' + page + ' has ' + items.length + ' items with pageSize 2');
    for (const t of items) {
      assert(t.deviceId, 'a result has no deviceId: ' + JSON.stringify(t).slice(0, 200));
      assert(typeof t.update === 'function', 'nextAsTwin did not return Twin objects');
      seen.set(t.deviceId, (seen.get(t.deviceId) || 0) + 1);
    }
  }
  const dup = [...seen].filter(([, n]) => n > 1).map(([id]) => id);
  assert(dup.length === 0, 'seen more than once: ' + JSON.stringify(dup) + ' pages ' + JSON.stringify(pages));
  const missing = ids.filter((id) => !seen.has(id));
  assert(missing.length === 0, 'never seen: ' + JSON.stringify(missing) + ' pages ' + JSON.stringify(pages));
  if (exact) {
    assert(seen.size === ids.length, 'query returned ' + seen.size + ' devices, want ' + ids.length + ': ' + JSON.stringify([...seen.keys()]));
  }
  assert(pages.length >= Math.ceil(ids.length / 2), 'only ' + pages.length + ' pages for ' + ids.length + ' devices at pageSize 2');
  return { pages, devices: seen.size };
}

async function runInvoke() {
  assert(args.device && args.method, '--device and --method are required');
  const client = Client.fromConnectionString(connectionString);
  const params = { methodName: args.method, responseTimeoutInSeconds: Number(args['response-timeout'] || 15) };
  if (args.payload !== undefined) {
    params.payload = JSON.parse(args.payload);
  }
  const r = await invoke(client, args.device, params, args.module);
  if (r.err) {
    lib.fail(r.err);
    return;
  }
  lib.finish({ httpStatus: r.statusCode, status: r.result.status, payload: r.result.payload });
}

async function main() {
  if (scenario === 'checks') {
    const checks = await runChecks();
    const ok = checks.every((c) => c.ok);
    process.stdout.write(JSON.stringify({ ok, checks }) + '\n', () => process.exit(ok ? 0 : 1));
  } else if (scenario === 'jobs') {
    const checks = await runJobs();
    const ok = checks.every((c) => c.ok);
    process.stdout.write(JSON.stringify({ ok, checks }) + '\n', () => process.exit(ok ? 0 : 1));
  } else if (scenario === 'invoke') {
    await runInvoke();
  } else {
    lib.fail(new Error('unknown scenario ' + JSON.stringify(scenario) + ' (want checks, jobs or invoke)'));
  }
}

main().catch(lib.fail);
