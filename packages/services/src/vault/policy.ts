/**
 * The HTTP layer's decisions as pure functions (the twin of maily_secrets.vault.policy):
 * what to retry, where to follow a redirect, which error a status becomes. No I/O; the
 * client applies them. Both twins are held to tests/conformance/cases.json.
 *
 * Retry rule. A request is resent only when resending cannot apply it twice:
 * - it never reached the server (`failure: 'connect'`): any method;
 * - the server said it did not process it (412/429/503, or KV v2's 400 "Upgrading from
 *   non-versioned to versioned data"): any method;
 * - the outcome is unknown (`failure: 'sent'`: a timeout or dropped connection after the
 *   request was sent; 500/502/504): only an idempotent request (GET, HEAD, LIST, OPTIONS,
 *   or one the caller marked idempotent, like transit encrypt/decrypt).
 *
 * Redirect rule. 307/308 are followed only to the same origin (scheme, host, port) or to
 * a configured cluster member, never from https to http, never to a URL with userinfo.
 * The token is sent only where a redirect is followed; a refused redirect is an error.
 */
import {
  CheckAndSetConflict,
  PermissionDenied,
  SecretNotFound,
  VaultRequestError,
  VaultUnavailable,
  type VaultError,
  type VaultErrorOptions,
} from './errors.js';

export type Failure = 'connect' | 'sent';

export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'LIST', 'OPTIONS']);
/** The server did not apply the request. */
export const NOT_PROCESSED_STATUS: ReadonlySet<number> = new Set([412, 429, 503]);
/** The server (or a proxy) may have applied it. */
export const UNKNOWN_OUTCOME_STATUS: ReadonlySet<number> = new Set([500, 502, 504]);
export const RETRY_STATUS: ReadonlySet<number> = new Set([...NOT_PROCESSED_STATUS, ...UNKNOWN_OUTCOME_STATUS]);
export const REDIRECT_STATUS: ReadonlySet<number> = new Set([307, 308]);
export const KV_UPGRADING = 'Upgrading from non-versioned to versioned data';

/** Whether sending `method` twice has the effect of sending it once. */
export function isIdempotent(method: string, idempotent?: boolean | null): boolean {
  if (idempotent !== undefined && idempotent !== null) return idempotent;
  return IDEMPOTENT_METHODS.has(method.toUpperCase());
}

export interface Outcome {
  /** The HTTP status, when the server answered. */
  status?: number | null | undefined;
  /** How it failed without an HTTP answer. */
  failure?: Failure | null | undefined;
  /** Vault's error text. */
  detail?: string | undefined;
  /** Override the method's idempotency (transit encrypt/decrypt: true). */
  idempotent?: boolean | null | undefined;
}

/** Whether a request that ended this way may be sent again (attempts left aside). */
export function shouldRetry(method: string, o: Outcome): boolean {
  const safe = isIdempotent(method, o.idempotent);
  if (o.failure === 'connect') return true;
  if (o.failure === 'sent') return safe;
  const status = o.status;
  if (status === undefined || status === null) return false;
  if (NOT_PROCESSED_STATUS.has(status)) return true;
  if (UNKNOWN_OUTCOME_STATUS.has(status)) return safe;
  return status === 400 && (o.detail ?? '').includes(KV_UPGRADING);
}

function defaultPort(protocol: string): number {
  return protocol === 'http:' ? 80 : protocol === 'https:' ? 443 : 0;
}

/** (scheme, host, port) of a URL, host lower-cased, without a trailing dot or IPv6 brackets. */
export function origin(u: URL | string): [string, string, number] {
  const url = typeof u === 'string' ? new URL(u) : u;
  const host = url.hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1').replace(/\.+$/, '');
  const port = url.port === '' ? defaultPort(url.protocol) : Number(url.port);
  return [url.protocol.replace(/:$/, '').toLowerCase(), host, port];
}

function sameOrigin(a: [string, string, number], b: [string, string, number]): boolean {
  return a[0] === b[0] && a[1] === b[1] && a[2] === b[2];
}

/**
 * The URL to follow a 307/308 to, or `null` when the redirect must be refused.
 * `current` answered with `Location: location` (absolute or relative); `members` are the
 * configured cluster member addresses.
 */
export function redirectTarget(current: URL | string, location: string, members: Iterable<string> = []): URL | null {
  let cur: URL;
  let target: URL;
  try {
    cur = typeof current === 'string' ? new URL(current) : current;
    target = new URL(location, cur);
  } catch {
    return null;
  }
  if ((target.protocol !== 'http:' && target.protocol !== 'https:') || !target.hostname) return null;
  if (target.username !== '' || target.password !== '') return null;
  if (cur.protocol === 'https:' && target.protocol !== 'https:') return null; // never downgrade
  const dest = origin(target);
  if (sameOrigin(dest, origin(cur))) return target;
  for (const m of members) {
    try {
      if (sameOrigin(origin(m), dest)) return target;
    } catch {
      continue;
    }
  }
  return null;
}

type ErrorClass = new (message: string, options?: VaultErrorOptions) => VaultError;

/**
 * The error class a final (not retried) HTTP status becomes. 403 is PermissionDenied
 * here; the client turns it into AuthFailed when the token itself is dead.
 */
export function errorClass(status: number, detail = ''): ErrorClass {
  if (status === 404) return SecretNotFound;
  if (status === 403) return PermissionDenied;
  if (RETRY_STATUS.has(status) || status >= 500) return VaultUnavailable;
  if (detail.includes('check-and-set')) return CheckAndSetConflict;
  return VaultRequestError;
}
