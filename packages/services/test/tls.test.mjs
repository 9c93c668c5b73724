// HTTPS on loopback with a throw-away self-signed certificate (openssl): a redirect from
// https to http is refused even to a cluster member; same-origin redirects work over TLS;
// a POST dropped after the TLS handshake is not resent (failure classification over TLS).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VaultClient, VaultRequestError, VaultUnavailable } from '@maily/services/vault';
import { recordingLogger, startHttpServer } from '../scripts/testkit.mjs';

const TOKEN = 'hvs.tls-test-token-never-leaves';

function selfSigned() {
  const dir = mkdtempSync(join(tmpdir(), 'maily-ts-tls-'));
  const r = spawnSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 0, `openssl is needed for the TLS tests: ${r.error ?? r.stderr}`);
  return { dir, cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') };
}

async function startHttps(pem, handle) {
  const requests = [];
  const server = createServer({ cert: readFileSync(pem.cert), key: readFileSync(pem.key) }, (req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      requests.push({ method: req.method, url: req.url, headers: { ...req.headers } });
      const what = handle(req, requests.length);
      if (what === 'drop') return req.socket.destroy();
      res.writeHead(what.status, { 'Content-Type': 'application/json', ...(what.headers ?? {}) });
      res.end(what.json === undefined ? '' : JSON.stringify(what.json));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = `https://127.0.0.1:${server.address().port}`;
  return {
    addr,
    requests,
    stop: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

const lookupSelf = { status: 200, json: { data: { ttl: 0, renewable: false } } };

test('TLS: https -> http is refused, even to a listed cluster member; same-origin works', async (t) => {
  const pem = selfSigned();
  t.after(() => rmSync(pem.dir, { recursive: true, force: true }));
  const plain = await startHttpServer(() => ({ status: 200, json: { data: { data: { stolen: true }, metadata: { version: 1 } } } }));
  t.after(() => plain.stop());
  const tls = await startHttps(pem, (req) => {
    if (req.url.startsWith('/v1/auth/token/lookup-self')) return lookupSelf;
    if (req.url.startsWith('/v1/maily/data/down')) return { status: 307, headers: { Location: `${plain.addr}${req.url}` } };
    if (req.url.startsWith('/v1/maily/data/moved')) return { status: 308, headers: { Location: '/v1/maily/data/here' } };
    if (req.url.startsWith('/v1/maily/data/here')) return { status: 200, json: { data: { data: { ok: 1 }, metadata: { version: 3 } } } };
    return { status: 404, json: { errors: [] } };
  });
  t.after(() => tls.stop());
  const c = new VaultClient({
    settings: { addr: tls.addr, cacert: pem.cert, token: TOKEN, authMethod: 'token', cacheTtl: 0, clusterMembers: [plain.addr] },
    logger: recordingLogger(),
  });
  t.after(() => c.close());
  assert.deepEqual(await c.getSecret('maily/data/moved'), { ok: 1 }, 'a same-origin 308 over TLS is followed');
  await assert.rejects(c.getSecret('maily/data/down'), (e) => {
    assert.ok(e instanceof VaultRequestError, String(e));
    assert.match(e.message, /redirected "maily\/data\/down" to http:\/\/127\.0\.0\.1:\d+, which is neither/);
    return true;
  });
  assert.equal(plain.requests.length, 0, 'the plain-HTTP server never saw a request (nor the token)');
  assert.ok(tls.requests.every((r) => r.headers['x-vault-token'] === TOKEN));
});

test('TLS: a POST dropped after the handshake is not resent; a GET is', async (t) => {
  const pem = selfSigned();
  t.after(() => rmSync(pem.dir, { recursive: true, force: true }));
  let gets = 0;
  const tls = await startHttps(pem, (req) => {
    if (req.url.startsWith('/v1/auth/token/lookup-self')) return lookupSelf;
    if (req.method === 'POST') return 'drop';
    if (++gets === 1) return 'drop';
    return { status: 200, json: { data: { data: { ok: 2 }, metadata: { version: 1 } } } };
  });
  t.after(() => tls.stop());
  const c = new VaultClient({
    settings: { addr: tls.addr, cacert: pem.cert, token: TOKEN, authMethod: 'token', cacheTtl: 0, retryBaseDelay: 0.01, maxRetries: 3 },
    logger: recordingLogger(),
  });
  t.after(() => c.close());
  assert.deepEqual(await c.getSecret('maily/data/x'), { ok: 2 });
  assert.equal(gets, 2);
  await assert.rejects(c.api.write('maily/data/x', { data: {} }), (e) => e instanceof VaultUnavailable && /not resent/.test(e.message));
  assert.equal(tls.requests.filter((r) => r.method === 'POST').length, 1);
});
