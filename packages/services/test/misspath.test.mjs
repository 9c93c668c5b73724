// The miss path as restructured for cold reads (issue 13): request targets resolved once per
// path, no async wrapper in the single-flight load, parsed KV v2 paths kept, the token taken
// without an await, the request timeout given to Node. Against the real OpenBao (directly,
// through a TCP proxy counting connections, or through a recording HTTP server), plus pure
// unit tests of the cache and path pieces.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Entry,
  InvalidPath,
  SecretCache,
  VaultApi,
  VaultUnavailable,
  loadSettings,
  parseKV2,
} from '@maily/services/vault';
import { ADDR, TOKEN, recordingLogger, rootClient, startHttpServer, startProxy, uniqueName } from '../scripts/testkit.mjs';

function client(addr, settings = {}) {
  return rootClient({ addr, retryBaseDelay: 0.01, retryMaxDelay: 0.02, ...settings });
}

// ------------------------------------------------------------------ request targets
test('a path with spaces and non-ASCII letters is sent percent-encoded as the URL parser does, every time', async (t) => {
  const writer = rootClient();
  t.after(() => writer.close());
  const path = `maily/data/${uniqueName('miss')}/café au lait/日本`;
  await writer.putSecret(path, { a: 'one' }, { cas: 0 });
  const recorder = await startHttpServer(() => 'proxy');
  t.after(() => recorder.stop());
  const c = client(recorder.addr);
  t.after(() => c.close());
  for (let i = 0; i < 3; i++) {
    c.invalidate(path);
    assert.deepEqual(await c.getSecret(path), { a: 'one' });
  }
  const expected = new URL(path, `${ADDR}/v1/`).pathname;
  const reads = recorder.requests.filter((r) => r.url !== '/v1/auth/token/lookup-self');
  assert.deepEqual(
    reads.map((r) => r.url),
    [expected, expected, expected],
  );
  assert.match(expected, /caf%C3%A9%20au%20lait\/%E6%97%A5%E6%9C%AC$/);
});

test('query parameters go with their own request only, never into the target kept for the path', async (t) => {
  const writer = rootClient();
  t.after(() => writer.close());
  const path = `maily/data/${uniqueName('params')}`;
  await writer.putSecret(path, { v: 1 }, { cas: 0 });
  await writer.putSecret(path, { v: 2 }, { cas: 1 });
  const recorder = await startHttpServer(() => 'proxy');
  t.after(() => recorder.stop());
  const c = client(recorder.addr);
  t.after(() => c.close());
  assert.equal((await c.api.read(path, { version: '1' })).data.data.v, 1);
  assert.equal((await c.api.read(path)).data.data.v, 2);
  assert.equal((await c.api.read(path, { version: '1' })).data.data.v, 1);
  const urls = recorder.requests.map((r) => r.url).filter((u) => u.includes('/params-'));
  assert.equal(urls.length, 3);
  assert.ok(urls[0].endsWith('?version=1'), urls[0]);
  assert.ok(!urls[1].includes('?'), urls[1]);
  assert.ok(urls[2].endsWith('?version=1'), urls[2]);
});

test('misses at concurrency 8 make one request each, on at most 8 kept-alive connections', async (t) => {
  const writer = rootClient();
  t.after(() => writer.close());
  const base = uniqueName('pool');
  const paths = Array.from({ length: 16 }, (_, i) => `maily/data/${base}/s${i}`);
  for (const p of paths) await writer.putSecret(p, { p }, { cas: 0 });
  const proxy = await startProxy();
  t.after(() => proxy.stop());
  const c = client(proxy.addr);
  t.after(() => c.close());
  await c.getSecret(paths[0]); // log in
  const before = c.api.stats.requests;
  let next = 0;
  const worker = async (w) => {
    for (let k = 0; next < 64; k++) {
      next += 1;
      const p = paths[(w + 8 * k) % 16];
      c.invalidate(p);
      assert.deepEqual(await c.getSecret(p), { p });
    }
  };
  await Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
  assert.equal(c.api.stats.requests - before, 64, 'every miss was one request');
  assert.ok(proxy.accepted <= 8, `${proxy.accepted} connections for 8 concurrent readers`);
});

test('a redirect loop ends after four requests in a 508, and is not retried', async (t) => {
  const node = await startHttpServer((req) => ({ status: 307, headers: { Location: `/again${req.url}` } }));
  t.after(() => node.stop());
  const c = client(node.addr, { maxRetries: 3 });
  t.after(() => c.close());
  await assert.rejects(c.api.request('GET', 'maily/data/config', { token: TOKEN }), (e) => {
    assert.ok(e instanceof VaultUnavailable, String(e));
    assert.match(e.message, /HTTP 508/);
    assert.ok(!e.message.includes(TOKEN));
    return true;
  });
  assert.equal(node.requests.length, 4, 'the first request and three redirects followed');
  assert.ok(node.requests.every((r) => r.headers['x-vault-token'] === TOKEN), 'same origin: the token followed');
});

test('the request timeout is the socket inactivity timeout of the request: a GET that hangs is resent, and the client recovers', async (t) => {
  let n = 0;
  const server = await startHttpServer((req) => (req.url.includes('/data/config') && ++n === 1 ? 'hang' : 'proxy'));
  t.after(() => server.stop());
  const c = client(server.addr, { timeout: 0.2, maxRetries: 2 });
  t.after(() => c.close());
  assert.equal((await c.getConfig()).db_host, '127.0.0.1');
  assert.equal(n, 2, 'the hung GET was sent again');
  c.invalidate();
  assert.equal((await c.getConfig()).db_host, '127.0.0.1', 'a later miss works on the pool');
  assert.equal(n, 3);
});

// ------------------------------------------------------------------ the token without an await
test('tokens.ready() gives the current token only while it needs no refresh', async (t) => {
  const settings = loadSettings({ addr: 'http://127.0.0.1:1', renewFraction: 2 / 3 }, {});
  let logins = 0;
  const method = {
    name: 'fixed',
    canRelogin: true,
    async login() {
      logins += 1;
      // a 1 s token obtained 5 s ago: due for renewal at once
      return { value: `tok-${logins}`, ttl: 1, renewable: false, obtained: performance.now() - 5000, keep: false, retryAfter: 0 };
    },
  };
  const api = new VaultApi(settings, { authMethod: method, logger: recordingLogger() });
  t.after(() => api.close());
  assert.equal(api.tokens.ready(), null, 'no token before the first login');
  assert.equal(await api.tokens.get(), 'tok-1');
  assert.equal(api.tokens.ready(), null, 'a token due for renewal is not handed out without a refresh');
  assert.equal(await api.tokens.get(), 'tok-2', 'get() refreshed it');

  const root = rootClient();
  t.after(() => root.close());
  assert.equal(root.api.tokens.ready(), null);
  await root.getConfig();
  assert.equal(root.api.tokens.ready(), TOKEN, 'a root token (no TTL) never needs a refresh');
});

// ------------------------------------------------------------------ single-flight load (pure)
test('SecretCache.load: one loader for concurrent callers, stored on success, forgotten on failure', async () => {
  const cache = new SecretCache(60, 3600);
  let calls = 0;
  let release;
  const gate = new Promise((r) => (release = r));
  const loader = async () => {
    calls += 1;
    await gate;
    return new Entry({ a: 1 }, 3);
  };
  const a = cache.load('m/data/x', loader);
  const b = cache.load('m/data/x', loader);
  assert.equal(a, b, 'the second caller shares the first load');
  release();
  assert.equal((await a).version, 3);
  assert.equal(calls, 1);
  assert.equal(cache.peek('m/data/x').version, 3, 'stored');
  const failing = () => Promise.reject(new Error('boom'));
  await assert.rejects(cache.load('m/data/y', failing), /boom/);
  assert.equal(cache.peek('m/data/y'), undefined, 'nothing stored for a failed load');
  assert.equal((await cache.load('m/data/y', async () => new Entry({ b: 2 }, 1))).value.b, 2, 'a failed load is not kept in flight');
});

test('SecretCache.load: a loader that throws synchronously is a rejection, and the next load runs again', async () => {
  const cache = new SecretCache(60, 3600);
  const p = cache.load('m/data/z', () => {
    throw new Error('sync');
  });
  assert.ok(p instanceof Promise);
  await assert.rejects(p, /sync/);
  assert.equal((await cache.load('m/data/z', async () => new Entry({ ok: true }, 1))).value.ok, true);
});

test('Entry copies out flat values shallowly and nested ones deeply', () => {
  const flat = new Entry({ a: 1, b: 'x', c: null }, 1);
  const out = flat.copyOut();
  assert.deepEqual(out, { a: 1, b: 'x', c: null });
  assert.notEqual(out, flat.value);
  const nested = new Entry({ a: 1, inner: { b: [1, 2] } }, 1);
  const copy = nested.copyOut();
  copy.inner.b.push(3);
  assert.deepEqual(nested.value.inner.b, [1, 2], 'the stored value is untouched');
});

// ------------------------------------------------------------------ parsed paths (pure)
test('parseKV2 keeps what it parsed: the same frozen answer each time, and invalid paths still refused', () => {
  const a = parseKV2('maily/data/team/db');
  const b = parseKV2('maily/data/team/db');
  assert.equal(a, b);
  assert.ok(Object.isFrozen(a));
  assert.deepEqual({ ...a }, { mount: 'maily', name: 'team/db', data: 'maily/data/team/db', metadata: 'maily/metadata/team/db' });
  assert.equal(parseKV2('sys/mounts'), null);
  assert.equal(parseKV2('sys/mounts'), null);
  for (let i = 0; i < 2; i++) {
    assert.throws(() => parseKV2('maily/data/../x'), InvalidPath);
    assert.throws(() => parseKV2('maily/data/a?b'), InvalidPath);
  }
});
