import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rootClient, recordingLogger, uniqueName, waitFor, sleep } from '../scripts/testkit.mjs';

async function freshSecret(writer, value) {
  const path = `maily/data/${uniqueName('ts-listener')}`;
  await writer.putSecret(path, value, { cas: 0 });
  return path;
}

test('onChange fires once per change, cache first, each callback isolated, unsubscribe and close stop it', async (t) => {
  const writer = rootClient();
  const log = recordingLogger();
  const c = rootClient({ cacheTtl: 3600, listenerInterval: 0.1 }, { logger: log });
  t.after(() => writer.close());
  t.after(() => c.close());
  const path = await freshSecret(writer, { n: 1 });
  assert.deepEqual(await c.getSecret(path), { n: 1 }); // cached for an hour

  const seen = [];
  const seenByOther = [];
  const fromCache = [];
  const unsubscribe = await c.onChange(path, async (value) => {
    seen.push(structuredClone(value));
    fromCache.push(await c.getSecret(path)); // the cache was updated before the callback
    value.n = 'mutated by the first callback';
  });
  const failing = () => {
    throw new Error('boom with no secret in it');
  };
  await c.onChange(path, failing);
  await c.onChange(path, (value) => seenByOther.push(value));
  assert.equal(c.watcher(path).runners.length, 3, 'one watcher per path');

  await sleep(350);
  assert.equal(seen.length, 0, 'no callback for what exists at registration');

  await writer.putSecret(path, { n: 2 }, { cas: 1 });
  await waitFor(() => seen.length === 1 && seenByOther.length === 1);
  await sleep(400); // several more polls: still once
  assert.equal(seen.length, 1);
  assert.equal(seenByOther.length, 1);
  assert.deepEqual(seenByOther[0], { n: 2 }, 'own copy: the first callback mutated its value only');
  assert.deepEqual(fromCache[0], { n: 2 });
  const errors = log.lines.filter((l) => l.level === 'error');
  assert.equal(errors.length, 1);
  assert.match(errors[0].message, new RegExp(`secret listener failing for ${path} failed on version 2: Error`));
  assert.ok(!errors[0].message.includes('boom'));

  await writer.putSecret(path, { n: 3 }, { cas: 2 });
  await waitFor(() => seen.length === 2 && seenByOther.length === 2);
  assert.deepEqual(seen[1], { n: 3 });

  await unsubscribe();
  await unsubscribe(); // idempotent
  assert.equal(c.offChange(path, failing), true);
  assert.equal(c.offChange(path, failing), false);
  await writer.putSecret(path, { n: 4 }, { cas: 3 });
  await waitFor(() => seenByOther.length === 3);
  assert.equal(seen.length, 2, 'unsubscribed callback is not called');

  await c.close();
  assert.equal(c.watcher(path), undefined);
  await writer.putSecret(path, { n: 5 }, { cas: 4 });
  await sleep(400);
  assert.equal(seenByOther.length, 3, 'close() stops every watcher');
});

test('polls metadata only; data is read only when the version moved', async (t) => {
  const writer = rootClient();
  const c = rootClient({ listenerInterval: 0.05, changeFeed: 'off' }); // per-path polling (the feed: changefeed.test.mjs)
  t.after(() => writer.close());
  t.after(() => c.close());
  const path = await freshSecret(writer, { v: 'a' });
  const got = [];
  await c.onChange(path, (v) => got.push(v));
  const w = c.watcher(path);
  await waitFor(() => w.polls >= 5);
  const gets = c.api.stats.byMethod.GET;
  const polls = w.polls;
  await waitFor(() => w.polls >= polls + 5);
  const perPoll = (c.api.stats.byMethod.GET - gets) / (w.polls - polls);
  assert.ok(perPoll <= 1.01 && perPoll >= 0.5, `one metadata GET per poll, got ${perPoll}`);
  assert.equal(w.changes, 0);
  await writer.putSecret(path, { v: 'b' }, { cas: 1 });
  await waitFor(() => got.length === 1);
  assert.deepEqual(got, [{ v: 'b' }]);
  assert.equal(w.version, 2);
});

test('a slow callback gets the newest value (in order, one at a time, intermediate skipped)', async (t) => {
  const writer = rootClient();
  const c = rootClient({ listenerInterval: 0.05 });
  t.after(() => writer.close());
  t.after(() => c.close());
  const path = await freshSecret(writer, { i: 0 });
  const got = [];
  let running = 0;
  let overlap = false;
  await c.onChange(path, async (v) => {
    running += 1;
    if (running > 1) overlap = true;
    await sleep(400);
    got.push(v.i);
    running -= 1;
  });
  await writer.putSecret(path, { i: 1 }, { cas: 1 });
  await waitFor(() => running === 1);
  for (let i = 2; i <= 4; i++) {
    await writer.putSecret(path, { i }, { cas: i });
    await sleep(120);
  }
  await waitFor(() => got.at(-1) === 4, { within: 5000 });
  assert.equal(overlap, false);
  assert.equal(got[0], 1);
  assert.deepEqual([...got].sort(), got, 'in order');
  assert.ok(got.length < 5);
});

test('a local putSecret notifies once (the watcher does not report it again)', async (t) => {
  const c = rootClient({ listenerInterval: 0.05 });
  t.after(() => c.close());
  const path = await freshSecret(c, { x: 1 });
  const got = [];
  await c.onChange(path, (v) => got.push(v));
  await c.putSecret(path, { x: 2 }, { cas: 1 });
  await waitFor(() => got.length === 1);
  await sleep(300);
  assert.deepEqual(got, [{ x: 2 }]);
  assert.deepEqual(await c.getSecret(path), { x: 2 });
});
