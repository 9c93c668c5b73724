// A load that was in flight when the cache learnt something newer (a write, a watcher's
// version, an invalidate) does not store what it read: the newer knowledge wins. Against the
// real OpenBao; the load is held after its real request returns (a gate around fetchEntry)
// so the order of events is fixed, not left to timing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rootClient, uniqueName } from '../scripts/testkit.mjs';

/** Hold the next load of `c` after its real fetch; returns { fetched, release }. */
function holdNextLoad(c) {
  const real = c.fetchEntry.bind(c);
  let release;
  const gate = new Promise((r) => (release = r));
  let fetched;
  const done = new Promise((r) => (fetched = r));
  c.fetchEntry = async (path) => {
    c.fetchEntry = real; // only the first load is held
    const entry = await real(path);
    fetched(entry);
    await gate;
    return entry;
  };
  return { fetched: done, release };
}

test('a read that started before putSecret does not overwrite the version putSecret wrote', async (t) => {
  const c = rootClient();
  t.after(() => c.close());
  const path = `maily/data/${uniqueName('race-put')}`;
  await c.putSecret(path, { v: 'one' }, { cas: 0 });
  c.invalidate(path);
  const held = holdNextLoad(c);
  const read = c.getSecret(path);
  assert.equal((await held.fetched).version, 1); // the load has read version 1 from Vault
  assert.equal(await c.putSecret(path, { v: 'two' }, { cas: 1 }), 2);
  held.release();
  assert.deepEqual(await read, { v: 'two' }, 'the waiting read gets what the cache holds: the write');
  const requests = c.api.stats.requests;
  assert.deepEqual(await c.getSecret(path), { v: 'two' });
  assert.equal(await c.getSecretVersion(path), 2);
  assert.equal(c.api.stats.requests, requests, 'served from the cache: the write was kept');
});

test('an invalidate during a load wins: the loaded value is not stored and the next read loads anew', async (t) => {
  const c = rootClient();
  const writer = rootClient();
  t.after(() => c.close());
  t.after(() => writer.close());
  const path = `maily/data/${uniqueName('race-inv')}`;
  await writer.putSecret(path, { v: 'one' }, { cas: 0 });
  const held = holdNextLoad(c);
  const read = c.getSecret(path);
  await held.fetched;
  await writer.putSecret(path, { v: 'two' }, { cas: 1 }); // another process writes
  c.invalidate(path); // and this one is told
  const next = c.getSecret(path); // does not join the held load
  assert.deepEqual(await next, { v: 'two' });
  held.release();
  assert.deepEqual(await read, { v: 'two' }, 'the held read answers with what the cache holds now (the newer load)');
  const requests = c.api.stats.requests;
  assert.deepEqual(await c.getSecret(path), { v: 'two' });
  assert.equal(await c.getSecretVersion(path), 2);
  assert.equal(c.api.stats.requests, requests, 'the newer load stayed stored');
});

test('invalidating everything during a load wins as well', async (t) => {
  const c = rootClient();
  const writer = rootClient();
  t.after(() => c.close());
  t.after(() => writer.close());
  const path = `maily/data/${uniqueName('race-all')}`;
  await writer.putSecret(path, { v: 'one' }, { cas: 0 });
  const held = holdNextLoad(c);
  const read = c.getSecret(path);
  await held.fetched;
  await writer.putSecret(path, { v: 'two' }, { cas: 1 });
  c.invalidate();
  held.release();
  assert.deepEqual(await read, { v: 'one' });
  assert.deepEqual(await c.getSecret(path), { v: 'two' });
});

test('a secret destroyed and re-created during a load (versions start again at 1): the re-created value wins over the older, higher version', async (t) => {
  const c = rootClient();
  t.after(() => c.close());
  const path = `maily/data/${uniqueName('race-recreate')}`;
  await c.putSecret(path, { v: 'a1' }, { cas: 0 });
  await c.putSecret(path, { v: 'a2' }, { cas: 1 });
  await c.putSecret(path, { v: 'a3' }, { cas: 2 });
  c.invalidate(path);
  const held = holdNextLoad(c);
  const read = c.getSecret(path);
  assert.equal((await held.fetched).version, 3);
  await c.api.delete(path.replace('/data/', '/metadata/')); // destroyed: created by this test
  assert.equal(await c.putSecret(path, { v: 'b1' }, { cas: 0 }), 1);
  held.release();
  assert.deepEqual(await read, { v: 'b1' });
  assert.deepEqual(await c.getSecret(path), { v: 'b1' });
  assert.equal(await c.getSecretVersion(path), 1);
});
