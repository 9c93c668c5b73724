/**
 * In-memory secret cache (mirrors maily_secrets.cache): TTL per path, single-flight
 * loads, stale-if-error, copy-out. The cache never hands out the object it stores.
 */
import type { SecretData } from './client.js';

/** Deep copy of a JSON value (objects, arrays, scalars). */
export function jsonCopy<T>(value: T): T {
  if (Array.isArray(value)) return value.map(jsonCopy) as T;
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = jsonCopy(v);
    return out as T;
  }
  return value;
}

export class Entry {
  /** performance.now() of the fetch, ms. */
  fetched: number;
  private readonly flat: boolean;

  constructor(
    readonly value: SecretData,
    public version: number | null,
  ) {
    this.fetched = performance.now();
    let flat = true;
    for (const k in value) {
      const v = value[k];
      if (v !== null && typeof v === 'object') {
        flat = false;
        break;
      }
    }
    this.flat = flat;
  }

  copyOut(): SecretData {
    return this.flat ? { ...this.value } : jsonCopy(this.value);
  }

  /** Seconds since the fetch. */
  age(): number {
    return (performance.now() - this.fetched) / 1000;
  }
}

export class SecretCache {
  private readonly entries = new Map<string, Entry>();
  private readonly inflight = new Map<string, Promise<Entry>>();
  /**
   * Bumped per path by put() and invalidate(path), and for all by invalidate() (epoch): a load
   * stores its result only if neither moved while it ran. Not versions: a destroyed and
   * re-created secret starts again at version 1, so "higher version wins" would keep the old one.
   */
  private readonly generation = new Map<string, number>();
  private epoch = 0;

  constructor(
    /** seconds */ readonly ttl: number,
    /** seconds */ readonly maxStaleness: number,
  ) {}

  fresh(path: string): Entry | undefined {
    const e = this.entries.get(path);
    return e !== undefined && performance.now() - e.fetched < this.ttl * 1000 ? e : undefined;
  }

  usableStale(path: string): Entry | undefined {
    const e = this.entries.get(path);
    return e !== undefined && e.age() <= this.maxStaleness ? e : undefined;
  }

  /** Store `entry` (a write, a watcher's new version): a load in flight for `path` no longer stores its result. */
  put(path: string, entry: Entry): void {
    this.entries.set(path, entry);
    this.generation.set(path, (this.generation.get(path) ?? 0) + 1);
  }

  peek(path: string): Entry | undefined {
    return this.entries.get(path);
  }

  /** Forget `path` (or everything); a load in flight is not stored, and the next caller starts a new one. */
  invalidate(path?: string): void {
    if (path === undefined) {
      this.entries.clear();
      this.inflight.clear();
      this.generation.clear();
      this.epoch += 1;
    } else {
      this.entries.delete(path);
      this.inflight.delete(path);
      this.generation.set(path, (this.generation.get(path) ?? 0) + 1);
    }
  }

  get size(): number {
    return this.entries.size;
  }

  /**
   * Run `loader` once for all concurrent callers of `path`; store the result unless a put()
   * or an invalidate() came meanwhile (they win). Callers then get the entry the cache
   * holds (a write's), else the loaded one, not stored.
   */
  load(path: string, loader: () => Promise<Entry>): Promise<Entry> {
    let p = this.inflight.get(path);
    if (p === undefined) {
      const epoch = this.epoch;
      const generation = this.generation.get(path);
      let started: Promise<Entry>;
      try {
        started = loader();
      } catch (e) {
        started = Promise.reject(e); // a loader that throws is a rejection, as an async one's
      }
      // One promise layer over the loader's (no async wrapper): a miss pays for what it needs.
      const mine: Promise<Entry> = started.then(
        (entry) => {
          if (this.inflight.get(path) === mine) this.inflight.delete(path);
          if (this.epoch === epoch && this.generation.get(path) === generation) {
            this.entries.set(path, entry);
            return entry;
          }
          return this.entries.get(path) ?? entry;
        },
        (e: unknown) => {
          if (this.inflight.get(path) === mine) this.inflight.delete(path);
          throw e;
        },
      );
      p = mine;
      this.inflight.set(path, p);
    }
    return p;
  }
}
