// getSecret<T>(path, validate) and VAULT_AGENT_ADDR; imports this package's own build
// (../dist), so a worktree tests what it built.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VaultClient, InvalidSecretValue, AgentProxyAuth, authFromSettings, apiAddr, loadSettings } from '../dist/vault/index.js';
import { ADDR, TOKEN, recordingLogger, uniqueName } from '../scripts/testkit.mjs';

const CANARY = 'ts-typed-canary-4Kp';

function client() {
  return new VaultClient({ settings: { addr: ADDR, token: TOKEN, authMethod: 'token' }, logger: recordingLogger() });
}

test('getSecret with a validator returns its typed value; a refusal names the path, never the value', async (t) => {
  const c = client();
  t.after(() => c.close());
  const path = `maily/data/${uniqueName('typed')}`;
  await c.putSecret(path, { port: '5432', password: CANARY }, { cas: 0 });
  const parsed = await c.getSecret(path, (v) => ({ port: Number(v.port), password: String(v.password) }));
  assert.deepEqual(parsed, { port: 5432, password: CANARY });
  const isConfig = (v) => typeof v.password === 'string';
  assert.deepEqual(await c.getSecret(path, isConfig), { port: '5432', password: CANARY }); // a type guard
  for (const refuse of [() => false, (v) => { throw new TypeError(`bad port ${v.port} ${v.password}`); }]) {
    await assert.rejects(c.getSecret(path, refuse), (e) => {
      assert.ok(e instanceof InvalidSecretValue);
      assert.equal(e.path, path);
      assert.ok(!e.message.includes(CANARY) && !String(e.stack).includes(CANARY), e.message);
      assert.equal(e.cause, undefined);
      return true;
    });
  }
  assert.deepEqual(await c.getSecret(path), { port: '5432', password: CANARY }); // unchecked
  const cfg = await c.getConfig((v) => ({ host: String(v.db_host) }));
  assert.equal(typeof cfg.host, 'string');
});

test('VAULT_AGENT_ADDR takes precedence over VAULT_ADDR and needs no token', () => {
  const s = loadSettings({}, { VAULT_ADDR: 'https://vault.example:8200', VAULT_AGENT_ADDR: 'http://127.0.0.1:8100/' });
  assert.equal(s.addr, 'https://vault.example:8200');
  assert.equal(apiAddr(s), 'http://127.0.0.1:8100');
  assert.ok(authFromSettings(s) instanceof AgentProxyAuth);
  const own = loadSettings({}, { VAULT_AGENT_ADDR: 'http://127.0.0.1:8100', VAULT_TOKEN: 's.x' });
  assert.equal(authFromSettings(own).name, 'token'); // own credentials win
  assert.equal(apiAddr(loadSettings({}, { BAO_AGENT_ADDR: 'http://127.0.0.1:8101' })), 'http://127.0.0.1:8101');
  assert.equal(apiAddr(loadSettings({}, {})), 'http://vault.vault:8200');
  assert.throws(() => loadSettings({}, { VAULT_AGENT_ADDR: 'unix:///run/agent.sock' }), (e) => e.variable === 'VAULT_AGENT_ADDR');
});
