// The contract both clients obey: tests/conformance/cases.json (also read by
// tests/test_conformance.py for the Python client). No Vault needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as vault from '@maily/services/vault';
import { validatePath, InvalidPath, loadSettings, ConfigurationError, shouldRetry, redirectTarget, errorClass } from '@maily/services/vault';

const CASES = JSON.parse(readFileSync(new URL('../../../tests/conformance/cases.json', import.meta.url), 'utf8'));

function valid(path) {
  try {
    validatePath(path);
    return true;
  } catch (e) {
    if (!(e instanceof InvalidPath)) throw e;
    return false;
  }
}

const hex = (cp) => 'U+' + cp.toString(16).toUpperCase().padStart(4, '0');
const esc = (s) => JSON.stringify(s).replace(/[^\x20-\x7e]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));

test('conformance (a): path validity', () => {
  const wrong = [];
  for (const c of CASES.paths.cases) if (valid(c.path) !== c.valid) wrong.push(`${esc(c.path)}: ${c.why}`);
  for (const c of CASES.paths.repeat) {
    if (valid(c.prefix + c.unit.repeat(c.count)) !== c.valid) wrong.push(c.why);
  }
  assert.deepEqual(wrong, []);
});

test('conformance (a): the forbidden character table, BMP in full, astral sampled', () => {
  const ranges = CASES.paths.forbidden_ranges;
  const table = new Uint8Array(0x110000);
  for (const [lo, hi] of ranges) table.fill(1, lo, hi + 1);
  const special = new Set(['?', '#', '%', '\\', '/', ' ']);
  // Every BMP code point; beyond it, each range's ends and neighbours and a sample.
  const points = new Set();
  for (let cp = 0; cp <= 0xffff; cp++) points.add(cp);
  for (let cp = 0x10000; cp < 0x110000; cp += 0x3f) points.add(cp);
  for (const [lo, hi] of ranges) for (const cp of [lo - 1, lo, (lo + hi) >> 1, hi, hi + 1]) if (cp >= 0 && cp < 0x110000) points.add(cp);
  const wrong = [];
  for (const cp of points) {
    const ch = String.fromCodePoint(cp);
    if (special.has(ch)) continue;
    const ok = valid(`m/a${ch}b`);
    if (ok === Boolean(table[cp])) wrong.push(`${hex(cp)} ${ok ? 'accepted' : 'refused'}`);
    if (wrong.length > 20) break;
  }
  assert.deepEqual(wrong, []);
});

test('conformance (b): status -> error class', () => {
  for (const c of CASES.errors.cases) {
    const expected = vault[c.class];
    assert.equal(typeof expected, 'function', `errors.ts has no ${c.class}`);
    assert.equal(errorClass(c.status, c.detail), expected, `${c.status} ${c.detail}`);
  }
});

test('conformance (c): the retry matrix', () => {
  const safeMethods = new Set(CASES.retry.idempotent_methods);
  const wrong = [];
  let rows = 0;
  for (const method of CASES.retry.methods) {
    for (const o of CASES.retry.outcomes) {
      for (const idempotent of [null, true, false]) {
        const safe = idempotent === null ? safeMethods.has(method.toUpperCase()) : idempotent;
        const want = { always: true, never: false, idempotent: safe }[o.retry];
        const got = shouldRetry(method, { status: o.status, failure: o.failure, detail: o.detail ?? '', idempotent });
        rows += 1;
        if (got !== want) wrong.push(JSON.stringify({ method, ...o, idempotent, want }));
      }
    }
  }
  assert.ok(rows >= 9 * 20 * 3);
  assert.deepEqual(wrong, []);
});

test('conformance (d): settings defaults and environment names', () => {
  const defaults = loadSettings({}, {});
  const prefixes = CASES.settings.prefixes;
  for (const f of CASES.settings.fields) {
    assert.ok(f.ts in defaults, `loadSettings has no ${f.ts}`);
    assert.deepEqual(defaults[f.ts] ?? null, f.default, `default of ${f.ts}`);
    for (const name of f.env) assert.ok(prefixes.some((p) => name.startsWith(p)), name);
    if (f.example) {
      for (const name of f.env) {
        const s = loadSettings({}, { [name]: f.example[0] });
        assert.deepEqual(s[f.ts], f.example[1], `${name}=${f.example[0]}`);
      }
      if (f.env.length > 1) {
        // the first name wins over the later ones
        const s = loadSettings({}, { [f.env[1]]: 'ignored', [f.env[0]]: f.example[0] });
        assert.deepEqual(s[f.ts], f.example[1], `${f.env[0]} before ${f.env[1]}`);
      }
    }
  }
});

test('conformance (d): invalid values are a ConfigurationError naming the variable', () => {
  for (const c of CASES.settings.invalid) {
    assert.throws(
      () => loadSettings({}, c.env),
      (e) => {
        assert.ok(e instanceof ConfigurationError, `${JSON.stringify(c.env)}: ${e}`);
        assert.ok(e instanceof vault.VaultError);
        assert.equal(e.variable, c.variable);
        assert.match(e.message, new RegExp(c.variable));
        return true;
      },
      JSON.stringify(c.env),
    );
  }
});

function render(u) {
  if (u === null) return null;
  const port = u.port === '' ? { 'http:': 80, 'https:': 443 }[u.protocol] : Number(u.port);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  return `${u.protocol.slice(0, -1)}://${host}:${port}${u.pathname}${u.search}`;
}

test('conformance (e): the redirect rule', () => {
  const wrong = [];
  for (const c of CASES.redirects.cases) {
    const got = render(redirectTarget(c.current, c.location, c.members));
    if (got !== c.target) wrong.push(`${c.why}: got ${got}, want ${c.target}`);
  }
  assert.deepEqual(wrong, []);
});
