#!/usr/bin/env node
// TypeScript cold reads: `@maily/services/vault` against a bare `node:http` loop and node-vault.
//
//   VAULT_ADDR=... VAULT_TOKEN=... node bench/ts/cold_reads.mjs [--rounds N] [--quick] [--root DIR] [--reads N]
//
// Defaults: 5 rounds of 1,280 timed reads per variant and concurrency (about a minute on an idle
// 2-core machine); --quick: 3 rounds of 384.
//
// Seeds 64 KV v2 secrets under maily/data/bench/ts-cold/ (check-and-set: created once, never
// deleted), then, at concurrency 1, 16 and 64, reads them with every read a miss:
//   ours      a fresh VaultClient per round, the path invalidated before each read (what a
//             miss really costs: cache check, single-flight, request, copy-out);
//   nodehttp  a bare loop on `node:http` with a keep-alive Agent (maxSockets = our pool size):
//             GET, collect the body, JSON.parse, take data.data;
//   node_vault  node-vault (pinned in bench/ts/package.json) given the same kind of Agent.
// Each variant, each round, starts with a fresh pool and an untimed pass over the 64 paths
// (connections opened, login done); then `reads` timed reads. Workers own disjoint paths
// (path p belongs to worker p mod c), so no two reads of one path are ever in flight and
// our single-flight cannot merge them. Variants run round by round in a rotating order.
//
// Prints on stdout a JSON list of figure dicts (bench/bench_context.py's format); progress on
// stderr. Never prints the token or a secret value. `--root DIR`: the checkout measured (its
// packages/services/dist must be built), default the repository this script is in.
import * as http from 'node:http';
import * as https from 'node:https';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const PATHS = 64;
const CONCURRENCY = [1, 16, 64];
const PREFIX = 'bench/ts-cold';

function parseArgs(argv) {
  const o = { rounds: null, quick: false, root: resolve(HERE, '..', '..'), reads: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--rounds') o.rounds = Number(value());
    else if (a === '--quick') o.quick = true;
    else if (a === '--root') o.root = resolve(value());
    else if (a === '--reads') o.reads = Number(value());
    else throw new Error(`unknown argument ${a}`);
  }
  o.rounds ??= o.quick ? 3 : 5;
  if (!Number.isInteger(o.rounds) || o.rounds < 1) throw new Error('--rounds must be a positive integer');
  o.reads ??= o.quick ? 384 : 1280;
  if (!Number.isInteger(o.reads) || o.reads < PATHS) throw new Error(`--reads must be an integer >= ${PATHS}`);
  return o;
}

const log = (line) => process.stderr.write(`cold_reads: ${line}\n`);

const opts = parseArgs(process.argv.slice(2));
const ADDR = (process.env.VAULT_ADDR ?? '').replace(/\/+$/, '');
const TOKEN = process.env.VAULT_TOKEN ?? '';
if (!ADDR || !TOKEN) {
  log('VAULT_ADDR and VAULT_TOKEN must be set');
  process.exit(2);
}
// A failure prints its class and message only, never the error object: an HTTP library's
// error carries the request's headers (the token).
const fail = (e) => {
  const text = `${e?.name ?? 'Error'}: ${e?.message ?? String(e)}`.split(TOKEN).join('[token]');
  log(`failed: ${text}`);
  process.exit(1);
};
process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);

const base = new URL(`${ADDR}/v1/`);
const mod = base.protocol === 'https:' ? https : http;

const ours = await import(pathToFileURL(resolve(opts.root, 'packages/services/dist/vault/index.js')).href);
const nodeVault = createRequire(import.meta.url)('node-vault');
const nodeVaultVersion = createRequire(import.meta.url)('node-vault/package.json').version;

const paths = Array.from({ length: PATHS }, (_, i) => `maily/data/${PREFIX}/s${String(i).padStart(2, '0')}`);
const POOL = new ours.VaultClient({ settings: { addr: ADDR, token: TOKEN, authMethod: 'token' } }).settings.poolSize;

// ------------------------------------------------------------------ seeding (check-and-set)
function raw(method, path, body) {
  return new Promise((res, rej) => {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers = { 'X-Vault-Token': TOKEN };
    if (payload) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = payload.length;
    }
    const req = mod.request(new URL(path, base), { method, headers }, (r) => {
      const chunks = [];
      r.on('data', (c) => chunks.push(c));
      r.on('end', () => res({ status: r.statusCode, body: chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : null }));
      r.on('error', rej);
    });
    req.on('error', rej);
    req.end(payload);
  });
}

async function seed() {
  let created = 0;
  for (const [i, p] of paths.entries()) {
    const meta = await raw('GET', p.replace('/data/', '/metadata/'));
    if (meta.status === 200) continue; // seeded by an earlier run: ours, keep it
    if (meta.status !== 404) throw new Error(`seeding: metadata read answered HTTP ${meta.status}`);
    const data = {
      host: `db-${i}.bench.invalid`,
      port: 5432 + i,
      username: `bench_user_${i}`,
      password: `bench-value-${i}-${'x'.repeat(24)}`,
      sslmode: 'require',
    };
    for (let attempt = 0; ; attempt++) {
      const w = await raw('POST', p, { options: { cas: 0 }, data });
      if (w.status === 200 || w.status === 204) break;
      const detail = (w.body?.errors ?? []).join('; ');
      if (w.status === 400 && detail.includes('check-and-set')) break; // a concurrent seeder won
      if (attempt < 20 && w.status === 400 && detail.includes('Upgrading')) {
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      throw new Error(`seeding: write answered HTTP ${w.status}`);
    }
    created += 1;
  }
  return created;
}

// ------------------------------------------------------------------ the variants
/** `c` workers; worker w reads the paths p with p % c == w, `reads` in all. */
async function drive(c, reads, readOne) {
  let next = 0;
  const worker = async (w) => {
    const mine = paths.filter((_, p) => p % c === w);
    for (let k = 0; ; k++) {
      if (next >= reads) return;
      next += 1;
      await readOne(mine[k % mine.length]);
    }
  };
  await Promise.all(Array.from({ length: c }, (_, w) => worker(w)));
}

function check(value) {
  if (value === null || typeof value !== 'object' || typeof value.password !== 'string') {
    throw new Error('a read returned no secret data');
  }
}

const variants = {
  ours: {
    label: `@maily/services/vault (${opts.root === resolve(HERE, '..', '..') ? 'this checkout' : opts.root})`,
    async make() {
      const client = new ours.VaultClient({ settings: { addr: ADDR, token: TOKEN, authMethod: 'token' } });
      return {
        read: async (p) => {
          client.invalidate(p);
          check(await client.getSecret(p));
        },
        requests: () => client.api.stats.requests,
        close: () => client.close(),
      };
    },
  },
  nodehttp: {
    label: `bare node:http, keep-alive Agent (maxSockets ${POOL})`,
    async make() {
      const agent = new mod.Agent({ keepAlive: true, maxSockets: POOL });
      const headers = { 'X-Vault-Token': TOKEN, Accept: 'application/json' };
      let requests = 0;
      const get = (p) =>
        new Promise((res, rej) => {
          requests += 1;
          const req = mod.request(new URL(p, base), { method: 'GET', headers, agent }, (r) => {
            const chunks = [];
            r.on('data', (c) => chunks.push(c));
            r.on('end', () => {
              if (r.statusCode !== 200) return rej(new Error(`HTTP ${r.statusCode}`));
              res(JSON.parse(Buffer.concat(chunks).toString('utf8')).data.data);
            });
            r.on('error', rej);
          });
          req.on('error', rej);
          req.end();
        });
      return {
        read: async (p) => check(await get(p)),
        requests: () => requests,
        close: () => agent.destroy(),
      };
    },
  },
  node_vault: {
    label: `node-vault ${nodeVaultVersion} (same keep-alive Agent)`,
    async make() {
      const agent = new mod.Agent({ keepAlive: true, maxSockets: POOL });
      const key = base.protocol === 'https:' ? 'httpsAgent' : 'httpAgent';
      const vault = nodeVault({ endpoint: ADDR, token: TOKEN, requestOptions: { [key]: agent } });
      let requests = 0;
      return {
        read: async (p) => {
          requests += 1;
          check((await vault.read(p)).data.data);
        },
        requests: () => requests,
        close: () => agent.destroy(),
      };
    },
  },
};

/** One measurement: reads/s and client CPU µs per read. */
async function measure(name, c, reads = opts.reads) {
  const v = await variants[name].make();
  try {
    await drive(c, PATHS, v.read); // untimed: pool opened, token looked up
    const before = v.requests();
    globalThis.gc?.();
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    await drive(c, reads, v.read);
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    const sent = v.requests() - before;
    if (sent !== reads) throw new Error(`${name}: ${sent} requests for ${reads} reads (not every read was a miss)`);
    return { rate: reads / s, cpu: (cpu.user + cpu.system) / reads };
  } finally {
    await v.close();
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// ------------------------------------------------------------------ main
const created = await seed();
log(`${created} of ${PATHS} secrets created under maily/${PREFIX}/, ${opts.rounds} round(s) of ${opts.reads} reads`);
const names = Object.keys(variants);
for (const n of names) await measure(n, 16, 256); // untimed: the JIT warms up alike for all
const results = Object.fromEntries(CONCURRENCY.map((c) => [c, Object.fromEntries(names.map((n) => [n, { rounds: [], cpu: [] }]))]));
for (let r = 0; r < opts.rounds; r++) {
  for (const [ci, c] of CONCURRENCY.entries()) {
    const shift = (r + ci) % names.length;
    for (const n of [...names.slice(shift), ...names.slice(0, shift)]) {
      const m = await measure(n, c);
      results[c][n].rounds.push(m.rate);
      results[c][n].cpu.push(m.cpu);
      log(`c=${c} round ${r + 1}/${opts.rounds}: ${n} ${m.rate.toFixed(0)} reads/s, ${m.cpu.toFixed(1)} µs CPU/read`);
    }
  }
}

const figures = CONCURRENCY.map((c) => ({
  key: `ts_cold_reads_c${c}`,
  title: `TypeScript cold reads, concurrency ${c}`,
  description:
    `KV v2 reads of ${PATHS} distinct paths, every read a miss, ${c} concurrent reader(s); ` +
    `${opts.reads} timed reads per round after an untimed pass over the paths`,
  unit: 'reads/s',
  better: 'higher',
  variants: Object.fromEntries(names.map((n) => [n, { label: variants[n].label, rounds: results[c][n].rounds }])),
  goals: [
    { label: 'ours / bare node:http', num: 'ours', den: 'nodehttp', op: '>=', value: 0.95 },
    { label: 'ours / node-vault', num: 'ours', den: 'node_vault', op: '>=', value: 1.5 },
  ],
  notes: {
    concurrency: c,
    paths: PATHS,
    reads_per_round: opts.reads,
    pool_max_sockets: POOL,
    node: process.version,
    node_vault: nodeVaultVersion,
    root: opts.root,
    client_cpu_us_per_read: Object.fromEntries(names.map((n) => [n, results[c][n].cpu.map((x) => Math.round(x * 10) / 10)])),
    client_cpu_us_per_read_median: Object.fromEntries(names.map((n) => [n, Math.round(median(results[c][n].cpu) * 10) / 10])),
  },
}));
process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
