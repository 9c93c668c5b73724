import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  VaultClient,
  InvalidPath,
  SecretNotFound,
  PermissionDenied,
  VaultError,
  AuthFailed,
  loadSettings,
  validatePath,
} from '@maily/services/vault';
import { ADDR, TOKEN, rootClient, uniqueName } from '../scripts/testkit.mjs';

test('getSecret unwraps KV v2 data; getConfig/getApiKeys/getCredentials', async (t) => {
  const c = rootClient();
  t.after(() => c.close());
  const config = await c.getSecret('maily/data/config');
  assert.equal(config.db_host, '127.0.0.1');
  assert.equal(config.data, undefined, 'no KV v2 envelope');
  assert.deepEqual(await c.getConfig(), config);
  const keys = await c.getApiKeys();
  assert.match(keys.stripe, /^sk_test_/);
  const aws = await c.getCredentials('aws');
  assert.equal(aws.aws_region, 'us-east-1');
  await assert.rejects(c.getCredentials('nope'), (e) => {
    assert.ok(e instanceof SecretNotFound);
    assert.match(e.message, /no credentials for service "nope" in "maily\/data\/credentials" \(services present: aws\)/);
    assert.ok(!e.message.includes(aws.aws_secret_key));
    return true;
  });
  await assert.rejects(c.getCredentials(''), InvalidPath);
  assert.equal(await c.getSecretVersion('maily/data/config') >= 1, true);
});

test('generic (non KV v2) paths return their data object', async (t) => {
  const c = rootClient();
  t.after(() => c.close());
  const mounts = await c.getSecret('sys/mounts');
  assert.ok(mounts['maily/']);
  assert.equal(mounts['maily/'].type, 'kv');
});

test('cache: TTL, one request per path, every caller gets its own deep copy', async (t) => {
  const c = rootClient({ cacheTtl: 60 });
  t.after(() => c.close());
  await c.getSecret('maily/data/api-keys'); // logs in
  const before = c.api.stats.requests;
  const a = await c.getCredentials('aws');
  const creds1 = await c.getSecret('maily/data/credentials');
  const n = c.api.stats.requests - before;
  assert.equal(n, 1, 'one request for two reads of the same path');
  creds1.aws.aws_region = 'mutated';
  a.aws_region = 'mutated too';
  const creds2 = await c.getSecret('maily/data/credentials');
  assert.equal(creds2.aws.aws_region, 'us-east-1');
  assert.equal(c.api.stats.requests - before, 1);
  const keys = await c.getApiKeys();
  keys.stripe = 'x';
  assert.notEqual((await c.getApiKeys()).stripe, 'x');

  const short = rootClient({ cacheTtl: 0.05 });
  t.after(() => short.close());
  await short.getConfig();
  const b2 = short.api.stats.requests;
  await new Promise((r) => setTimeout(r, 80));
  await short.getConfig();
  assert.equal(short.api.stats.requests - b2, 1, 'expired entry is read again');
});

test('single-flight: concurrent misses of one path make one request', async (t) => {
  const c = rootClient();
  t.after(() => c.close());
  await c.getSecret('maily/data/api-keys'); // log in first
  const before = c.api.stats.requests;
  const results = await Promise.all(Array.from({ length: 25 }, () => c.getSecret('maily/data/config')));
  assert.equal(c.api.stats.requests - before, 1);
  results[0].db_host = 'changed';
  assert.equal(results[1].db_host, '127.0.0.1', 'each caller has its own copy');
  assert.equal(new Set(results).size, 25);
});

test('bad paths are refused before any request', async (t) => {
  const c = rootClient();
  t.after(() => c.close());
  const bad = [
    '',
    '../sys/seal',
    'maily/../sys/seal',
    'maily/./data/config',
    'maily//data/config',
    '/maily/data/config',
    'maily/data/config/',
    'http://evil.example/v1/maily/data/config',
    'https:maily/data/config',
    '//evil.example/x',
    'maily/data/con\x00fig',
    'maily/data/config\n',
    'maily/data/config?version=1',
    'maily/data/config#x',
    'maily/data/%2e%2e',
    'maily\\data\\config',
    'maily/ data/config',
    'a/'.repeat(600) + 'x',
  ];
  for (const p of bad) {
    await assert.rejects(c.getSecret(p), (e) => {
      assert.ok(e instanceof InvalidPath, `${JSON.stringify(p)}: ${e}`);
      assert.ok(e instanceof VaultError);
      assert.ok(!/[\x00-\x1f]/.test(e.message), 'no control character in messages');
      return true;
    });
  }
  for (const p of [undefined, null, 42, {}]) await assert.rejects(c.getSecret(p), InvalidPath);
  await assert.rejects(c.onChange('maily/../x', () => {}), InvalidPath);
  await assert.rejects(c.encrypt('bad key!', 'x'), InvalidPath);
  assert.equal(c.api.stats.requests, 0, 'not even a login');
  assert.equal(validatePath('maily/data/config'), 'maily/data/config');
});

test('a missing secret is SecretNotFound (never {}), not retried, message names the path', async (t) => {
  const c = rootClient();
  t.after(() => c.close());
  await c.getConfig();
  const before = c.api.stats.requests;
  const path = `maily/data/${uniqueName('missing')}`;
  await assert.rejects(c.getSecret(path), (e) => {
    assert.ok(e instanceof SecretNotFound);
    assert.equal(e.status, 404);
    assert.equal(e.path, path);
    assert.ok(e.message.includes(path));
    return true;
  });
  assert.equal(c.api.stats.requests - before, 1, '404 is not retried');
});

test('403 is PermissionDenied, not retried; a bad token is AuthFailed', async (t) => {
  const admin = rootClient();
  t.after(() => admin.close());
  const r = await admin.api.write('auth/token/create', { policies: ['default'], ttl: '10m', no_parent: true });
  const limited = new VaultClient({ settings: { addr: ADDR, token: r.body.auth.client_token, authMethod: 'token' } });
  t.after(() => limited.close());
  await assert.rejects(limited.getSecret('maily/data/config'), (e) => {
    assert.ok(e instanceof PermissionDenied);
    assert.match(e.message, /permission denied for "maily\/data\/config"/);
    return true;
  });
  // lookup-self (login) + one GET, no retry + one lookup-self telling a live token
  // without the permission from a dead token (AuthFailed)
  assert.equal(limited.api.stats.requests, 3);

  const bad = new VaultClient({ settings: { addr: ADDR, token: 'hvs.not-a-token', authMethod: 'token' } });
  t.after(() => bad.close());
  await assert.rejects(bad.getConfig(), (e) => {
    assert.ok(e instanceof AuthFailed);
    assert.ok(!e.message.includes('hvs.not-a-token'), 'never the token');
    return true;
  });
});

test('token file and ~/.vault-token are read like the Python client', async (t) => {
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'maily-ts-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'token'), TOKEN + '\n', { mode: 0o600 });
  const s = loadSettings({ addr: ADDR, tokenFile: join(dir, 'token') }, { VAULT_ADDR: ADDR });
  assert.equal(s.token, undefined);
  const c = new VaultClient({ settings: { ...s } });
  t.after(() => c.close());
  assert.equal((await c.getConfig()).db_host, '127.0.0.1');
  assert.equal(c.api.tokens.method.name, 'token');
  assert.equal(c.api.tokens.method.canRelogin, true);
  const home = new VaultClient({ settings: { ...loadSettings({ addr: ADDR, homeTokenPath: join(dir, 'token') }, { VAULT_ADDR: ADDR }) } });
  t.after(() => home.close());
  assert.equal((await home.getConfig()).db_host, '127.0.0.1');
});

test('settings come from the same environment variables as Python', () => {
  const d = loadSettings({}, { HOME: '/nonexistent' });
  assert.equal(d.addr, 'http://vault.vault:8200');
  assert.equal(d.role, 'maily');
  assert.equal(d.kvMount, 'maily');
  assert.equal(d.transitMount, 'transit');
  assert.equal(d.cacheTtl, 60);
  assert.equal(d.maxStaleness, 3600);
  assert.equal(d.listenerInterval, 30);
  assert.equal(d.maxRetries, 4);
  assert.equal(d.timeout, 10);
  assert.equal(d.kubernetesJwtPath, '/var/run/secrets/kubernetes.io/serviceaccount/token');
  assert.equal(d.kubernetesMount, 'kubernetes');
  assert.equal(d.approleMount, 'approle');
  const s = loadSettings(
    {},
    {
      VAULT_ADDR: 'https://vault.example:8200/',
      VAULT_NAMESPACE: 'team',
      VAULT_CACERT: '/etc/ca.pem',
      VAULT_ROLE: 'api',
      VAULT_K8S_JWT_PATH: '/tmp/jwt',
      VAULT_K8S_MOUNT: 'k8s',
      VAULT_ROLE_ID_FILE: '/tmp/role',
      VAULT_SECRET_ID_FILE: '/tmp/secret',
      VAULT_APPROLE_MOUNT: 'ar/',
      MAILY_SECRETS_CACHE_TTL: '5',
      MAILY_SECRETS_MAX_STALENESS: '7',
      MAILY_SECRETS_LISTENER_INTERVAL: '0.5',
      MAILY_SECRETS_MOUNT: '/other/',
      MAILY_SECRETS_TRANSIT_MOUNT: 'enc',
      VAULT_MAX_RETRIES: '2',
      VAULT_CLIENT_TIMEOUT: '3',
    },
  );
  assert.equal(s.addr, 'https://vault.example:8200');
  assert.equal(s.namespace, 'team');
  assert.equal(s.cacert, '/etc/ca.pem');
  assert.equal(s.role, 'api');
  assert.equal(s.kubernetesMount, 'k8s');
  assert.equal(s.approleMount, 'ar');
  assert.equal(s.cacheTtl, 5);
  assert.equal(s.maxStaleness, 7);
  assert.equal(s.listenerInterval, 0.5);
  assert.equal(s.kvMount, 'other');
  assert.equal(s.transitMount, 'enc');
  assert.equal(s.maxRetries, 2);
  assert.equal(s.timeout, 3);
  assert.equal(loadSettings({}, { BAO_ADDR: 'http://b:1' }).addr, 'http://b:1');
  assert.throws(() => loadSettings({}, { VAULT_ADDR: 'vault:8200' }), VaultError);
  assert.throws(() => loadSettings({}, { MAILY_SECRETS_CACHE_TTL: 'soon' }), /MAILY_SECRETS_CACHE_TTL/);
});

test('no credentials at all is a clear AuthFailed', async (t) => {
  const s = loadSettings({ addr: ADDR, homeTokenPath: '/nonexistent/.vault-token', kubernetesJwtPath: '/nonexistent/jwt' }, {});
  const c = new VaultClient({ settings: s });
  t.after(() => c.close());
  await assert.rejects(c.getConfig(), (e) => e instanceof AuthFailed && /no Vault credentials/.test(e.message));
});
