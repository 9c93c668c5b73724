// Stale-if-error and retries against the real OpenBao behind a TCP proxy that the
// test breaks (connections dropped or refused); OpenBao itself is never mocked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VaultClient, VaultUnavailable } from '@maily/services/vault';
import { TOKEN, recordingLogger, startProxy, sleep } from '../scripts/testkit.mjs';

function viaProxy(proxy, settings = {}, logger = recordingLogger()) {
  return new VaultClient({
    settings: { addr: proxy.addr, token: TOKEN, authMethod: 'token', retryBaseDelay: 0.01, retryMaxDelay: 0.05, ...settings },
    logger,
  });
}

test('stale-if-error: the last known value is served while Vault is unreachable, warned once', async (t) => {
  const proxy = await startProxy();
  const log = recordingLogger();
  const c = viaProxy(proxy, { cacheTtl: 0.05, maxStaleness: 3600, maxRetries: 1 }, log);
  t.after(() => c.close());
  const config = await c.getConfig();
  await proxy.stop(); // Vault is gone for this client
  await sleep(80); // past the TTL
  const s1 = await c.getConfig();
  const s2 = await c.getConfig();
  assert.deepEqual(s1, config);
  assert.deepEqual(s2, config);
  s1.db_host = 'mutated';
  assert.equal((await c.getConfig()).db_host, config.db_host, 'stale values are copies too');
  const warnings = log.lines.filter((l) => l.level === 'warn' && l.message.includes('serving last known value'));
  assert.equal(warnings.length, 1, 'warned once per path');
  assert.match(warnings[0].message, /maily\/data\/config/);
  for (const k of ['db_password', 'redis_password', 'jwt_secret', 'smtp_password']) {
    assert.ok(!warnings[0].message.includes(config[k]), `no ${k} in the warning`);
  }
  // A path never read before has nothing to fall back on.
  await assert.rejects(c.getApiKeys(), (e) => {
    assert.ok(e instanceof VaultUnavailable);
    assert.match(e.message, /unreachable for "maily\/data\/api-keys": ECONNREFUSED after 2 attempt\(s\)/);
    return true;
  });
});

test('stale-if-error stops at MAILY_SECRETS_MAX_STALENESS', async (t) => {
  const proxy = await startProxy();
  const c = viaProxy(proxy, { cacheTtl: 0.01, maxStaleness: 0.05, maxRetries: 0 });
  t.after(() => c.close());
  await c.getConfig();
  await proxy.stop();
  await sleep(100);
  await assert.rejects(c.getConfig(), VaultUnavailable);
});

test('connection errors are retried with backoff, then succeed', async (t) => {
  const proxy = await startProxy({ dropFirst: 2 });
  t.after(() => proxy.stop());
  const c = viaProxy(proxy, { maxRetries: 4 });
  t.after(() => c.close());
  const config = await c.getConfig();
  assert.equal(config.db_host, '127.0.0.1');
  assert.equal(proxy.dropped, 2);
  // login (lookup-self): 2 dropped attempts + 1; then the read
  assert.equal(c.api.stats.requests, 4);
});

test('retries are bounded: VaultUnavailable after maxRetries + 1 attempts', async (t) => {
  const proxy = await startProxy({ dropFirst: 100 });
  t.after(() => proxy.stop());
  const c = viaProxy(proxy, { maxRetries: 2 });
  t.after(() => c.close());
  const started = Date.now();
  await assert.rejects(c.getConfig(), (e) => {
    assert.ok(e instanceof VaultUnavailable);
    assert.match(e.message, /after 3 attempt\(s\)/);
    return true;
  });
  assert.equal(proxy.dropped, 3);
  assert.ok(Date.now() - started < 2000);
});

test('a 400 from Vault is not retried', async (t) => {
  const proxy = await startProxy();
  t.after(() => proxy.stop());
  const c = viaProxy(proxy, { maxRetries: 3 });
  t.after(() => c.close());
  await c.getConfig();
  const before = c.api.stats.requests;
  await assert.rejects(c.api.write('transit/encrypt/maily-enc-key', { plaintext: 'not base64!' }), (e) => e.status === 400);
  assert.equal(c.api.stats.requests - before, 1, '400 is not retried');
});
