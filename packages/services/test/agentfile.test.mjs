// MAILY_CONFIG_FILE: getConfig() from the file Vault Agent renders, reloaded on change,
// firing the config path's listeners, with no token. Imports this package's own build.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, renameSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VaultClient, ConfigFileUnavailable, AuthFailed, loadSettings } from '../dist/vault/index.js';
import { ADDR, recordingLogger, waitFor } from '../scripts/testkit.mjs';

const CANARY = 'ts-file-canary-8Hw';

function writeAtomically(path, text) {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path); // what the agent does: a new inode
}

function fileClient(file, logger = recordingLogger(), extra = {}) {
  // no token and no credentials: only the file can serve anything
  return new VaultClient({
    settings: { addr: 'http://127.0.0.1:9', token: undefined, configFile: file, listenerInterval: 0.05, homeTokenPath: '/nonexistent', kubernetesJwtPath: '/nonexistent', ...extra },
    logger,
  });
}

test('MAILY_CONFIG_FILE is read from the environment', () => {
  assert.equal(loadSettings({}, { MAILY_CONFIG_FILE: '/vault/secrets/config.json' }).configFile, '/vault/secrets/config.json');
  assert.equal(loadSettings({}, { CONFIG_FILE: '/x' }).configFile, undefined);
});

test('getConfig is served from the file, a change fires the config listener once, a bad file keeps the last good value', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'maily-file-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'config.json');
  writeAtomically(file, JSON.stringify({ database: { password: `${CANARY}-1` } }));
  const log = recordingLogger();
  const c = fileClient(file, log, { cacheTtl: 0 });
  t.after(() => c.close());
  assert.deepEqual(await c.getConfig(), { database: { password: `${CANARY}-1` } });
  assert.equal(c.api.stats.requests, 0, 'no request to Vault, no login');
  const seen = [];
  await c.onChange('maily/data/config', (v) => seen.push(v));
  writeAtomically(file, JSON.stringify({ database: { password: `${CANARY}-2` } }));
  await waitFor(() => seen.length === 1);
  assert.deepEqual(seen[0], { database: { password: `${CANARY}-2` } });
  writeAtomically(file, JSON.stringify({ database: { password: `${CANARY}-2` } })); // same content, new inode
  for (const bad of [`{"database": {"password": "${CANARY}-half`, '[1]', '']) {
    writeFileSync(file, bad);
    const polls = c.watcher('maily/data/config').polls;
    await waitFor(() => c.watcher('maily/data/config').polls >= polls + 2);
    assert.deepEqual(await c.getConfig(), { database: { password: `${CANARY}-2` } });
  }
  unlinkSync(file);
  assert.deepEqual(await c.getConfig(), { database: { password: `${CANARY}-2` } });
  const warnings = log.lines.filter((l) => l.level === 'warn');
  assert.equal(warnings.length, 1, JSON.stringify(warnings.map((w) => w.message)));
  assert.ok(!JSON.stringify(log.lines).includes(CANARY), 'no value in the log');
  writeAtomically(file, JSON.stringify({ v: 3 }));
  await waitFor(() => seen.length === 2);
  assert.deepEqual(seen, [{ database: { password: `${CANARY}-2` } }, { v: 3 }]);
  assert.ok(log.lines.some((l) => l.message.includes('valid JSON object again')));
  assert.equal(c.api.stats.requests, 0);
});

test('before any good read the file is ConfigFileUnavailable; other paths still go to Vault', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'maily-file-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const c = fileClient(join(dir, 'absent.json'), recordingLogger(), { addr: ADDR });
  t.after(() => c.close());
  await assert.rejects(c.getConfig(), (e) => e instanceof ConfigFileUnavailable && e.message.includes('MAILY_CONFIG_FILE'));
  await assert.rejects(c.getApiKeys(), AuthFailed);
});
