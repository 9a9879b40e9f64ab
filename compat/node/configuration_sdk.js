'use strict';
// azure-iothub's automatic device management (Registry.addConfiguration,
// getConfiguration, getConfigurations, updateConfiguration,
// removeConfiguration) against the hub named by IOTHUB_CONNECTION_STRING,
// and what a user sees of it in the twins: desired properties set by the
// configuration, systemMetrics and custom metrics counting, the twins'
// configurations.[[id]].status in queries, priorities, and a deletion that
// stops applying without rolling back.
//
// Usage:
//   node configuration_sdk.js --prefix P --devices A,B,C
//     A, B and C must exist and have no tags yet. Configurations P-low,
//     P-high and P-probe are created and removed again. Prints
//     {"ok":bool,"checks":[...]} and exits 1 if a check failed; later checks
//     depend on earlier ones.

const lib = require('./lib');
const { assert, checkRunner, expectHTTPError, waitFor } = lib;
const { Registry } = require('azure-iothub');

const args = lib.parseArgs(process.argv.slice(2));
lib.hardTimeout(Number(args.timeout || 60));
const registry = Registry.fromConnectionString(lib.env('IOTHUB_CONNECTION_STRING'));

// APPLY is how long the local hub may take to apply a change (it applies
// configurations within about a second).
const APPLY = 10;

// canonical renders v as JSON with object keys sorted (the hub need not
// keep the order the SDK sent).
function canonical(v) {
  if (Array.isArray(v)) {
    return '[' + v.map(canonical).join(',') + ']';
  }
  if (v && typeof v === 'object') {
    return '{' + Object.keys(v).sort().map((k) => JSON.stringify(k) + ':' + canonical(v[k])).join(',') + '}';
  }
  return JSON.stringify(v);
}

function same(a, b) {
  return canonical(a) === canonical(b);
}

async function twinOf(id) {
  return (await registry.getTwin(id)).responseBody;
}

// queryIds runs a query and returns the deviceIds it found, sorted.
async function queryIds(sql) {
  const res = await registry.createQuery(sql, 100).next();
  return (res.result || []).map((r) => r.deviceId).sort();
}

async function run() {
  assert(args.prefix && args.devices, '--prefix and --devices are required');
  const P = args.prefix;
  const [A, B, C] = args.devices.split(',');
  assert(C, '--devices wants three device ids');
  const { checks, check } = checkRunner();
  const lowId = P + '-low';
  const highId = P + '-high';
  const probeId = P + '-probe';
  const appliedLow = "SELECT deviceId FROM devices WHERE configurations.[[" + lowId + "]].status = 'Applied'";
  const targetedLow = "SELECT deviceId FROM devices WHERE configurations.[[" + lowId + "]].status = 'Targeted'";
  const low = {
    id: lowId,
    labels: { run: P, purpose: 'compat' },
    content: { deviceContent: { 'properties.desired.cfgTest': { owner: 'low', run: P } } },
    targetCondition: "tags.cfg.run = '" + P + "'",
    priority: 1,
    metrics: { queries: { lowApplied: appliedLow } },
  };
  const high = {
    id: highId,
    content: { deviceContent: { 'properties.desired.cfgTest': { owner: 'high', run: P } } },
    targetCondition: "tags.cfg.ring = 'early' AND tags.cfg.run = '" + P + "'",
    priority: 10,
  };
  let lowEtag;

  // desiredOwner waits until device id's desired cfgTest has owner.
  const desiredOwner = (id, owner) => waitFor(id + "'s desired cfgTest.owner = " + owner, APPLY, async () => {
    const t = await twinOf(id);
    const got = t.properties.desired.cfgTest;
    if (!got || got.owner !== owner || got.run !== P) {
      throw new Error('desired.cfgTest is ' + JSON.stringify(got));
    }
    return t;
  });
  const statusIn = (twin, id) => twin.configurations && twin.configurations[id] && twin.configurations[id].status;

  await check('Registry.updateTwin tags the three devices', async () => {
    await registry.updateTwin(A, { tags: { cfg: { run: P, ring: 'early' } } }, '*');
    await registry.updateTwin(B, { tags: { cfg: { run: P } } }, '*');
  });

  await check('Registry.addConfiguration', async () => {
    const res = await registry.addConfiguration(Object.assign({}, low));
    const c = res.responseBody;
    assert(res.httpResponse.statusCode === 200 || res.httpResponse.statusCode === 201, 'HTTP ' + res.httpResponse.statusCode);
    assert(c.id === lowId, 'id ' + JSON.stringify(c.id));
    assert(c.schemaVersion === '1.0', 'schemaVersion ' + JSON.stringify(c.schemaVersion) + " (the SDK sent '1.0')");
    assert(same(c.content, low.content), 'content ' + JSON.stringify(c.content));
    assert(c.targetCondition === low.targetCondition, 'targetCondition ' + JSON.stringify(c.targetCondition));
    assert(c.priority === 1, 'priority ' + JSON.stringify(c.priority));
    assert(same(c.labels, low.labels), 'labels ' + JSON.stringify(c.labels));
    assert(c.metrics && same(c.metrics.queries, low.metrics.queries), 'metrics ' + JSON.stringify(c.metrics));
    assert(typeof c.etag === 'string' && c.etag !== '', 'etag ' + JSON.stringify(c.etag));
    assert(!isNaN(Date.parse(c.createdTimeUtc)), 'createdTimeUtc ' + JSON.stringify(c.createdTimeUtc));
    lowEtag = c.etag;
    return { status: res.httpResponse.statusCode, etag: c.etag, createdTimeUtc: c.createdTimeUtc };
  });

  await check('Registry.addConfiguration of an existing id fails and changes nothing', async () => {
    let err;
    try {
      await registry.addConfiguration(Object.assign({}, low, { priority: 99 }));
    } catch (e) {
      err = lib.describeError(e);
    }
    assert(err, 'the second addConfiguration succeeded');
    assert(err.statusCode === 409, 'expected HTTP 409 (Conflict), got ' + JSON.stringify(err));
    const c = (await registry.getConfiguration(lowId)).responseBody;
    assert(c.priority === 1 && c.etag === lowEtag, 'after the refused add: priority ' + c.priority + ', etag ' + c.etag);
    return err;
  });

  await check('Registry.getConfiguration', async () => {
    const c = (await registry.getConfiguration(lowId)).responseBody;
    assert(c.id === lowId && c.etag === lowEtag, 'id ' + c.id + ' etag ' + c.etag);
    assert(same(c.content, low.content) && c.targetCondition === low.targetCondition, JSON.stringify(c));
    return { etag: c.etag };
  });

  await check('Registry.getConfiguration of an unknown id is 404', () =>
    expectHTTPError(registry.getConfiguration(P + '-missing'), 404));

  await check('the configuration reaches both targeted twins as desired properties', async () => {
    const ta = await desiredOwner(A, 'low');
    const tb = await desiredOwner(B, 'low');
    const tc = await twinOf(C);
    assert(!tc.properties.desired.cfgTest, 'the untagged device got ' + JSON.stringify(tc.properties.desired.cfgTest));
    assert(statusIn(ta, lowId) === 'Applied' && statusIn(tb, lowId) === 'Applied',
      'configurations: ' + JSON.stringify([ta.configurations, tb.configurations]));
    assert(!statusIn(tc, lowId), 'the untagged device has ' + JSON.stringify(tc.configurations));
    return { configurations: ta.configurations };
  });

  await check('systemMetrics targetedCount/appliedCount and the custom metric count 2', () =>
    waitFor('targetedCount 2, appliedCount 2, lowApplied 2', APPLY, async () => {
      const c = (await registry.getConfiguration(lowId)).responseBody;
      const sys = (c.systemMetrics && c.systemMetrics.results) || {};
      const custom = (c.metrics && c.metrics.results) || {};
      if (sys.targetedCount !== 2 || sys.appliedCount !== 2 || custom.lowApplied !== 2) {
        throw new Error('systemMetrics ' + JSON.stringify(c.systemMetrics) + ' metrics ' + JSON.stringify(c.metrics));
      }
      return { systemMetrics: c.systemMetrics, metrics: c.metrics };
    }));

  await check("createQuery configurations.[[id]].status = 'Applied'", async () => {
    const got = await queryIds(appliedLow);
    assert(same(got, [A, B].sort()), 'found ' + JSON.stringify(got));
    return { deviceIds: got };
  });

  await check('a higher-priority configuration wins on the overlapping device', async () => {
    const c = (await registry.addConfiguration(Object.assign({}, high))).responseBody;
    assert(c.id === highId && c.priority === 10, JSON.stringify(c));
    const ta = await desiredOwner(A, 'high');
    const tb = await twinOf(B);
    assert(tb.properties.desired.cfgTest.owner === 'low', "B's cfgTest " + JSON.stringify(tb.properties.desired.cfgTest));
    await waitFor("A Targeted (not Applied) by the lower-priority configuration", APPLY, async () => {
      const t = await twinOf(A);
      if (statusIn(t, highId) !== 'Applied' || statusIn(t, lowId) !== 'Targeted') {
        throw new Error('configurations ' + JSON.stringify(t.configurations));
      }
      return true;
    });
    return { configurations: ta.configurations };
  });

  await check("queries and metrics see the overlap: A Targeted, B Applied", async () => {
    const applied = await queryIds(appliedLow);
    const targeted = await queryIds(targetedLow);
    assert(same(applied, [B]) && same(targeted, [A]), 'Applied ' + JSON.stringify(applied) + ' Targeted ' + JSON.stringify(targeted));
    return waitFor('targetedCount 2, appliedCount 1', APPLY, async () => {
      const c = (await registry.getConfiguration(lowId)).responseBody;
      const sys = (c.systemMetrics && c.systemMetrics.results) || {};
      if (sys.targetedCount !== 2 || sys.appliedCount !== 1 || c.metrics.results.lowApplied !== 1) {
        throw new Error('systemMetrics ' + JSON.stringify(c.systemMetrics) + ' metrics ' + JSON.stringify(c.metrics));
      }
      return { systemMetrics: c.systemMetrics };
    });
  });

  await check('Registry.updateConfiguration with a stale etag is 412', async () => {
    const c = (await registry.getConfiguration(highId)).responseBody;
    c.etag = c.etag === 'c3RhbGU=' ? 'b2xk' : 'c3RhbGU=';
    c.priority = 0;
    return expectHTTPError(registry.updateConfiguration(c), 412);
  });

  await check('Registry.updateConfiguration with its etag lowers the priority: the other one wins again', async () => {
    const c = (await registry.getConfiguration(highId)).responseBody;
    const before = c.etag;
    c.priority = 0;
    const res = await registry.updateConfiguration(c);
    const u = res.responseBody;
    assert(u.priority === 0, 'priority ' + u.priority);
    assert(u.etag && u.etag !== before, 'etag ' + before + ' -> ' + u.etag);
    assert(Date.parse(u.lastUpdatedTimeUtc) >= Date.parse(u.createdTimeUtc), 'lastUpdatedTimeUtc ' + u.lastUpdatedTimeUtc + ' createdTimeUtc ' + u.createdTimeUtc);
    await desiredOwner(A, 'low');
    return { etag: u.etag, lastUpdatedTimeUtc: u.lastUpdatedTimeUtc };
  });

  await check('Registry.updateConfiguration forced (If-Match *) with no etag', async () => {
    const c = (await registry.getConfiguration(highId)).responseBody;
    delete c.etag;
    c.labels = { forced: 'yes' };
    const u = (await registry.updateConfiguration(c, true)).responseBody;
    assert(same(u.labels, { forced: 'yes' }), 'labels ' + JSON.stringify(u.labels));
    const g = (await registry.getConfiguration(highId)).responseBody;
    assert(same(g.labels, { forced: 'yes' }) && g.etag === u.etag, JSON.stringify(g));
    return { etag: u.etag };
  });

  await check('Registry.getConfigurations lists both', async () => {
    const list = (await registry.getConfigurations()).responseBody;
    assert(Array.isArray(list), 'not an array: ' + JSON.stringify(list));
    const ours = list.filter((c) => c.id === lowId || c.id === highId).map((c) => c.id).sort();
    assert(same(ours, [highId, lowId]), 'found ' + JSON.stringify(ours) + ' among ' + list.length);
    return { count: list.length };
  });

  await check('Registry.removeConfiguration', async () => {
    await registry.removeConfiguration(highId);
    await registry.removeConfiguration(lowId);
    await expectHTTPError(registry.getConfiguration(lowId), 404);
    return expectHTTPError(registry.removeConfiguration(lowId), 404);
  });

  await check('a removed configuration stops applying and rolls nothing back', async () => {
    // C now matches the removed configuration's condition; a new one
    // targeting only C shows when the hub has applied after the removal.
    await registry.updateTwin(C, { tags: { cfg: { run: P, ring: 'probe' } } }, '*');
    await registry.addConfiguration({
      id: probeId,
      content: { deviceContent: { 'properties.desired.cfgProbe': { run: P } } },
      targetCondition: "tags.cfg.ring = 'probe' AND tags.cfg.run = '" + P + "'",
      priority: 0,
    });
    const tc = await waitFor("C's desired cfgProbe", APPLY, async () => {
      const t = await twinOf(C);
      if (!t.properties.desired.cfgProbe) {
        throw new Error('desired ' + JSON.stringify(t.properties.desired));
      }
      return t;
    });
    assert(!tc.properties.desired.cfgTest, 'the removed configuration still applied: ' + JSON.stringify(tc.properties.desired.cfgTest));
    for (const id of [A, B]) {
      const t = await twinOf(id);
      assert(t.properties.desired.cfgTest && t.properties.desired.cfgTest.owner === 'low',
        id + "'s desired cfgTest after the removal: " + JSON.stringify(t.properties.desired.cfgTest));
    }
    await registry.removeConfiguration(probeId);
  });
  return checks;
}

run().then((checks) => {
  const ok = checks.every((c) => c.ok);
  process.stdout.write(JSON.stringify({ ok, checks }) + '\n', () => process.exit(ok ? 0 : 1));
}).catch(lib.fail);
