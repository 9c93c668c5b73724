// AppRole against the real OpenBao (the role is created by tests/test_typescript.py with a
// 3 s token TTL): login, single-flight, renewal at 2/3 TTL, re-login after a 403.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VaultClient, AuthFailed, PermissionDenied } from '@maily/services/vault';
import { ADDR, recordingLogger, waitFor } from '../scripts/testkit.mjs';

const ROLE_ID = process.env.MAILY_TS_TEST_ROLE_ID;
const SECRET_ID = process.env.MAILY_TS_TEST_SECRET_ID;
const skip = !ROLE_ID || !SECRET_ID ? 'MAILY_TS_TEST_ROLE_ID/SECRET_ID not set' : false;

function approle(settings = {}) {
  return new VaultClient({
    settings: { addr: ADDR, token: undefined, authMethod: 'auto', roleId: ROLE_ID, secretId: SECRET_ID, ...settings },
    logger: recordingLogger(),
  });
}

test('AppRole login (auto-detected), one login for concurrent callers', { skip }, async (t) => {
  const c = approle();
  t.after(() => c.close());
  const results = await Promise.all([c.getConfig(), c.getApiKeys(), c.getCredentials('aws'), c.getConfig()]);
  assert.equal(results[0].db_host, '127.0.0.1');
  assert.equal(c.api.tokens.method.name, 'approle');
  assert.equal(c.api.tokens.logins, 1);
  await assert.rejects(c.getSecret('sys/mounts'), PermissionDenied);
});

test('AppRole from files (VAULT_ROLE_ID_FILE / VAULT_SECRET_ID_FILE)', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'maily-ts-approle-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'role-id'), ROLE_ID + '\n', { mode: 0o600 });
  writeFileSync(join(dir, 'secret-id'), SECRET_ID + '\n', { mode: 0o600 });
  const c = approle({ roleId: undefined, secretId: undefined, roleIdFile: join(dir, 'role-id'), secretIdFile: join(dir, 'secret-id') });
  t.after(() => c.close());
  assert.equal((await c.getConfig()).db_host, '127.0.0.1');
  const bad = approle({ secretId: 'not-the-secret-id' });
  t.after(() => bad.close());
  await assert.rejects(bad.getConfig(), (e) => {
    assert.ok(e instanceof AuthFailed);
    assert.ok(!e.message.includes('not-the-secret-id'));
    return true;
  });
});

test('the token is renewed in the background at 2/3 of its TTL', { skip }, async (t) => {
  const c = approle();
  t.after(() => c.close());
  await c.getConfig();
  const first = c.api.tokens.token;
  assert.ok(first.ttl > 0 && first.ttl <= 3);
  await waitFor(() => c.api.tokens.renewals >= 1 || c.api.tokens.logins >= 2, { within: 5000 }).catch((e) => {
    throw new Error(`${e.message}: ${JSON.stringify(c.logger.lines)}`);
  });
  assert.ok(c.api.tokens.token.value);
  c.invalidate();
  assert.equal((await c.getConfig()).db_host, '127.0.0.1');
});

test('a revoked token: one fresh login after the 403, then the read succeeds', { skip }, async (t) => {
  const c = approle({ cacheTtl: 0 });
  t.after(() => c.close());
  await c.getConfig();
  const old = c.api.tokens.token.value;
  await c.api.request('POST', 'auth/token/revoke-self', { token: old, body: {} });
  const logins = c.api.tokens.logins;
  assert.equal((await c.getConfig()).db_host, '127.0.0.1');
  assert.equal(c.api.tokens.logins, logins + 1);
  assert.notEqual(c.api.tokens.token.value, old);
});
