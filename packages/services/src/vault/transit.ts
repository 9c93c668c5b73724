/** Transit engine: encryption as a service (mirrors maily_secrets.vault.transit, single items). */
import {
  CiphertextVersionTooOld,
  DecryptionFailed,
  InvalidCiphertext,
  InvalidPath,
  SecretNotFound,
  TransitContextError,
  TransitKeyNotFound,
  VaultError,
  VaultRequestError,
} from './errors.js';
import type { VaultApi } from './client.js';
import { validatePath } from './paths.js';

export type Plaintext = string | Uint8Array;
const KEY_NAME = /^\w(?:[\w.-]*\w)?$/;
const CT_VERSION = /^vault:v(\d+):/;

function b64(value: unknown, what: string): string {
  if (typeof value === 'string') {
    if (!value.isWellFormed()) throw new TypeError(`${what} is not encodable as UTF-8 (lone surrogate)`);
    return Buffer.from(value, 'utf8').toString('base64');
  }
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64');
  throw new TypeError(`${what} must be a string or a Uint8Array, not ${value === null ? 'null' : typeof value}`);
}

export class Transit {
  readonly mount: string;
  private readonly where: string;

  constructor(
    private readonly api: VaultApi,
    mount = 'transit',
  ) {
    this.mount = validatePath(mount.replace(/^\/+|\/+$/g, ''));
    this.where = `mount ${JSON.stringify(this.mount + '/')}`;
  }

  /** Encrypt one value (a string is UTF-8 encoded); returns `vault:vN:...`. */
  async encrypt(key: string, plaintext: Plaintext, context?: Plaintext): Promise<string> {
    const body: Record<string, string> = { plaintext: b64(plaintext, 'plaintext') };
    if (context !== undefined) body.context = b64(context, 'context');
    const r = await this.post('encrypt', key, body, context !== undefined);
    return String(r.data?.ciphertext);
  }

  /** Decrypt one ciphertext to the original bytes. */
  async decrypt(key: string, ciphertext: string, context?: Plaintext): Promise<Uint8Array> {
    if (typeof ciphertext !== 'string') throw new TypeError(`ciphertext must be a string, not ${typeof ciphertext}`);
    const body: Record<string, string> = { ciphertext };
    if (context !== undefined) body.context = b64(context, 'context');
    const r = await this.post('decrypt', key, body, context !== undefined);
    return new Uint8Array(Buffer.from(String(r.data?.plaintext ?? ''), 'base64'));
  }

  /** Re-encrypt a ciphertext under the key's latest version, server-side. */
  async rewrap(key: string, ciphertext: string, context?: Plaintext): Promise<string> {
    const body: Record<string, string> = { ciphertext };
    if (context !== undefined) body.context = b64(context, 'context');
    const r = await this.post('rewrap', key, body, context !== undefined);
    return String(r.data?.ciphertext);
  }

  private keyName(key: unknown): string {
    if (typeof key !== 'string' || !KEY_NAME.test(key)) {
      const shown = typeof key === 'string' ? JSON.stringify(key.slice(0, 100)) : typeof key;
      throw new InvalidPath(`transit key name ${shown} is invalid: letters, digits, '_', '-' and '.' (not first or last)`);
    }
    return key;
  }

  private async post(op: 'encrypt' | 'decrypt' | 'rewrap', key: string, body: Record<string, string>, contextGiven: boolean) {
    const path = `${this.mount}/${op}/${this.keyName(key)}`;
    try {
      // Encrypt, decrypt and rewrap change nothing on the server: safe to resend.
      return await this.api.request('POST', path, { body, idempotent: true });
    } catch (e) {
      if (e instanceof VaultRequestError || e instanceof SecretNotFound) {
        throw this.map(op, key, path, e, contextGiven, body.ciphertext);
      }
      throw e;
    }
  }

  /** The typed error for Vault's error text; never quotes an input value. */
  private map(op: string, key: string, path: string, exc: VaultError, contextGiven: boolean, ciphertext?: string): VaultError {
    const detail = exc.detail;
    const d = detail.toLowerCase();
    const o = { path, status: exc.status, detail: detail.slice(0, 300) };
    const head = `${op} with transit key ${JSON.stringify(key)} on ${this.where}: `;
    const version = () => {
      const m = CT_VERSION.exec(ciphertext ?? '');
      return m ? m[1] : '?';
    };
    if (exc instanceof SecretNotFound && d.includes('no handler for route')) {
      return new SecretNotFound(`no transit engine is mounted at ${JSON.stringify(this.mount + '/')} (path ${JSON.stringify(path)})`, o);
    }
    if (d.includes('key not found') || d.includes('no existing key named') || exc instanceof SecretNotFound) {
      const hint = op === 'encrypt' ? ' (key upsert is disabled on this mount; create the key first)' : '';
      return new TransitKeyNotFound(`transit key ${JSON.stringify(key)} not found on ${this.where}${hint}`, o);
    }
    if (d.includes('too old')) {
      return new CiphertextVersionTooOld(`${head}the ciphertext is of key version ${version()}, below the key's min_decryption_version`, o);
    }
    if (d.includes('message authentication failed')) {
      let why = 'it was altered or made with another key';
      if (contextGiven) why += ', or the context differs from the one it was encrypted with';
      return new DecryptionFailed(`${head}the ciphertext did not authenticate: ${why}`, o);
    }
    if (d.includes('too new')) {
      return new InvalidCiphertext(`${head}the ciphertext names key version ${version()}, newer than the key's latest version`, o);
    }
    if (d.includes('ciphertext')) return new InvalidCiphertext(`${head}malformed ciphertext (Vault: ${detail.slice(0, 200)})`, o);
    if (d.includes('context')) {
      const text = d.includes('missing') ? 'the key is derived: a context is required' : `context error (Vault: ${detail.slice(0, 200)})`;
      return new TransitContextError(`${head}${text}`, o);
    }
    return exc;
  }
}
