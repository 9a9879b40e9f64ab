'use strict';
// Shared helpers for the compatibility scripts: argument parsing, a hard
// timeout, JSON output on stdout and error reporting on stderr. The scripts
// never print keys or tokens; connection strings come from the environment.

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      throw new Error('unexpected argument ' + JSON.stringify(a));
    }
    const eq = a.indexOf('=');
    if (eq > 0) {
      args[a.slice(2, eq)] = a.slice(eq + 1);
    } else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
      args[a.slice(2)] = argv[++i];
    } else {
      args[a.slice(2)] = 'true';
    }
  }
  return args;
}

function env(name) {
  const v = process.env[name];
  if (!v) {
    fail(new Error('environment variable ' + name + ' is not set'));
  }
  return v;
}

// emit prints one JSON line on stdout.
function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function log(msg) {
  process.stderr.write('[' + new Date().toISOString() + '] ' + msg + '\n');
}

// describeError flattens an SDK error into plain data: the class name the SDK
// chose, its message, and for HTTP errors the status code and body.
function describeError(err) {
  if (!err) {
    return null;
  }
  const d = {
    name: err.constructor ? err.constructor.name : typeof err,
    message: String(err.message || err),
  };
  if (err.response && err.response.statusCode !== undefined) {
    d.statusCode = err.response.statusCode;
  }
  if (err.responseBody !== undefined) {
    d.body = String(err.responseBody);
  }
  if (err.transportError) {
    d.transportError = describeError(err.transportError);
  }
  return d;
}

let exiting = false;

// fail reports err on stderr and stdout and exits 1.
function fail(err) {
  if (exiting) {
    return;
  }
  exiting = true;
  const d = describeError(err);
  log('FAIL: ' + (err && err.stack ? err.stack : JSON.stringify(d)));
  emit({ ok: false, error: d });
  process.exit(1);
}

// finish prints the result line and exits 0 once stdout is flushed.
function finish(result) {
  if (exiting) {
    return;
  }
  exiting = true;
  process.stdout.write(JSON.stringify(Object.assign({ ok: true }, result)) + '\n', () => process.exit(0));
}

// hardTimeout makes sure the script never outlives the test that runs it.
function hardTimeout(seconds) {
  const t = setTimeout(() => fail(new Error('hard timeout: script still running after ' + seconds + ' s')), seconds * 1000);
  t.unref();
  // An unref'ed timer does not keep the process alive; a pending SDK call does,
  // and the timer then still fires.
  return t;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
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
      log('check ' + name + ' failed: ' + (err.stack || err));
      checks.push({ name, ok: false, error: describeError(err) });
    }
  }
  return { checks, check };
}

// expectHTTPError wants the call to fail with HTTP status and, when code is
// given, IoT Hub's error code in the body.
async function expectHTTPError(promise, status, code) {
  let v;
  try {
    v = await promise;
  } catch (err) {
    const d = describeError(err);
    assert(d.statusCode === status, 'expected HTTP ' + status + ', got ' + JSON.stringify(d));
    assert(!code || (d.body && d.body.indexOf(code) >= 0), 'expected ' + code + ' in the error body, got ' + JSON.stringify(d));
    return d;
  }
  const got = v && v.httpResponse && v.httpResponse.statusCode;
  throw new Error('expected HTTP ' + status + ', the call succeeded (HTTP ' + got + ')');
}

// waitFor polls fn (every 200 ms) until it returns a truthy value, which it
// returns; after seconds it throws, naming what it waited for and the last
// value or error seen.
async function waitFor(what, seconds, fn) {
  const deadline = Date.now() + seconds * 1000;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) {
        return v;
      }
      last = v;
    } catch (err) {
      last = describeError(err);
    }
    if (Date.now() > deadline) {
      throw new Error('no ' + what + ' within ' + seconds + ' s (last: ' + JSON.stringify(last) + ')');
    }
    await sleep(200);
  }
}

process.on('unhandledRejection', (err) => fail(err));
process.on('uncaughtException', (err) => fail(err));

module.exports = {
  parseArgs, env, emit, log, describeError, fail, finish, hardTimeout, sleep,
  assert, checkRunner, expectHTTPError, waitFor,
};
