/**
 * Secret listeners (mirrors maily_secrets.listeners): one watcher per path, any
 * number of callbacks.
 *
 * OpenBao has no event stream, so a watcher polls the secret's KV v2 metadata
 * (`<mount>/metadata/<name>`) every `interval` seconds (+-10% jitter) and reads the
 * data only when `current_version` moved. The cache is updated first, then every
 * callback gets its own copy. Each callback has its own runner: values arrive in
 * order, one at a time, the newest wins when it falls behind; an exception (or a
 * rejected promise) is logged with the path, never the value. During an outage the
 * watcher backs off (up to 8x). Non-KV paths are watched by comparing the value.
 */
import { Entry } from './cache.js';
import type { SecretData } from './client.js';
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

export class Watcher {
  readonly kv: KV2Path | null;
  version: number | null = null;
  private digest: string | null = null;
  readonly runners: Runner[] = [];
  private timer: NodeJS.Timeout | null = null;
  private failures = 0;
  private stopped = false;
  polls = 0;
  changes = 0;

  constructor(
    private readonly service: VaultClient,
    readonly path: string,
    readonly interval: number,
  ) {
    this.kv = parseKV2(path);
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
    this.schedule();
  }

  private delay(): number {
    const factor = Math.min(2 ** this.failures, MAX_BACKOFF_FACTOR);
    return this.interval * factor * (1 - JITTER + Math.random() * 2 * JITTER) * 1000;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.tick(), this.delay());
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

/** All watchers of one client: one per path. */
export class ListenerRegistry {
  readonly watchers = new Map<string, Watcher>();
  private starting = new Map<string, Promise<Watcher>>();

  constructor(private readonly service: VaultClient) {}

  async register(path: string, callback: SecretCallback, interval?: number): Promise<() => Promise<void>> {
    if (typeof callback !== 'function') throw new TypeError('callback must be a function');
    let w = this.watchers.get(path);
    if (w === undefined) {
      let p = this.starting.get(path);
      if (p === undefined) {
        const nw = new Watcher(this.service, path, interval ?? this.service.settings.listenerInterval);
        p = nw.start().then(() => {
          this.watchers.set(path, nw);
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
  }

  /** A write made through this client: notify now, and only once. */
  localWrite(path: string, entry: Entry): void {
    this.watchers.get(path)?.notify(entry);
  }

  close(): void {
    for (const w of this.watchers.values()) w.stop();
    this.watchers.clear();
  }
}
