/**
 * The change feed's writer side (mirrors maily_secrets.changes): the beacon.
 *
 * The beacon is one KV v2 secret, `<kvMount>/data/_changes` by default
 * (MAILY_SECRETS_CHANGE_FEED), whose data maps each secret's API path to its newest
 * version: `{"maily/data/config": 7, ...}`. Every write made through this client bumps
 * it, with check-and-set: read it, raise the entries, write it back at the version read;
 * on a CAS conflict (another writer got there first) read again and retry after a
 * jittered delay. An entry only grows (a late bump never lowers it). A bump that fails
 * never fails the write: it is a warning (path and error class, never a value), and
 * listeners elsewhere see the write at their slow per-path poll.
 *
 * Bumps of one client are coalesced: while one is being written, the next ones are
 * collected and written together. Listeners (listeners.ts) poll the beacon's metadata
 * once per interval, whatever the number of watched paths, and read a path only when
 * its entry moved past the version they have.
 *
 * No push: the Python client can also publish changes on Redis
 * (MAILY_SECRETS_CHANGE_PUSH); this client neither publishes nor subscribes.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { CheckAndSetConflict, PermissionDenied, SecretNotFound, VaultError } from './errors.js';
import { parseKV2, type KV2Path } from './paths.js';
import type { VaultApi } from './client.js';
import { changeFeedPath, type Logger, type VaultSettings } from './settings.js';

/** CAS attempts of one bump before it gives up (with a warning). */
export const MAX_BUMP_ATTEMPTS = 20;
/** ms: the cap of the jittered delay between two attempts (full jitter, doubling from 10 ms). */
export const BUMP_RETRY_CAP_MS = 1000;
const BUMP_RETRY_BASE_MS = 10;

/** The beacon's KV v2 path for these settings; null when the feed is off. */
export function beaconPath(s: Pick<VaultSettings, 'changeFeed' | 'kvMount'>): KV2Path | null {
  const path = changeFeedPath(s);
  if (path === null) return null;
  const kv = parseKV2(path);
  if (kv === null) throw new Error(`not a KV v2 path: ${path}`); // settings.ts refuses these first
  return kv;
}

/** The beacon's entries: `{path: version}`, anything that is not a positive integer ignored. */
export function beaconEntries(data: unknown): Map<string, number> {
  const out = new Map<string, number>();
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return out;
  for (const [k, v] of Object.entries(data as Record<string, unknown>)) {
    if (typeof v === 'number' && Number.isSafeInteger(v) && v > 0) out.set(k, v);
  }
  return out;
}

/** The beacon's data and KV version (0, {} when it does not exist yet). */
export async function readBeacon(api: VaultApi, kv: KV2Path): Promise<{ entries: Record<string, unknown>; version: number }> {
  try {
    const r = await api.kvRead(kv);
    return { entries: { ...r.data }, version: r.version };
  } catch (e) {
    if (!(e instanceof SecretNotFound)) throw e;
  }
  // absent (404: version 0) or its newest version deleted: write on top of current_version
  return { entries: {}, version: await api.kvCurrentVersion(kv) };
}

/** Bumps the beacon for the writes of one client. */
export class ChangeFeed {
  /** Writes of the beacon that succeeded (each may carry several bumps). */
  writes = 0;
  /** CAS conflicts met (each retried). */
  conflicts = 0;
  /** Bumps given up (warned). */
  failures = 0;
  private pending = new Map<string, number>();
  private next: Promise<void> | null = null;
  private running: Promise<void> = Promise.resolve();
  private warnedDenied = false;

  constructor(
    private readonly api: VaultApi,
    readonly beacon: KV2Path,
    private readonly logger: Logger,
  ) {}

  /**
   * Record that `path` (a KV v2 data path) is now at `version`. Resolves when the beacon
   * holds it (or the bump was given up and warned about); never rejects.
   */
  bump(path: string, version: number): Promise<void> {
    if (path === this.beacon.data || !(version > 0)) return Promise.resolve();
    this.pending.set(path, Math.max(this.pending.get(path) ?? 0, version));
    if (this.next === null) {
      const run = this.running.then(() => {
        this.next = null; // bumps from now on go into the following write
        const batch = this.pending;
        this.pending = new Map();
        return this.write(batch);
      });
      this.next = run;
      this.running = run;
    }
    return this.next;
  }

  private async write(batch: Map<string, number>): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        const { entries, version } = await readBeacon(this.api, this.beacon);
        let moved = false;
        for (const [path, v] of batch) {
          const have = entries[path];
          if (!(typeof have === 'number' && have >= v)) {
            entries[path] = v;
            moved = true;
          }
        }
        if (!moved) return; // someone else already recorded these versions (or newer)
        await this.api.kvWrite(this.beacon, entries, version);
        this.writes += 1;
        return;
      } catch (e) {
        if (e instanceof CheckAndSetConflict && attempt + 1 < MAX_BUMP_ATTEMPTS) {
          this.conflicts += 1;
          const cap = Math.min(BUMP_RETRY_CAP_MS, BUMP_RETRY_BASE_MS * 2 ** attempt);
          await sleep(Math.random() * cap);
          continue;
        }
        this.fail(batch, e, attempt + 1);
        return;
      }
    }
  }

  private fail(batch: Map<string, number>, e: unknown, attempts: number): void {
    this.failures += 1;
    const error = e instanceof Error ? e.name : typeof e;
    const paths = [...batch.keys()].sort();
    if (e instanceof PermissionDenied) {
      if (this.warnedDenied) return;
      this.warnedDenied = true;
    }
    const why =
      e instanceof PermissionDenied
        ? 'permission denied (the token may not write it; warned once)'
        : e instanceof CheckAndSetConflict
          ? `still conflicting after ${attempts} attempts`
          : e instanceof VaultError
            ? 'Vault error'
            : 'unexpected error';
    this.logger.warn(
      `change feed: the write of ${paths.join(', ')} is saved but not recorded in ${this.beacon.data} (${error}: ${why});` +
        ' listeners elsewhere see it at their full poll',
      { beacon: this.beacon.data, paths, error, attempts },
    );
  }
}
