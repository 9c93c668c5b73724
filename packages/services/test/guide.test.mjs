// The guide's "Using Vault in TypeScript/JavaScript" snippet, verbatim: compiled with
// tsc (strict) inside the workspace, so '@maily/services/vault' resolves through the
// npm workspace link, then run against the real OpenBao.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getVaultClient, closeVaultClient } from '@maily/services/vault';

const here = dirname(fileURLToPath(import.meta.url));
const pkg = resolve(here, '..');
const repo = resolve(pkg, '..', '..');

function guidePath() {
  const candidates = [
    process.env.MAILY_TS_TEST_GUIDE,
    join(repo, '..', 'shared', 'spec', 'vault-integration-guide.md'),
    join(repo, 'docs', 'vault-integration-guide.md'),
  ].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  assert.ok(found, `guide not found in ${candidates.join(', ')}`);
  return found;
}

function snippet() {
  const md = readFileSync(guidePath(), 'utf8');
  const section = md.split(/^## Using Vault in TypeScript\/JavaScript\s*$/m)[1];
  assert.ok(section, 'the guide has a "Using Vault in TypeScript/JavaScript" section');
  const m = /```typescript\n([\s\S]*?)```/.exec(section.split(/^## /m)[0]);
  assert.ok(m, 'the section has a ```typescript block');
  return m[1];
}

test('the guide snippet compiles (tsc --strict) and runs verbatim', async () => {
  const code = snippet();
  assert.match(code, /import \{ getVaultClient \} from '@maily\/services\/vault';/);
  const dir = join(pkg, '.guide-snippet');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  try {
    // The snippet as it is, plus one appended line so the test can call its function.
    writeFileSync(join(dir, 'guide.ts'), code + '\nexport { getSecrets };\n');
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          types: ['node'],
          outDir: 'out',
          skipLibCheck: false,
        },
        files: ['guide.ts'],
      }),
    );
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module', private: true }));
    const tsc = join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
    execFileSync(process.execPath, [tsc, '-p', dir], { stdio: 'pipe' });
    const mod = await import(join(dir, 'out', 'guide.js'));
    assert.equal(typeof mod.getSecrets, 'function');
    await mod.getSecrets(); // reads maily/data/config and maily/data/api-keys from OpenBao
    // It used the one shared client: both paths are now in its cache.
    const vault = await getVaultClient();
    assert.ok(vault.cache.fresh('maily/data/config'));
    assert.ok(vault.cache.fresh('maily/data/api-keys'));
    const config = await vault.getSecret('maily/data/config');
    assert.equal(typeof config.db_host, 'string');
    const apiKeys = await vault.getSecret('maily/data/api-keys');
    assert.match(apiKeys.stripe, /^sk_test_/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await closeVaultClient();
  }
});

test('getVaultClient() is one shared client per process, configured from the environment', async () => {
  const a = await getVaultClient();
  const b = await getVaultClient();
  assert.equal(a, b);
  assert.equal(a.settings.addr, process.env.VAULT_ADDR.replace(/\/+$/, ''));
  assert.equal(a.kvMount, 'maily');
  const cfg = await a.getConfig();
  assert.ok(cfg.jwt_secret);
  await closeVaultClient();
  const c = await getVaultClient();
  assert.notEqual(c, a);
  await closeVaultClient();
});
