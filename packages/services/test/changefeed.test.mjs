// The change feed (beacon) of the TypeScript client against the real OpenBao: requests are
// counted at the HTTP layer (a recording proxy in front of the server, startHttpServer),
// never by mocking Vault. Each test uses a beacon of its own (MAILY_SECRETS_CHANGE_FEED as a
// name under the mount) so that other writers on the same server do not move it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigurationError, beaconPath, loadSettings, MAX_BUMP_ATTEMPTS } from '@maily/services/vault';
import { ADDR, TOKEN, rootClient, recordingLogger, startHttpServer, uniqueName, waitFor, sleep } from '../scripts/testkit.mjs';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const CANARY = `canary-${uniqueName('feed')}-value`;

const feedName = () => uniqueName('_changes-ts');

async function fresh(writer, value, prefix = 'ts-feed') {
  const path = `maily/data/${uniqueName(prefix)}`;
  await writer.putSecret(path, value, { cas: 0 });
  return path;
}

/** Request lines (`GET /v1/...`) seen by the recording proxy from index `from` on. */
function lines(server, from = 0) {
  return server.requests.slice(from).map((r) => `${r.method} ${r.url}`);
}

function baoBinary() {
  const candidates = [process.env.MAILY_BAO_BINARY, join(REPO, '.venv', 'bin', 'bao')];
  for (const dir of (process.env.PATH ?? '').split(delimiter)) if (dir) candidates.push(join(dir, 'bao'));
  for (const c of candidates) {
    if (!c) continue;
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  assert.fail('no bao binary: run `make install` (.venv/bin/bao) or set MAILY_BAO_BINARY');
}

/** `bao kv put -mount=maily -cas=<cas> <name> value=-`: the value on stdin, the token in the environment. */
function baoKvPut(name, value, cas) {
  const env = { ...process.env, BAO_ADDR: ADDR, BAO_TOKEN: TOKEN, VAULT_ADDR: ADDR, VAULT_TOKEN: TOKEN };
  return new Promise((res, rej) => {
    const p = spawn(baoBinary(), ['kv', 'put', '-mount=maily', `-cas=${cas}`, name, 'value=-'], {
      env,
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let err = '';
    p.stderr.on('data', (b) => (err += b));
    p.on('error', rej);
    p.on('exit', (code) => (code === 0 ? res() : rej(new Error(`bao kv put exited ${code}: ${err.slice(0, 300)}`))));
    p.stdin.end(value);
  });
}

test('change feed: settings (default beacon, off, a name, a KV path; invalid values name the variable)', () => {
  const d = loadSettings({}, {});
  assert.equal(d.changeFeed, undefined);
  assert.equal(d.listenerFullPollInterval, 300);
  const beacon = (env, extra = {}) => beaconPath(loadSettings(extra, env))?.data ?? null;
  assert.equal(beacon({}), 'maily/data/_changes');
  assert.equal(beacon({ MAILY_SECRETS_MOUNT: 'kv2' }), 'kv2/data/_changes');
  for (const off of ['off', 'OFF', 'false', '0', 'no', 'none', 'disabled']) assert.equal(beacon({ MAILY_SECRETS_CHANGE_FEED: off }), null, off);
  assert.equal(beacon({ MAILY_SECRETS_CHANGE_FEED: 'on' }), 'maily/data/_changes');
  assert.equal(beacon({ MAILY_SECRETS_CHANGE_FEED: 'feed' }), 'maily/data/feed');
  assert.equal(beacon({ MAILY_SECRETS_CHANGE_FEED: '/kv/data/feed/_changes/' }), 'kv/data/feed/_changes');
  assert.equal(loadSettings({}, { MAILY_SECRETS_LISTENER_FULL_POLL_INTERVAL: '60' }).listenerFullPollInterval, 60);
  assert.equal(rootClient().changeFeed.beacon.data, 'maily/data/_changes');
  assert.equal(rootClient({ changeFeed: 'off' }).changeFeed, null);
  for (const [name, raw] of [
    ['MAILY_SECRETS_CHANGE_FEED', '../x'],
    ['MAILY_SECRETS_CHANGE_FEED', 'x?y'],
    ['MAILY_SECRETS_LISTENER_FULL_POLL_INTERVAL', '0'],
    ['MAILY_SECRETS_LISTENER_FULL_POLL_INTERVAL', '5m'],
  ]) {
    assert.throws(() => loadSettings({}, { [name]: raw }), (e) => e instanceof ConfigurationError && e.variable === name, `${name}=${raw}`);
  }
});

test('change feed: N watched paths make one beacon request per interval and none per path', async (t) => {
  const N = 40;
  const changeFeed = feedName();
  const writer = rootClient({ changeFeed });
  t.after(() => writer.close());
  const paths = [];
  for (let i = 0; i < N; i++) paths.push(await fresh(writer, { i }));

  const proxy = await startHttpServer(); // every request, proxied to the real OpenBao
  t.after(() => proxy.stop());
  const c = rootClient({ addr: proxy.addr, changeFeed, listenerInterval: 0.05 });
  t.after(() => c.close());
  for (const p of paths) await c.onChange(p, () => {});
  const poller = c.beaconPoller();
  assert.ok(poller, 'the feed is on by default');
  assert.equal(poller.interval, 0.05);
  for (const p of paths) assert.equal(c.watcher(p).mode, 'beacon');

  await waitFor(() => poller.polls >= 2);
  await poller.idle();
  const mark = proxy.requests.length;
  const polls = poller.polls;
  await waitFor(() => poller.polls >= polls + 20);
  await poller.idle();
  const window = lines(proxy, mark);
  const done = poller.polls - polls;
  const beaconMeta = `GET /v1/maily/metadata/${changeFeed}`;
  assert.equal(window.filter((l) => l === beaconMeta).length, done, 'one beacon metadata request per poll');
  assert.deepEqual(
    window.filter((l) => l !== beaconMeta),
    [],
    `nothing else: no per-path request for ${N} watched paths (${done} polls)`,
  );
  for (const p of paths) assert.equal(c.watcher(p).polls, 0, 'no per-path poll before the full-poll interval');

  // The same watchers with the feed off: every path is polled every interval (what the feed saves).
  const off = rootClient({ addr: proxy.addr, changeFeed: 'off', listenerInterval: 0.05 });
  t.after(() => off.close());
  for (const p of paths) await off.onChange(p, () => {});
  assert.equal(off.beaconPoller(), null);
  const mark2 = proxy.requests.length;
  const base = paths.map((p) => off.watcher(p).polls);
  // polls counts started polls: the third started means the second's request was seen
  await waitFor(() => paths.every((p, i) => off.watcher(p).polls >= base[i] + 3));
  const perPath = lines(proxy, mark2).filter((l) => l.startsWith('GET /v1/maily/metadata/ts-feed-')).length;
  assert.ok(perPath >= 2 * N, `feed off: ${perPath} per-path metadata requests for ${N} paths in two intervals`);
});

test('change feed: a write by another client reaches a listener through the beacon (missing beacon = version 0)', async (t) => {
  const changeFeed = feedName();
  const writer = rootClient({ changeFeed });
  const plain = rootClient({ changeFeed: 'off' });
  t.after(() => writer.close());
  t.after(() => plain.close());
  const path = await fresh(plain, { token: 'v1' }); // created without a bump
  const proxy = await startHttpServer();
  t.after(() => proxy.stop());
  const c = rootClient({ addr: proxy.addr, changeFeed, listenerInterval: 0.05 });
  t.after(() => c.close());
  const got = [];
  await c.onChange(path, (v) => got.push(v));
  const w = c.watcher(path);
  const poller = c.beaconPoller();
  await waitFor(() => poller.polls >= 2);
  assert.equal(poller.version, 0, 'a beacon that does not exist yet (404) is version 0');
  await poller.idle();
  const mark = proxy.requests.length;

  await writer.putSecret(path, { token: 'v2' }, { cas: 1 }); // creates the beacon (cas 0) with path: 2
  await waitFor(() => got.length === 1);
  assert.deepEqual(got, [{ token: 'v2' }]);
  assert.deepEqual(await c.getSecret(path), { token: 'v2' }, 'the cache was updated');
  assert.equal(w.beaconReads, 1);
  assert.equal(w.polls, 0, 'not found by a per-path poll');
  const name = path.slice('maily/data/'.length);
  const seen = lines(proxy, mark);
  assert.deepEqual(seen.filter((l) => l.includes(name)), [`GET /v1/maily/data/${name}`], 'the path read once, its data only');
  assert.equal(seen.filter((l) => l === `GET /v1/maily/data/${changeFeed}`).length, 1, 'the beacon data read once, when it moved');

  await sleep(300); // several more polls: once per version
  assert.equal(got.length, 1);
  await writer.putSecret(path, { token: 'v3' }, { cas: 2 });
  await waitFor(() => got.length === 2);
  assert.deepEqual(got[1], { token: 'v3' });
  assert.equal(w.version, 3);
  assert.equal((await writer.api.kvRead(writer.changeFeed.beacon)).data[path], 3);
});

test('change feed: a bao kv put around us is caught by the full poll', async (t) => {
  const changeFeed = feedName();
  const c = rootClient({ changeFeed, listenerInterval: 0.05, listenerFullPollInterval: 0.2 });
  const plain = rootClient({ changeFeed: 'off' });
  t.after(() => c.close());
  t.after(() => plain.close());
  const path = await fresh(plain, { value: 'before' });
  const got = [];
  await c.onChange(path, (v) => got.push(v));
  const w = c.watcher(path);
  assert.equal(w.mode, 'beacon');
  assert.equal(w.period, 0.2, 'the full-poll interval');
  await baoKvPut(path.slice('maily/data/'.length), CANARY, 1); // the bao CLI: no beacon bump
  await waitFor(() => got.length === 1);
  assert.deepEqual(got, [{ value: CANARY }]);
  assert.equal(w.beaconReads, 0, 'not through the beacon');
  assert.ok(w.polls >= 1);
  const beacon = await c.api.kvCurrentVersion(c.changeFeed.beacon);
  assert.equal(beacon, 0, 'bao kv put did not bump the beacon');
});

test('change feed: concurrent bumps from several clients lose no entry', async (t) => {
  const changeFeed = feedName();
  const root = rootClient({ changeFeed });
  t.after(() => root.close());
  // someone else's entry, there before us: kept
  await root.api.kvWrite(root.changeFeed.beacon, { 'other/data/kept': 7 }, 0);
  const clients = Array.from({ length: 8 }, () => rootClient({ changeFeed }));
  t.after(() => Promise.all(clients.map((c) => c.close())));
  const writes = await Promise.all(
    clients.map(async (c, k) => {
      const mine = [];
      for (let i = 0; i < 4; i++) {
        const path = `maily/data/${uniqueName(`ts-bump-${k}`)}`;
        mine.push([path, await c.putSecret(path, { k, i }, { cas: 0 })]);
        mine.push([path, await c.putSecret(path, { k, i, again: true }, { cas: 1 })]);
      }
      return mine;
    }),
  );
  const entries = (await root.api.kvRead(root.changeFeed.beacon)).data;
  const missing = [];
  for (const [path, version] of writes.flat()) if (!(entries[path] >= version)) missing.push(`${path}: ${entries[path]} < ${version}`);
  assert.deepEqual(missing, []);
  for (const [path] of writes.flat()) assert.equal(entries[path], 2);
  assert.equal(entries['other/data/kept'], 7);
  const failures = clients.reduce((n, c) => n + c.changeFeed.failures, 0);
  const conflicts = clients.reduce((n, c) => n + c.changeFeed.conflicts, 0);
  assert.equal(failures, 0, `no bump given up (${conflicts} CAS conflicts retried, at most ${MAX_BUMP_ATTEMPTS} attempts each)`);
});

test('change feed: a 403 on the beacon falls back to per-path polling (one warning); a denied bump never fails the write', async (t) => {
  const changeFeed = feedName();
  const root = rootClient({ changeFeed });
  t.after(() => root.close());
  const path = await fresh(root, { v: 1 });
  const name = path.slice('maily/data/'.length);
  const policy = uniqueName('ts-no-beacon');
  await root.api.request('PUT', `sys/policies/acl/${policy}`, {
    body: {
      policy: `path "maily/data/${name}" { capabilities = ["create", "update", "read"] }\npath "maily/metadata/${name}" { capabilities = ["read"] }\n`,
    },
  });
  t.after(() => root.api.request('DELETE', `sys/policies/acl/${policy}`));
  const tok = (await root.api.request('POST', 'auth/token/create', { body: { policies: [policy], ttl: '10m' } }))
    .body.auth.client_token;
  t.after(() => root.api.request('POST', 'auth/token/revoke', { body: { token: tok } }));

  const log = recordingLogger();
  const c = rootClient({ token: tok, changeFeed, listenerInterval: 0.05 }, { logger: log });
  t.after(() => c.close());
  const got = [];
  await c.onChange(path, (v) => got.push(v));
  const w = c.watcher(path);
  const poller = c.beaconPoller();
  await waitFor(() => w.mode === 'path');
  assert.equal(poller.denied, true);
  assert.equal(poller.interval, 300, 'the beacon is tried again every full-poll interval');
  const warnings = log.lines.filter((l) => l.level === 'warn' && /change feed/.test(l.message));
  assert.equal(warnings.length, 1);
  assert.match(warnings[0].message, /permission denied/);

  await root.putSecret(path, { v: CANARY }, { cas: 1 });
  await waitFor(() => got.length === 1);
  assert.deepEqual(got, [{ v: CANARY }], 'found by its own per-path poll');
  const polls = w.polls;
  await waitFor(() => w.polls >= polls + 3);

  // a write with this token: saved, the denied bump is a warning (once), without the value
  assert.equal(await c.putSecret(path, { v: `${CANARY}-3` }, { cas: 2 }), 3);
  assert.equal(await c.putSecret(path, { v: `${CANARY}-4` }, { cas: 3 }), 4);
  assert.deepEqual((await root.api.kvRead({ data: path })).data, { v: `${CANARY}-4` });
  const bumpWarnings = log.lines.filter((l) => l.level === 'warn' && /not recorded in/.test(l.message));
  assert.equal(bumpWarnings.length, 1, 'warned once');
  assert.match(bumpWarnings[0].message, new RegExp(`${path}.*${changeFeed}.*PermissionDenied`));
  assert.equal(c.changeFeed.failures, 2);
  for (const l of log.lines) assert.ok(!JSON.stringify(l).includes(CANARY) && !JSON.stringify(l).includes(tok), l.message);
  assert.equal((await root.api.kvRead(root.changeFeed.beacon)).data[path], 2, "root's write recorded, this token's were not");
});

test('change feed: a beacon denied, then granted, is followed again at the next full-poll interval', async (t) => {
  const changeFeed = feedName();
  const root = rootClient({ changeFeed });
  t.after(() => root.close());
  const path = await fresh(root, { v: 1 });
  const name = path.slice('maily/data/'.length);
  const policy = uniqueName('ts-later-beacon');
  const grant = (beacon) =>
    root.api.request('PUT', `sys/policies/acl/${policy}`, {
      body: {
        policy:
          `path "maily/data/${name}" { capabilities = ["read"] }\npath "maily/metadata/${name}" { capabilities = ["read"] }\n` +
          (beacon ? `path "maily/data/${changeFeed}" { capabilities = ["read"] }\npath "maily/metadata/${changeFeed}" { capabilities = ["read"] }\n` : ''),
      },
    });
  await grant(false);
  t.after(() => root.api.request('DELETE', `sys/policies/acl/${policy}`));
  const tok = (await root.api.request('POST', 'auth/token/create', { body: { policies: [policy], ttl: '10m' } })).body.auth.client_token;
  t.after(() => root.api.request('POST', 'auth/token/revoke', { body: { token: tok } }));
  const log = recordingLogger();
  const c = rootClient({ token: tok, changeFeed, listenerInterval: 0.05, listenerFullPollInterval: 0.3 }, { logger: log });
  t.after(() => c.close());
  const got = [];
  await c.onChange(path, (v) => got.push(v));
  const w = c.watcher(path);
  const poller = c.beaconPoller();
  await waitFor(() => poller.denied && w.mode === 'path');
  const denied = poller.polls;
  await waitFor(() => poller.polls >= denied + 2); // tried again (every 0.3 s), still denied: no second warning
  assert.equal(log.lines.filter((l) => l.level === 'warn' && /permission denied/.test(l.message)).length, 1);
  await grant(true);
  await waitFor(() => !poller.denied && w.mode === 'beacon');
  assert.equal(poller.interval, 0.05, 'polled every interval again');
  await root.putSecret(path, { v: 2 }, { cas: 1 });
  await waitFor(() => got.length === 1);
  assert.deepEqual(got, [{ v: 2 }]);
});

test('change feed: off polls each path as before and writes no beacon', async (t) => {
  const proxy = await startHttpServer();
  t.after(() => proxy.stop());
  const c = rootClient({ addr: proxy.addr, changeFeed: 'off', listenerInterval: 0.05 });
  const other = rootClient({ addr: proxy.addr, changeFeed: 'off' });
  t.after(() => c.close());
  t.after(() => other.close());
  const path = await fresh(c, { a: 1 });
  const got = [];
  await c.onChange(path, (v) => got.push(v));
  const w = c.watcher(path);
  assert.equal(w.mode, 'path');
  assert.equal(c.beaconPoller(), null);
  assert.equal(c.changeFeed, null);
  await waitFor(() => w.polls >= 2);
  await other.putSecret(path, { a: 2 }, { cas: 1 });
  await waitFor(() => got.length === 1);
  assert.deepEqual(got, [{ a: 2 }]);
  assert.deepEqual(lines(proxy).filter((l) => l.includes('_changes')), [], 'no beacon read or written');
});
