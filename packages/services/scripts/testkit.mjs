// Shared helpers of the Node tests (kept out of test/ so the runner does not load it as a test).
import net from 'node:net';
import { randomUUID } from 'node:crypto';
import { VaultClient } from '@maily/services/vault';

export const ADDR = process.env.VAULT_ADDR;
export const TOKEN = process.env.VAULT_TOKEN;
if (!ADDR || !TOKEN) throw new Error('VAULT_ADDR and VAULT_TOKEN must point at a test OpenBao (run via tests/test_typescript.py)');

/** A logger that records what it was told (messages only; fields too). */
export function recordingLogger() {
  const lines = [];
  const rec = (level) => (message, fields) => lines.push({ level, message, fields });
  return { lines, debug: rec('debug'), info: rec('info'), warn: rec('warn'), error: rec('error') };
}

/** A client with the root token and explicit settings (never the shared one). */
export function rootClient(settings = {}, extra = {}) {
  return new VaultClient({
    settings: { addr: ADDR, token: TOKEN, authMethod: 'token', ...settings },
    logger: extra.logger ?? recordingLogger(),
  });
}

export function uniqueName(prefix) {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/**
 * A TCP proxy in front of the real OpenBao: `dropFirst` connections are closed at once
 * (a connection error), `stop()` closes the listener and every open connection so the
 * client sees a dead server (connection refused) while OpenBao keeps running.
 */
export async function startProxy({ dropFirst = 0 } = {}) {
  const target = new URL(ADDR);
  const sockets = new Set();
  let dropped = 0;
  let accepted = 0;
  const server = net.createServer((client) => {
    accepted += 1;
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => {});
    if (dropped < dropFirst) {
      dropped += 1;
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    client.pipe(upstream).pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  return {
    addr: `http://127.0.0.1:${port}`,
    get accepted() {
      return accepted;
    },
    get dropped() {
      return dropped;
    },
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

export function waitFor(predicate, { within = 5000, step = 20 } = {}) {
  const deadline = Date.now() + within;
  return new Promise((resolve, reject) => {
    const tick = async () => {
      try {
        if (await predicate()) return resolve(true);
      } catch (e) {
        return reject(e);
      }
      if (Date.now() > deadline) return reject(new Error('condition not met in time'));
      setTimeout(tick, step);
    };
    tick();
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * An HTTP server on another loopback port. `handle(req, body, n)` (n: 1-based count of
 * requests seen) answers by returning one of:
 *   'proxy'                       forward to the real OpenBao and relay its answer
 *   'drop'                        close the connection after reading the request (hang up)
 *   'hang'                        never answer
 *   { status, headers?, json? }   answer this
 * Every request is recorded in `requests` ({ method, url, headers }).
 */
export async function startHttpServer(handle = () => 'proxy') {
  const http = await import('node:http');
  const target = new URL(ADDR);
  const requests = [];
  const sockets = new Set();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      requests.push({ method: req.method, url: req.url, headers: { ...req.headers } });
      const what = handle(req, body, requests.length);
      if (what === 'drop') return req.socket.destroy();
      if (what === 'hang') return;
      if (what === 'proxy') {
        const headers = { ...req.headers, host: target.host };
        const up = http.request(
          { host: target.hostname, port: target.port, method: req.method, path: req.url, headers },
          (ur) => {
            res.writeHead(ur.statusCode, ur.headers);
            ur.pipe(res);
          },
        );
        up.on('error', () => req.socket.destroy());
        up.end(body);
        return;
      }
      const payload = what.json === undefined ? '' : JSON.stringify(what.json);
      res.writeHead(what.status, { 'Content-Type': 'application/json', ...(what.headers ?? {}) });
      res.end(payload);
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  return {
    addr: `http://127.0.0.1:${port}`,
    port,
    requests,
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
