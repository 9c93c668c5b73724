/**
 * `VaultClient`: the facade the guide documents (mirrors maily_secrets.service.VaultService).
 *
 * Constructing a client does no I/O and starts no timer; the connection pool and the
 * login happen on first use. `close()` releases everything; a closed client may be used
 * again (it then starts afresh, re-reading the environment unless given settings).
 */
import { Entry, SecretCache, jsonCopy } from './cache.js';
import { VaultApi, kvValue, type Consistency, type SecretData } from './client.js';
import { DecryptedNotText, InvalidPath, InvalidSecretValue, SecretNotFound, VaultUnavailable } from './errors.js';
import { ChangeFeed, beaconPath } from './changes.js';
import { ListenerRegistry, type BeaconPoller, type SecretCallback } from './listeners.js';
import { parseKV2, validatePath, type KV2Path } from './paths.js';
import { consoleLogger, loadSettings, type Logger, type VaultSettings } from './settings.js';
import { Transit, type Plaintext } from './transit.js';
import { FileSecret } from './filesource.js';

export interface VaultClientOptions {
  /** Explicit settings; anything not given is read from the environment. */
  settings?: Partial<VaultSettings>;
  /** Where warnings (stale values, failing listeners) go; default: console. */
  logger?: Logger;
  consistency?: Consistency;
}

export interface DecryptOptions {
  context?: Plaintext;
  /** Return the raw bytes instead of UTF-8 text. */
  asBytes?: boolean;
}

export interface OnChangeOptions {
  /** Seconds between polls; default MAILY_SECRETS_LISTENER_INTERVAL (30). */
  interval?: number;
}

export type CacheStatus = 'hit' | 'miss' | 'stale';

/** Checks a secret's value: returns it typed, or is a type guard (true/false). */
export type SecretValidator<T> = ((value: SecretData) => T) | ((value: SecretData) => value is T & SecretData);

function checked<T>(path: string, value: SecretData, validate: SecretValidator<T>): T {
  let out: unknown;
  try {
    out = validate(value);
  } catch (e) {
    const kind = e instanceof Error ? e.constructor.name : typeof e;
    throw new InvalidSecretValue(`the value of ${JSON.stringify(path)} was refused by its validator (${kind})`, { path });
  }
  if (out === false) {
    throw new InvalidSecretValue(`the value of ${JSON.stringify(path)} was refused by its validator`, { path });
  }
  return (out === true ? value : out) as T;
}

export class VaultClient {
  readonly logger: Logger;
  private readonly options: VaultClientOptions;
  private _settings: VaultSettings | null = null;
  private _api: VaultApi | null = null;
  private _cache: SecretCache | null = null;
  private _listeners: ListenerRegistry | null = null;
  private _transit: Transit | null = null;
  private _fileSecret: FileSecret | null = null;
  private _changes: ChangeFeed | null | undefined = undefined;
  private readonly warnedStale = new Set<string>();

  constructor(options: VaultClientOptions = {}) {
    this.options = options;
    this.logger = options.logger ?? consoleLogger;
  }

  // ---------------------------------------------------------------- wiring
  get settings(): VaultSettings {
    if (this._settings === null) this._settings = loadSettings(this.options.settings ?? {});
    return this._settings;
  }

  /** The low-level API client (requests, KV v2, token manager, stats). */
  get api(): VaultApi {
    if (this._api === null) {
      const o: ConstructorParameters<typeof VaultApi>[1] = { logger: this.logger };
      if (this.options.consistency !== undefined) o.consistency = this.options.consistency;
      this._api = new VaultApi(this.settings, o);
    }
    return this._api;
  }

  get cache(): SecretCache {
    if (this._cache === null) this._cache = new SecretCache(this.settings.cacheTtl, this.settings.maxStaleness);
    return this._cache;
  }

  private get listeners(): ListenerRegistry {
    if (this._listeners === null) this._listeners = new ListenerRegistry(this);
    return this._listeners;
  }

  /** The transit engine (MAILY_SECRETS_TRANSIT_MOUNT, default `transit`). */
  get transit(): Transit {
    if (this._transit === null) this._transit = new Transit(this.api, this.settings.transitMount);
    return this._transit;
  }

  get kvMount(): string {
    return this.settings.kvMount;
  }

  // ---------------------------------------------------------------- the guide's API
  /**
   * Any secret by its API path (`maily/data/config`); KV v2 data is unwrapped.
   *
   * `getSecret<T>(path)` types the value as `T` (unchecked); `getSecret(path, validate)`
   * checks it: `validate` returns the typed value (a zod `schema.parse` fits), or is a
   * type guard returning true/false. A throw or `false` rejects with
   * {@link InvalidSecretValue}, naming the path and the error's class, never the value.
   */
  async getSecret<T = SecretData>(path: string, validate?: SecretValidator<T>): Promise<T> {
    const entry = typeof path === 'string' ? this.cache.fresh(path) : undefined; // only validated paths are cached
    const value = entry !== undefined ? entry.copyOut() : await this.load(validatePath(path));
    return validate === undefined ? (value as T) : checked(path, value, validate);
  }

  /** Core configuration: `<mount>/data/config` (typed and checked as {@link getSecret}). */
  // async: an invalid setting (read on first use) is a rejection, never a synchronous throw
  async getConfig<T = SecretData>(validate?: SecretValidator<T>): Promise<T> {
    return this.getSecret<T>(`${this.kvMount}/data/config`, validate);
  }

  /** API keys for external services: `<mount>/data/api-keys`. */
  async getApiKeys(): Promise<SecretData> {
    return this.getSecret(`${this.kvMount}/data/api-keys`);
  }

  /** The credentials object of one service from `<mount>/data/credentials`. */
  async getCredentials(service: string): Promise<SecretData> {
    const path = `${this.kvMount}/data/credentials`;
    if (typeof service !== 'string' || !service) {
      throw new InvalidPath('service name must be a non-empty string', { path });
    }
    const value = await this.get(path);
    const creds = value[service];
    if (creds === null || typeof creds !== 'object' || Array.isArray(creds)) {
      const present = Object.keys(value).sort().join(', ') || 'none';
      throw new SecretNotFound(
        `no credentials for service ${JSON.stringify(service)} in ${JSON.stringify(path)} (services present: ${present})`,
        { path },
      );
    }
    return creds as SecretData;
  }

  /** The KV v2 version of the cached value of `path` (reads it if needed). */
  async getSecretVersion(path: string): Promise<number | null> {
    validatePath(path);
    await this.get(path);
    return this.cache.peek(path)?.version ?? null;
  }

  // ---------------------------------------------------------------- listeners
  /**
   * Call `callback(newValue)` whenever the secret at `path` changes. Resolves (after
   * reading the current version as the baseline) to an unsubscribe function.
   */
  async onChange(path: string, callback: SecretCallback, options: OnChangeOptions = {}): Promise<() => Promise<void>> {
    validatePath(path);
    return this.listeners.register(path, callback, options.interval);
  }

  /** Remove the most recent registration of `callback` on `path`; false if there was none. */
  offChange(path: string, callback: SecretCallback): boolean {
    return this._listeners?.unregister(path, callback) ?? false;
  }

  /** The watcher of `path` (tests, diagnostics). */
  watcher(path: string) {
    return this._listeners?.watchers.get(path);
  }

  /** The listeners' beacon poller, while the change feed serves a watched path (tests, diagnostics). */
  beaconPoller(): BeaconPoller | null {
    return this._listeners?.poller ?? null;
  }

  /** The change feed's writer (bumps the beacon after each write); null when MAILY_SECRETS_CHANGE_FEED=off. */
  get changeFeed(): ChangeFeed | null {
    if (this._changes === undefined) {
      const beacon = beaconPath(this.settings);
      this._changes = beacon === null ? null : new ChangeFeed(this.api, beacon, this.logger);
    }
    return this._changes;
  }

  // ---------------------------------------------------------------- encryption as a service
  /** Encrypt with the transit key `key`; a string is UTF-8 encoded. Returns `vault:vN:...`. */
  async encrypt(key: string, plaintext: Plaintext, context?: Plaintext): Promise<string> {
    return this.transit.encrypt(key, plaintext, context);
  }

  /** Decrypt a ciphertext of `key`: UTF-8 text by default, bytes with `{ asBytes: true }`. */
  decrypt(key: string, ciphertext: string, options?: DecryptOptions & { asBytes?: false }): Promise<string>;
  decrypt(key: string, ciphertext: string, options: DecryptOptions & { asBytes: true }): Promise<Uint8Array>;
  decrypt(key: string, ciphertext: string, context: Plaintext): Promise<string>;
  async decrypt(key: string, ciphertext: string, options?: DecryptOptions | Plaintext): Promise<string | Uint8Array> {
    const o: DecryptOptions = typeof options === 'string' || options instanceof Uint8Array ? { context: options } : (options ?? {});
    const raw = await this.transit.decrypt(key, ciphertext, o.context);
    if (o.asBytes) return raw;
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(raw);
    } catch {
      throw new DecryptedNotText(
        `plaintext decrypted with transit key ${JSON.stringify(key)} is not UTF-8 text; call decrypt(key, ct, { asBytes: true })`,
      );
    }
  }

  // ---------------------------------------------------------------- writes
  /**
   * Write a new version of a KV v2 secret if its current version is `cas` (0: create
   * only). Throws CheckAndSetConflict when someone else wrote first. The cache is updated
   * and this client's listeners are told once; then the change feed's beacon is bumped
   * (listeners in other processes learn of it at their next beacon poll). A failed bump
   * is a warning, never a failure of the write.
   */
  async putSecret(path: string, data: SecretData, options: { cas: number }): Promise<number> {
    const kv = this.kvPath(path);
    const version = await this.api.kvWrite(kv, data, options.cas);
    if (this.fromFile(path) === null) {
      // (a file-served path: the file is what we serve, its watcher sees the re-render)
      const entry = new Entry(jsonCopy(data), version);
      const current = this.cache.peek(path);
      if (current === undefined || current.version === null || current.version < version) this.cache.put(path, entry);
      this._listeners?.localWrite(path, entry);
    }
    await this.changeFeed?.bump(kv.data, version);
    return version;
  }

  private kvPath(path: string): KV2Path {
    const kv = parseKV2(path);
    if (kv === null) throw new InvalidPath(`${JSON.stringify(path)} is not a KV v2 data path (<mount>/data/<name>)`, { path });
    return kv;
  }

  /** Drop `path` (or everything) from the in-memory cache. */
  invalidate(path?: string): void {
    this._cache?.invalidate(path);
  }

  /** Stop listeners and token renewal, close connections, forget the cache. Safe to call twice. */
  async close(): Promise<void> {
    this._listeners?.close();
    this._listeners = null;
    this._api?.close();
    this._api = null;
    this._settings = null;
    this._cache = null;
    this._transit = null;
    this._fileSecret = null;
    this._changes = undefined;
    this.warnedStale.clear();
  }

  // ---------------------------------------------------------------- internals
  /** A private copy of the value: from the cache when fresh, else loaded. */
  private async get(path: string): Promise<SecretData> {
    const fresh = this.cache.fresh(path);
    return fresh !== undefined ? fresh.copyOut() : this.load(path);
  }

  /** Load `path` (single-flight) and copy it out; on an outage, the last value if usable. */
  private async load(path: string): Promise<SecretData> {
    const cache = this.cache;
    let entry: Entry;
    try {
      entry = await cache.load(path, () => this.fetchEntry(path));
    } catch (e) {
      if (e instanceof VaultUnavailable) {
        const stale = cache.usableStale(path);
        if (stale !== undefined) {
          this.warnStale(path, e, stale.age());
          return stale.copyOut();
        }
      }
      throw e;
    }
    if (this.warnedStale.size !== 0) this.warnedStale.delete(path);
    return entry.copyOut();
  }

  /** The file source serving `path` (MAILY_CONFIG_FILE serves `<mount>/data/config`). */
  private fromFile(path: string): FileSecret | null {
    if (this._fileSecret === null) {
      const file = this.settings.configFile;
      if (file === undefined) return null;
      this._fileSecret = new FileSecret(file, `${this.kvMount}/data/config`, this.logger);
    }
    return this._fileSecret.path === path ? this._fileSecret : null;
  }

  /** Whether `path` is served from MAILY_CONFIG_FILE rather than read from Vault. */
  servedFromFile(path: string): boolean {
    return this.fromFile(path) !== null;
  }

  /** The current version of a KV v2 secret (a file-served path: its content changes). */
  async currentVersion(kv: KV2Path): Promise<number> {
    const f = this.fromFile(kv.data);
    return f !== null ? f.version() : this.api.kvCurrentVersion(kv);
  }

  /** Read `path` from Vault (no cache); a file-served path from its file (no request, no token). */
  async fetchEntry(path: string): Promise<Entry> {
    const file = this.fromFile(path);
    if (file !== null) return file.entry();
    const kv = parseKV2(path);
    if (kv !== null) {
      const v = kvValue(kv, await this.api.request('GET', kv.data)); // kvRead, one promise fewer
      return new Entry(v.data, v.version);
    }
    const r = await this.api.read(path);
    if (r.data === null) throw new SecretNotFound(`secret ${JSON.stringify(path)} returned no data`, { path });
    return new Entry(r.data, null);
  }

  private warnStale(path: string, e: VaultUnavailable, age: number): void {
    if (this.warnedStale.has(path)) return;
    this.warnedStale.add(path);
    this.logger.warn(`Vault unavailable; serving last known value of ${path} (${age.toFixed(0)}s old, from memory): ${e.message}`, {
      path,
      age_s: Math.round(age * 10) / 10,
      source: 'memory',
    });
  }
}
