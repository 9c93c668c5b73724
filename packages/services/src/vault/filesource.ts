/**
 * A secret served from a file that Vault Agent renders (MAILY_CONFIG_FILE), as in
 * maily_secrets/filesource.py: `getConfig()` returns the file's JSON object, the
 * listeners of the config path poll the file (one stat per poll; the file is read
 * again only when its inode, size or mtime moved) and fire once per content change.
 * A missing, partial, non-JSON or non-object file keeps the last good value and logs
 * one warning per bad spell (the file and the reason, never a value).
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { Entry } from './cache.js';
import type { SecretData } from './client.js';
import { VaultUnavailable } from './errors.js';
import type { Logger } from './settings.js';

const MAX_BYTES = 8 << 20;

/** The rendered file has never been readable as a JSON object in this process. */
export class ConfigFileUnavailable extends VaultUnavailable {}

export class FileSecret {
  private signature: string | null = null;
  private digest: string | null = null;
  private value: SecretData | null = null;
  private _version = 0;
  private bad: string | null = null;
  /** File reads (not stats). */
  reads = 0;

  constructor(
    readonly file: string,
    readonly path: string,
    private readonly logger: Logger,
  ) {}

  /** The content version after checking the file (0: never read successfully). */
  version(): number {
    this.check();
    return this._version;
  }

  /** The last good value as a cache entry (checks the file first). */
  entry(): Entry {
    this.check();
    if (this.value === null) {
      throw new ConfigFileUnavailable(
        `${JSON.stringify(this.path)} is served from ${this.file} (MAILY_CONFIG_FILE), which is not readable as a JSON object: ${this.bad ?? 'not read yet'}`,
        { path: this.path },
      );
    }
    return new Entry(this.value, this._version);
  }

  toJSON(): Record<string, unknown> {
    return { path: this.path, file: this.file, version: this._version }; // never the value
  }

  private check(): void {
    let sig: string;
    let size: number;
    try {
      const st = statSync(this.file, { bigint: true });
      sig = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
      size = Number(st.size);
    } catch (e) {
      this.signature = null;
      this.failed((e as NodeJS.ErrnoException).code ?? 'cannot stat');
      return;
    }
    if (sig === this.signature) return;
    const [value, raw, why] = this.read(size);
    if (value === null) {
      this.signature = null; // a partial write: try again at the next check
      this.failed(why);
      return;
    }
    this.signature = sig;
    if (this.bad !== null) {
      this.bad = null;
      this.logger.info(`${this.file} is a valid JSON object again; serving it for ${this.path}`, { file: this.file, path: this.path });
    }
    const digest = createHash('sha256').update(raw).digest('hex');
    if (digest === this.digest) return;
    this.digest = digest;
    this.value = value;
    this._version += 1;
  }

  private read(size: number): [SecretData | null, Buffer, string] {
    const empty = Buffer.alloc(0);
    if (size > MAX_BYTES) return [null, empty, `larger than ${MAX_BYTES} bytes`];
    let raw: Buffer;
    try {
      raw = readFileSync(this.file);
    } catch (e) {
      return [null, empty, (e as NodeJS.ErrnoException).code ?? 'cannot read'];
    }
    this.reads += 1;
    let value: unknown;
    try {
      value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(raw));
    } catch (e) {
      return [null, raw, e instanceof SyntaxError ? 'not valid JSON' : 'not UTF-8']; // never the parser's text: it quotes the file
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      return [null, raw, `a JSON ${Array.isArray(value) ? 'array' : value === null ? 'null' : typeof value}, not an object`];
    }
    return [value as SecretData, raw, ''];
  }

  private failed(why: string): void {
    const first = this.bad === null;
    this.bad = why;
    if (!first) return;
    const keeping = this.value !== null ? 'keeping the last good value' : 'nothing to serve yet';
    this.logger.warn(`cannot use ${this.file} for ${this.path} (${why}); ${keeping}`, { file: this.file, path: this.path, reason: why });
  }
}
