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

process.on('unhandledRejection', (err) => fail(err));
process.on('uncaughtException', (err) => fail(err));

module.exports = { parseArgs, env, emit, log, describeError, fail, finish, hardTimeout, sleep };
