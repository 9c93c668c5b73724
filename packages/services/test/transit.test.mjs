import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DecryptedNotText,
  DecryptionFailed,
  InvalidCiphertext,
  TransitContextError,
  TransitKeyNotFound,
  SecretNotFound,
} from '@maily/services/vault';
import { rootClient, uniqueName } from '../scripts/testkit.mjs';

const KEY = 'maily-enc-key';

test('encrypt/decrypt round trips: text, bytes, empty', async (t) => {
  const c = rootClient();
  t.after(() => c.close());
  const text = 'Grüße, 世界 ✓';
  const ct = await c.encrypt(KEY, text);
  assert.match(ct, /^vault:v\d+:/);
  assert.ok(!ct.includes(text));
  assert.equal(await c.decrypt(KEY, ct), text);
  const raw = new Uint8Array([0, 255, 1, 254, 128, 10]);
  const ctRaw = await c.encrypt(KEY, raw);
  const back = await c.decrypt(KEY, ctRaw, { asBytes: true });
  assert.ok(back instanceof Uint8Array);
  assert.deepEqual([...back], [...raw]);
  await assert.rejects(c.decrypt(KEY, ctRaw), (e) => {
    assert.ok(e instanceof DecryptedNotText);
    assert.match(e.message, /asBytes: true/);
    return true;
  });
  assert.equal(await c.decrypt(KEY, await c.encrypt(KEY, '')), '');
  assert.deepEqual([...(await c.decrypt(KEY, await c.encrypt(KEY, 'abc'), { asBytes: true }))], [97, 98, 99]);
});

test('derived keys need a context; the wrong context does not authenticate', async (t) => {
  const c = rootClient();
  t.after(() => c.close());
  const key = uniqueName('ts-derived');
  await c.api.write(`transit/keys/${key}`, { type: 'aes256-gcm96', derived: true });
  const ct = await c.encrypt(key, 'per-tenant', 'tenant-1');
  assert.equal(await c.decrypt(key, ct, { context: 'tenant-1' }), 'per-tenant');
  assert.equal(await c.decrypt(key, ct, 'tenant-1'), 'per-tenant');
  await assert.rejects(c.decrypt(key, ct, { context: 'tenant-2' }), DecryptionFailed);
  await assert.rejects(c.encrypt(key, 'x'), TransitContextError);
});

test('transit errors are typed and never carry plaintexts or ciphertexts', async (t) => {
  const c = rootClient();
  t.after(() => c.close());
  const ct = await c.encrypt(KEY, 'secret-plaintext-value');
  const tampered = ct.slice(0, -6) + (ct.slice(-6, -5) === 'A' ? 'B' : 'A') + ct.slice(-5);
  await assert.rejects(c.decrypt(KEY, tampered), (e) => {
    assert.ok(e instanceof InvalidCiphertext);
    assert.ok(!e.message.includes(tampered) && !e.message.includes('secret-plaintext-value'));
    return true;
  });
  await assert.rejects(c.decrypt(KEY, 'not-a-ciphertext'), InvalidCiphertext);
  await assert.rejects(c.encrypt('no-such-key-' + uniqueName('k'), 'secret-plaintext-value'), (e) => {
    assert.ok(e instanceof TransitKeyNotFound);
    assert.ok(e instanceof SecretNotFound);
    assert.ok(!e.message.includes('secret-plaintext-value'));
    return true;
  });
  await assert.rejects(c.encrypt(KEY, 42), TypeError);
});

test('MAILY_SECRETS_TRANSIT_MOUNT selects the mount', async (t) => {
  const c = rootClient({ transitMount: 'no-such-transit' });
  t.after(() => c.close());
  await assert.rejects(c.encrypt(KEY, 'x'), (e) => e instanceof SecretNotFound && /no-such-transit/.test(e.message));
});
