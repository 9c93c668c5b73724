/**
 * Secret listeners (mirrors maily_secrets.listeners): one watcher per path, any
 * number of callbacks.
 *
 * OpenBao has no event stream. With the change feed on (MAILY_SECRETS_CHANGE_FEED,
 * default), one {@link BeaconPoller} per client polls the beacon's metadata
 * (`<kvMount>/metadata/_changes`) every interval, whatever the number of watched paths,
 * reads the beacon's data only when its `current_version` moved, and reads a watched
 * path only when its entry moved past the version the watcher has. Each watcher still
 * polls its own metadata every MAILY_SECRETS_LISTENER_FULL_POLL_INTERVAL seconds (300):
 * that catches writes made around us (`bao kv put`). A 403 on the beacon turns every
 * watcher back to polling its path every interval (one warning).
 *
 * With the feed off, a watcher polls the secret's KV v2 metadata
 * (`<mount>/metadata/<name>`) every `interval` seconds (+-10% jitter) and reads the
 * data only when `current_version` moved. The cache is updated first, then every
 * callback gets its own copy. Each callback has its own runner: values arrive in
 * order, one at a time, the newest wins when it falls behind; an exception (or a
 * rejected promise) is logged with the path, never the value. During an outage the
 * watcher backs off (up to 8x). Non-KV paths are watched by comparing the value.
 */
import { Entry } from './cache.js';
import type { SecretData } from './client.js';
import { beaconEntries, beaconPath, readBeacon } from './changes.js';
import { PermissionDenied, SecretNotFound, VaultError } from './errors.js';
import { parseKV2, type KV2Path } from './paths.js';
import type { VaultClient } from './service.js';

export type SecretCallback = (value: SecretData) => unknown;
export const JITTER = 0.1;
export const MAX_BACKOFF_FACTOR = 8;

function cbName(cb: SecretCallback): string {
  return cb.name || 'anonymous';
}

class Runner {
  private pending: [number, SecretData] | null = null;
  private working: Promise<void> | null = null;
  private closed = false;
  calls = 0;
  failures = 0;

  constructor(
    readonly path: string,
    readonly callback: SecretCallback,
    private readonly service: VaultClient,
  ) {}

  deliver(version: number, value: SecretData): void {
    if (this.closed) return;
    this.pending = [version, value];
    if (this.working === null) {
      this.working = this.work().finally(() => {
        this.working = null;
      });
    }
  }

  private async work(): Promise<void> {
    await Promise.resolve(); // never call back synchronously from the poller
    while (this.pending !== null && !this.closed) {
      const [version, value] = this.pending;
      this.pending = null;
      try {
        await this.callback(value);
        this.calls += 1;
      } catch (e) {
        this.failures += 1;
        const error = e instanceof Error ? e.name : typeof e;
        this.service.logger.error(
          `secret listener ${cbName(this.callback)} for ${this.path} failed on version ${version}: ${error}`,
          { path: this.path, callback: cbName(this.callback), version, error },
        );
      }
    }
  }

  /** Wait until the callback processed everything delivered so far. */
  async idle(): Promise<void> {
    while (this.working !== null) await this.working;
  }

  close(): void {
    this.closed = true;
    this.pending = null;
  }
}

/**
 * How a watcher learns of changes: `path`, polling its own metadata every interval;
 * `beacon`, told by the client's {@link BeaconPoller}, polling its own metadata only
 * every full-poll interval.
 */
export type WatchMode = 'path' | 'beacon';

export class Watcher {
  readonly kv: KV2Path | null;
  version: number | null = null;
  private digest: string | null = null;
  readonly runners: Runner[] = [];
  private timer: NodeJS.Timeout | null = null;
  private failures = 0;
  private stopped = false;
  mode: WatchMode = 'path';
  /** The beacon entry last acted on (a read is made once per entry, not per beacon poll). */
  beaconSeen = 0;
  /** Polls of this path's metadata (every interval; with the beacon, the full polls). */
  polls = 0;
  /** Reads of this path's data because its beacon entry moved. */
  beaconReads = 0;
  changes = 0;

  constructor(
    private readonly service: VaultClient,
    readonly path: string,
    readonly interval: number,
  ) {
    this.kv = parseKV2(path);
  }

  /** Whether the beacon can tell this path's changes (a KV v2 secret read from Vault). */
  get beaconable(): boolean {
    return this.kv !== null && !this.service.servedFromFile(this.kv.data);
  }

  /** Seconds between two polls of this path's own metadata. */
  get period(): number {
    // A watcher without a baseline (registered during an outage) polls until it has one.
    if (this.mode === 'beacon' && this.version !== null) {
      return Math.max(this.interval, this.service.settings.listenerFullPollInterval);
    }
    return this.interval;
  }

  /** Switch how changes are learnt; the next poll of the path is rescheduled. */
  setMode(mode: WatchMode, { firstFullPoll = false } = {}): void {
    if (this.mode === mode || this.stopped) return;
    this.mode = mode;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
      this.schedule(firstFullPoll);
    }
  }

  /** Take the current version as the baseline (no callback for what exists now). */
  async start(): Promise<void> {
    try {
      if (this.kv !== null) {
        this.version = await this.service.currentVersion(this.kv);
      } else {
        const r = await this.service.api.read(this.path);
        this.digest = JSON.stringify(sortKeys(r.data));
        this.version = 0;
      }
    } catch (e) {
      if (e instanceof PermissionDenied || !(e instanceof VaultError)) throw e;
      if (e instanceof SecretNotFound) {
        this.version = 0;
      } else {
        const cached = this.service.cache.peek(this.path);
        this.version = cached?.version ?? null;
        this.service.logger.warn(`listener for ${this.path} registered while Vault is unavailable (${e.name}); polling`, {
          path: this.path,
        });
      }
    }
    this.schedule(true);
  }

  private delay(first = false): number {
    const factor = Math.min(2 ** this.failures, MAX_BACKOFF_FACTOR);
    const period = this.period;
    if (first && period > this.interval) {
      // The first full poll of each path at a random point of the second half of the
      // period: a thousand watchers registered together do not poll together.
      return period * (0.5 + Math.random() * 0.5) * 1000;
    }
    return period * factor * (1 - JITTER + Math.random() * 2 * JITTER) * 1000;
  }

  private schedule(first = false): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.tick(), this.delay(first));
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    this.timer = null;
    try {
      await this.pollOnce();
      if (this.failures) this.service.logger.info(`listener for ${this.path}: Vault reachable again`, { path: this.path });
      this.failures = 0;
    } catch (e) {
      this.failures += 1;
      if (this.failures === 1) {
        const error = e instanceof Error ? e.name : typeof e;
        this.service.logger.warn(`listener for ${this.path} cannot poll Vault (${error}); backing off`, { path: this.path, error });
      }
    }
    this.schedule();
  }

  async pollOnce(): Promise<void> {
    this.polls += 1;
    if (this.kv === null) return this.pollGeneric();
    const current = await this.service.currentVersion(this.kv);
    if (this.stopped) return;
    if (this.version === null) {
      this.version = current; // baseline after an outage at registration
      return;
    }
    if (current <= this.version) return;
    let entry: Entry;
    try {
      entry = await this.service.fetchEntry(this.path);
    } catch (e) {
      if (e instanceof SecretNotFound) {
        this.version = current; // the newest version was deleted: nothing to hand out
        return;
      }
      throw e;
    }
    if (this.stopped) return;
    this.service.cache.put(this.path, entry);
    this.notify(entry);
  }

  /**
   * The beacon says this path is at `entry`, past our version: read its data (one
   * request, no metadata read) and hand it out if it is newer.
   */
  async beaconMoved(entry: number): Promise<void> {
    this.beaconSeen = entry;
    this.beaconReads += 1;
    let fresh: Entry;
    try {
      fresh = await this.service.fetchEntry(this.path);
    } catch (e) {
      if (e instanceof SecretNotFound) return; // deleted since: nothing to hand out
      this.beaconSeen = 0; // try again at the next beacon poll
      const error = e instanceof Error ? e.name : typeof e;
      this.service.logger.warn(`listener for ${this.path}: cannot read it after the change feed moved (${error}); retrying`, {
        path: this.path,
        error,
      });
      return;
    }
    if (this.stopped || fresh.version === null || (this.version !== null && fresh.version <= this.version)) return;
    const cached = this.service.cache.peek(this.path);
    if (cached === undefined || cached.version === null || cached.version < fresh.version) this.service.cache.put(this.path, fresh);
    this.notify(fresh);
  }

  private async pollGeneric(): Promise<void> {
    const entry = await this.service.fetchEntry(this.path);
    const digest = JSON.stringify(sortKeys(entry.value));
    if (digest === this.digest || this.stopped) return;
    const first = this.digest === null;
    this.digest = digest;
    this.service.cache.put(this.path, entry);
    if (!first) {
      this.version = (this.version ?? 0) + 1;
      entry.version = this.version;
      this.notify(entry, true);
    }
  }

  /** Hand a new version to every callback (once per version). */
  notify(entry: Entry, force = false): void {
    if (!force) {
      if (entry.version === null || (this.version !== null && entry.version <= this.version)) return;
      this.version = entry.version;
    }
    this.changes += 1;
    for (const r of this.runners) r.deliver(this.version ?? 0, entry.copyOut());
  }

  add(callback: SecretCallback): Runner {
    const r = new Runner(this.path, callback, this.service);
    this.runners.push(r);
    return r;
  }

  remove(runner: Runner): void {
    const i = this.runners.indexOf(runner);
    if (i >= 0) this.runners.splice(i, 1);
    runner.close();
  }

  async idle(): Promise<void> {
    await Promise.all(this.runners.map((r) => r.idle()));
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    for (const r of this.runners) r.close();
  }
}

/**
 * One per client while the change feed is on and a KV v2 path is watched: polls the
 * beacon's metadata every interval (the shortest of the watchers'), its data only when
 * `current_version` moved, and tells each watcher whose entry moved past its version.
 */
export class BeaconPoller {
  /** The beacon's KV version last read (-1: not read yet; 0: it does not exist). */
  version = -1;
  entries = new Map<string, number>();
  /** Polls (each one metadata request; plus one data read when the beacon moved). */
  polls = 0;
  /** Reads of the beacon's data. */
  reads = 0;
  private timer: NodeJS.Timeout | null = null;
  private timerInterval = 0;
  private failures = 0;
  private stopped = false;
  private inflight: Promise<void> | null = null;
  /** The last poll got a 403: watchers poll their paths; polls every full-poll interval. */
  denied = false;
  private warnedDenied = false;

  constructor(
    private readonly service: VaultClient,
    private readonly registry: ListenerRegistry,
    readonly beacon: KV2Path,
  ) {}

  /**
   * Seconds between two polls: the shortest interval of the watchers it serves; while the
   * beacon is denied (403), the full-poll interval (each poll tries it again).
   */
  get interval(): number {
    let least = Infinity;
    for (const w of this.registry.watchers.values()) if (w.beaconable) least = Math.min(least, w.interval);
    const interval = Number.isFinite(least) ? least : this.service.settings.listenerInterval;
    return this.denied ? Math.max(interval, this.service.settings.listenerFullPollInterval) : interval;
  }

  /** (Re)start the timer when it is not running, or runs slower than `interval`. */
  ensure(interval: number): void {
    if (this.stopped || this.denied) return;
    if (this.timer !== null && this.timerInterval <= interval) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.schedule(interval);
  }

  private schedule(interval = this.interval): void {
    if (this.stopped) return;
    const factor = Math.min(2 ** this.failures, MAX_BACKOFF_FACTOR);
    this.timerInterval = interval;
    this.timer = setTimeout(() => void this.tick(), interval * factor * (1 - JITTER + Math.random() * 2 * JITTER) * 1000);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    this.timer = null;
    try {
      await this.pollOnce();
      if (this.failures) this.service.logger.info(`change feed ${this.beacon.data}: Vault reachable again`, { beacon: this.beacon.data });
      this.failures = 0;
    } catch (e) {
      if (e instanceof PermissionDenied) {
        this.deny(e);
        if (this.timer === null) this.schedule();
        return;
      }
      this.failures += 1;
      if (this.failures === 1) {
        const error = e instanceof Error ? e.name : typeof e;
        this.service.logger.warn(`change feed ${this.beacon.data}: cannot poll it (${error}); backing off`, {
          beacon: this.beacon.data,
          error,
        });
      }
    }
    if (this.timer === null) this.schedule();
  }

  /**
   * A 403 on the beacon: every watcher polls its own path each interval (one warning per
   * client); the beacon is tried again every full-poll interval.
   */
  private deny(e: PermissionDenied): void {
    if (this.denied) return;
    this.denied = true;
    if (!this.warnedDenied) {
      this.warnedDenied = true;
      this.service.logger.warn(
        `change feed ${this.beacon.data}: permission denied (${e.name}); listeners poll each path every interval,` +
          ` and the beacon is tried again every ${this.service.settings.listenerFullPollInterval}s` +
          ` (grant read on ${this.beacon.data} and ${this.beacon.metadata})`,
        { beacon: this.beacon.data, error: e.name },
      );
    }
    for (const w of this.registry.watchers.values()) w.setMode('path');
  }

  /** The beacon is readable again: the watchers go back under it. */
  private allowed(): void {
    this.denied = false;
    this.service.logger.info(`change feed ${this.beacon.data}: readable again; listeners follow it`, { beacon: this.beacon.data });
    for (const w of this.registry.watchers.values()) if (w.beaconable) w.setMode('beacon', { firstFullPoll: true });
  }

  /** One poll: the beacon's metadata, its data if it moved, then the watchers whose entry moved. */
  async pollOnce(): Promise<void> {
    const p = this.poll();
    this.inflight = p;
    try {
      await p;
    } finally {
      if (this.inflight === p) this.inflight = null;
    }
  }

  /** Resolves when no poll is running (tests: count requests between polls). */
  async idle(): Promise<void> {
    while (this.inflight !== null) await this.inflight.catch(() => undefined);
  }

  private async poll(): Promise<void> {
    this.polls += 1;
    const api = this.service.api;
    const current = await api.kvCurrentVersion(this.beacon); // 404: 0
    if (this.stopped) return;
    if (this.denied) {
      this.version = -1; // read its data again
      this.allowed();
    }
    if (current !== this.version) {
      if (current === 0) {
        this.entries = new Map();
        this.version = 0;
      } else {
        const b = await readBeacon(api, this.beacon);
        this.reads += 1;
        if (this.stopped) return;
        this.entries = beaconEntries(b.entries);
        this.version = b.version;
      }
    }
    const moved: Promise<void>[] = [];
    for (const w of this.registry.watchers.values()) {
      if (w.mode !== 'beacon' || w.version === null || w.kv === null) continue;
      const entry = this.entries.get(w.kv.data);
      if (entry !== undefined && entry > w.version && entry > w.beaconSeen) moved.push(w.beaconMoved(entry));
    }
    await Promise.all(moved);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((k) => [k, sortKeys((value as Record<string, unknown>)[k])]),
    );
  }
  return value;
}

/** All watchers of one client: one per path; the beacon poller while the feed is on. */
export class ListenerRegistry {
  readonly watchers = new Map<string, Watcher>();
  private starting = new Map<string, Promise<Watcher>>();
  /** The client's beacon poller (null: feed off, or no KV v2 path watched). */
  poller: BeaconPoller | null = null;

  constructor(private readonly service: VaultClient) {}

  /** Put a started watcher under the beacon when the feed can serve it. */
  private attach(w: Watcher): void {
    const beacon = w.beaconable ? beaconPath(this.service.settings) : null;
    if (beacon === null) return;
    if (this.poller === null) this.poller = new BeaconPoller(this.service, this, beacon);
    if (this.poller.denied) return; // polls its path until the beacon is readable again
    w.setMode('beacon', { firstFullPoll: true });
    this.poller.ensure(w.interval);
  }

  async register(path: string, callback: SecretCallback, interval?: number): Promise<() => Promise<void>> {
    if (typeof callback !== 'function') throw new TypeError('callback must be a function');
    let w = this.watchers.get(path);
    if (w === undefined) {
      let p = this.starting.get(path);
      if (p === undefined) {
        const nw = new Watcher(this.service, path, interval ?? this.service.settings.listenerInterval);
        p = nw.start().then(() => {
          this.watchers.set(path, nw);
          this.attach(nw);
          return nw;
        });
        p.finally(() => this.starting.delete(path)).catch(() => undefined);
        this.starting.set(path, p);
      }
      w = await p;
    }
    const watcher = w;
    const runner = watcher.add(callback);
    let done = false;
    return async () => {
      if (done) return;
      done = true;
      watcher.remove(runner);
      if (watcher.runners.length === 0) this.drop(watcher);
    };
  }

  /** Remove the most recent registration of `callback` on `path`; false if none. */
  unregister(path: string, callback: SecretCallback): boolean {
    const w = this.watchers.get(path);
    if (w === undefined) return false;
    for (let i = w.runners.length - 1; i >= 0; i--) {
      const r = w.runners[i]!;
      if (r.callback === callback) {
        w.remove(r);
        if (w.runners.length === 0) this.drop(w);
        return true;
      }
    }
    return false;
  }

  private drop(w: Watcher): void {
    if (this.watchers.get(w.path) === w) this.watchers.delete(w.path);
    w.stop();
    if (this.poller !== null && ![...this.watchers.values()].some((x) => x.beaconable)) {
      this.poller.stop();
      this.poller = null;
    }
  }

  /** A write made through this client: notify now, and only once. */
  localWrite(path: string, entry: Entry): void {
    this.watchers.get(path)?.notify(entry);
  }

  close(): void {
    this.poller?.stop();
    this.poller = null;
    for (const w of this.watchers.values()) w.stop();
    this.watchers.clear();
  }
}
