// Where the token goes, what is resent, which names are read, what errors say:
// against the real OpenBao, with small node:http servers on other loopback ports
// standing in for a redirecting node, a dropped connection or a slow proxy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import {
  VaultClient,
  AuthFailed,
  ConfigurationError,
  PermissionDenied,
  VaultRequestError,
  VaultUnavailable,
  VaultError,
  loadSettings,
  ENV_PREFIXES,
} from '@maily/services/vault';
import { ADDR, TOKEN, recordingLogger, rootClient, startHttpServer, uniqueName } from '../scripts/testkit.mjs';

function client(addr, settings = {}) {
  return new VaultClient({
    settings: { addr, token: TOKEN, authMethod: 'token', retryBaseDelay: 0.01, retryMaxDelay: 0.02, cacheTtl: 0, ...settings },
    logger: recordingLogger(),
  });
}

const tokenSeen = (server) => server.requests.filter((r) => r.headers['x-vault-token'] !== undefined);

// ------------------------------------------------------------------ 2. redirects
test('a 307 to another origin is refused: the token never reaches it', async (t) => {
  const recorder = await startHttpServer(() => ({ status: 200, json: { data: { stolen: true } } }));
  t.after(() => recorder.stop());
  const redirector = await startHttpServer((req) => ({ status: 307, headers: { Location: `${recorder.addr}${req.url}` } }));
  t.after(() => redirector.stop());
  for (const status of [307, 308]) {
    const r2 = await startHttpServer((req) => ({ status, headers: { Location: `${recorder.addr}${req.url}` } }));
    t.after(() => r2.stop());
    const c = client(r2.addr, { maxRetries: 3 });
    t.after(() => c.close());
    await assert.rejects(c.getConfig(), (e) => {
      assert.ok(e instanceof VaultRequestError, String(e));
      assert.match(e.message, new RegExp(`redirected .* to ${recorder.addr.replace(/[.]/g, '\\.')}, which is neither`));
      assert.match(e.message, /MAILY_SECRETS_CLUSTER_MEMBERS/);
      assert.ok(!e.message.includes(TOKEN));
      return true;
    });
    assert.equal(r2.requests.length, 1, 'a refused redirect is not retried');
  }
  // 127.0.0.1 and localhost are different origins; a member list naming someone else does not help
  const c = client(redirector.addr, { clusterMembers: [`http://localhost:${recorder.port}`, 'http://127.0.0.1:1'] });
  t.after(() => c.close());
  await assert.rejects(c.getConfig(), VaultRequestError);
  assert.equal(recorder.requests.length, 0, 'the other server saw no request at all');
  assert.deepEqual(tokenSeen(recorder), []);
});

test('a 307 to a configured cluster member is followed (MAILY_SECRETS_CLUSTER_MEMBERS)', async (t) => {
  const member = await startHttpServer(() => 'proxy'); // the "active node": relays to OpenBao
  t.after(() => member.stop());
  const standby = await startHttpServer((req) => ({ status: 307, headers: { Location: `${member.addr}${req.url}` } }));
  t.after(() => standby.stop());
  const s = loadSettings({ token: TOKEN, authMethod: 'token' }, { VAULT_ADDR: standby.addr, MAILY_SECRETS_CLUSTER_MEMBERS: ` ${member.addr}/ , http://127.0.0.1:1` });
  assert.deepEqual(s.clusterMembers, [member.addr, 'http://127.0.0.1:1']);
  const c = new VaultClient({ settings: s, logger: recordingLogger() });
  t.after(() => c.close());
  assert.equal((await c.getConfig()).db_host, '127.0.0.1');
  assert.ok(tokenSeen(member).length >= 2, 'lookup-self and the read went to the member');
  assert.ok(standby.requests.length >= 2);
  assert.throws(() => loadSettings({}, { MAILY_SECRETS_CLUSTER_MEMBERS: 'node2:8200' }), (e) => e instanceof ConfigurationError && e.variable === 'MAILY_SECRETS_CLUSTER_MEMBERS');
});

test('the real OpenBao behind a same-origin redirect still works', async (t) => {
  let redirects = 0;
  const node = await startHttpServer((req) => {
    if (req.url.startsWith('/active/')) {
      req.url = req.url.slice('/active'.length);
      return 'proxy';
    }
    redirects += 1;
    return { status: 307, headers: { Location: `/active${req.url}` } }; // relative: same origin
  });
  t.after(() => node.stop());
  const c = client(node.addr);
  t.after(() => c.close());
  assert.equal((await c.getConfig()).db_host, '127.0.0.1');
  const name = uniqueName('redirected');
  await c.api.kvWrite({ mount: 'maily', name, data: `maily/data/${name}`, metadata: `maily/metadata/${name}` }, { a: 1 }, 0);
  assert.deepEqual(await c.getSecret(`maily/data/${name}`), { a: 1 });
  assert.ok(redirects >= 3, 'every request was redirected once');
});

// ------------------------------------------------------------------ 3. retries
test('a POST whose connection dropped after it was sent is not resent', async (t) => {
  const name = uniqueName('once');
  const server = await startHttpServer((req) => (req.method === 'POST' ? 'drop' : 'proxy'));
  t.after(() => server.stop());
  const c = client(server.addr, { maxRetries: 4 });
  t.after(() => c.close());
  await assert.rejects(c.api.write(`maily/data/${name}`, { data: { a: 1 } }), (e) => {
    assert.ok(e instanceof VaultUnavailable, String(e));
    assert.match(e.message, /failed after it was sent \(ECONNRESET\); not resent/);
    return true;
  });
  assert.equal(server.requests.filter((r) => r.method === 'POST').length, 1, 'sent once');
});

test('a POST that timed out is not resent; a GET that timed out is', async (t) => {
  let gets = 0;
  const server = await startHttpServer((req) => {
    if (req.method === 'POST') return 'hang';
    if (req.url.includes('maily/data/config') && ++gets === 1) return 'hang';
    return 'proxy';
  });
  t.after(() => server.stop());
  const c = client(server.addr, { maxRetries: 3, timeout: 0.3 });
  t.after(() => c.close());
  assert.equal((await c.getConfig()).db_host, '127.0.0.1', 'the GET was resent after its timeout');
  assert.equal(gets, 2);
  await assert.rejects(c.api.write(`maily/data/${uniqueName('slow')}`, { data: { a: 1 } }), /TimeoutError\); not resent/);
  assert.equal(server.requests.filter((r) => r.method === 'POST').length, 1);
});

test('transit encrypt/decrypt are idempotent: resent after a dropped connection', async (t) => {
  let posts = 0;
  const server = await startHttpServer((req) => (req.method === 'POST' && ++posts % 2 === 1 ? 'drop' : 'proxy'));
  t.after(() => server.stop());
  const c = client(server.addr, { maxRetries: 2 });
  t.after(() => c.close());
  const ct = await c.encrypt('maily-enc-key', 'resent safely');
  assert.match(ct, /^vault:v\d+:/);
  assert.equal(await c.decrypt('maily-enc-key', ct), 'resent safely');
  assert.equal(posts, 4, 'each dropped once, then sent again');
});

test('a 500/502 to a POST is not resent; to a GET it is', async (t) => {
  let n = 0;
  const server = await startHttpServer((req) => {
    if (req.url.includes('/v1/maily/data/') && ++n <= 1) return { status: 502, json: { errors: ['bad gateway'] } };
    return 'proxy';
  });
  t.after(() => server.stop());
  const c = client(server.addr, { maxRetries: 3 });
  t.after(() => c.close());
  assert.equal((await c.getConfig()).db_host, '127.0.0.1');
  n = 0;
  const before = server.requests.length;
  await assert.rejects(c.api.write(`maily/data/${uniqueName('gw')}`, { data: {} }), (e) => e instanceof VaultUnavailable && e.status === 502);
  assert.equal(server.requests.length - before, 1);
});

test('KV v2 400 "Upgrading from non-versioned to versioned data" is retried, even for a write', async (t) => {
  const name = uniqueName('upgrading');
  let refusals = 0;
  const server = await startHttpServer((req) => {
    if (req.method === 'POST' && req.url.endsWith(name) && refusals < 2) {
      refusals += 1;
      return { status: 400, json: { errors: ['1 error occurred:\n\t* Upgrading from non-versioned to versioned data\n\n'] } };
    }
    return 'proxy';
  });
  t.after(() => server.stop());
  const c = client(server.addr, { maxRetries: 3 });
  t.after(() => c.close());
  const p = { mount: 'maily', name, data: `maily/data/${name}`, metadata: `maily/metadata/${name}` };
  assert.equal(await c.api.kvWrite(p, { v: 1 }, 0), 1);
  assert.equal(refusals, 2);
  assert.deepEqual(await c.getSecret(p.data), { v: 1 });
});

// ------------------------------------------------------------------ 4. configuration
test('settings read only VAULT_*, BAO_*, MAILY_* variables; bare names change nothing', () => {
  const read = new Set();
  const env = new Proxy(
    {},
    {
      get(_t, k) {
        if (typeof k === 'string') read.add(k);
        return undefined;
      },
    },
  );
  loadSettings({}, env);
  assert.ok(read.size > 10);
  for (const k of read) assert.ok(ENV_PREFIXES.some((p) => k.startsWith(p)), `reads ${k}`);
  const bare = {};
  for (const k of ['ADDR', 'TOKEN', 'NAMESPACE', 'ROLE', 'TIMEOUT', 'CACERT', 'ROLE_ID', 'SECRET_ID', 'MOUNT', 'CACHE_TTL', 'addr', 'token', 'namespace', 'role', 'timeout']) {
    bare[k] = k.toLowerCase().includes('addr') ? 'http://elsewhere:1' : k.toLowerCase().includes('ttl') || k.toLowerCase() === 'timeout' ? '1' : 'bare';
  }
  assert.deepEqual(loadSettings({}, bare), loadSettings({}, {}));
  // and nothing else in the package reads the environment
  const dist = new URL('../dist/vault/', import.meta.url);
  for (const f of readdirSync(dist).filter((n) => n.endsWith('.js'))) {
    const src = readFileSync(new URL(f, dist), 'utf8');
    if (f !== 'settings.js') assert.ok(!/process\.env\b/.test(src), `${f} reads process.env`);
  }
});

test('invalid settings are a ConfigurationError naming the variable, on first use', async (t) => {
  const bad = new VaultClient({ settings: { addr: 'http://user:pw@127.0.0.1:8200' } }); // no error yet
  await assert.rejects(bad.getConfig(), (e) => {
    assert.ok(e instanceof ConfigurationError && e instanceof VaultError);
    assert.equal(e.variable, 'VAULT_ADDR');
    assert.ok(!e.message.includes('pw'), 'no credentials echoed');
    return true;
  });
  const saved = { ...process.env };
  t.after(() => {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  });
  delete process.env.VAULT_CACERT;
  process.env.BAO_CACERT = '/nonexistent/ca.pem';
  process.env.VAULT_ADDR = 'https://127.0.0.1:1';
  const c = new VaultClient({ logger: recordingLogger() });
  t.after(() => c.close());
  await assert.rejects(c.getConfig(), (e) => {
    assert.ok(e instanceof ConfigurationError, String(e));
    assert.equal(e.variable, 'BAO_CACERT');
    assert.match(e.message, /cannot read BAO_CACERT "\/nonexistent\/ca.pem": ENOENT/);
    return true;
  });
  process.env.VAULT_MAX_RETRIES = '-1';
  const d = new VaultClient({ logger: recordingLogger() });
  await assert.rejects(d.getConfig(), (e) => e instanceof ConfigurationError && e.variable === 'VAULT_MAX_RETRIES');
});

// ------------------------------------------------------------------ 5. errors
test('a revoked token is AuthFailed even when no re-login is possible; a live one without rights is PermissionDenied', async (t) => {
  const admin = rootClient();
  t.after(() => admin.close());
  const policy = uniqueName('ts-reader');
  await admin.api.write(`sys/policies/acl/${policy}`, { policy: 'path "maily/*" { capabilities = ["read"] }' });
  const made = await admin.api.write('auth/token/create', { policies: [policy], ttl: '10m', no_parent: true });
  const token = made.body.auth.client_token;
  const c = new VaultClient({ settings: { addr: ADDR, token, authMethod: 'token', cacheTtl: 0 }, logger: recordingLogger() });
  t.after(() => c.close());
  assert.equal((await c.getConfig()).db_host, '127.0.0.1');
  await assert.rejects(c.getSecret('sys/mounts'), PermissionDenied, 'alive, but not allowed');
  await admin.api.write('auth/token/revoke', { token });
  for (const read of [() => c.getConfig(), () => c.getSecret('sys/mounts')]) {
    await assert.rejects(read(), (e) => {
      assert.ok(e instanceof AuthFailed, `${e.name}: ${e.message}`);
      assert.equal(e.status, 403);
      assert.match(e.message, /the Vault token \(VAULT_TOKEN\) is invalid, expired or revoked/);
      assert.ok(!e.message.includes(token));
      return true;
    });
  }
});
