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

  put(path: string, entry: Entry): void {
    this.entries.set(path, entry);
  }

  peek(path: string): Entry | undefined {
    return this.entries.get(path);
  }

  invalidate(path?: string): void {
    if (path === undefined) this.entries.clear();
    else this.entries.delete(path);
  }

  get size(): number {
    return this.entries.size;
  }

  /** Run `loader` once for all concurrent callers of `path`; store the result. */
  load(path: string, loader: () => Promise<Entry>): Promise<Entry> {
    let p = this.inflight.get(path);
    if (p === undefined) {
      let started: Promise<Entry>;
      try {
        started = loader();
      } catch (e) {
        started = Promise.reject(e); // a loader that throws is a rejection, as an async one's
      }
      // One promise layer over the loader's (no async wrapper): a miss pays for what it needs.
      p = started.then(
        (entry) => {
          this.inflight.delete(path);
          this.entries.set(path, entry);
          return entry;
        },
        (e: unknown) => {
          this.inflight.delete(path);
          throw e;
        },
      );
      this.inflight.set(path, p);
    }
    return p;
  }
}
