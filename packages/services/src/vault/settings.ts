/**
 * Configuration read from the environment, with the same names and defaults as
 * maily_secrets.settings (VAULT_* first, the BAO_* spellings too).
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { VaultError } from './errors.js';

export const DEFAULT_ADDR = 'http://vault.vault:8200';
export const K8S_SA_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

export type AuthMethodName = 'auto' | 'token' | 'kubernetes' | 'approle';

export interface VaultSettings {
  addr: string;
  namespace: string | undefined;
  /** PEM file of the CA that signed the server's certificate. */
  cacert: string | undefined;
  skipVerify: boolean;
  /** Seconds for one HTTP request. */
  timeout: number;
  maxRetries: number;
  /** Seconds. */
  retryBaseDelay: number;
  /** Seconds. */
  retryMaxDelay: number;
  authMethod: AuthMethodName;
  token: string | undefined;
  tokenFile: string | undefined;
  role: string;
  kubernetesJwtPath: string;
  kubernetesMount: string;
  approleMount: string;
  roleId: string | undefined;
  roleIdFile: string | undefined;
  secretId: string | undefined;
  secretIdFile: string | undefined;
  renewFraction: number;
  kvMount: string;
  transitMount: string;
  /** Seconds a read is served from memory. */
  cacheTtl: number;
  /** Seconds: oldest last-known value served while Vault is down. */
  maxStaleness: number;
  /** Seconds between two polls of a watched secret (+-10% jitter). */
  listenerInterval: number;
  /** Where ~/.vault-token is looked for (tests). */
  homeTokenPath: string;
}

type Env = Record<string, string | undefined>;

function pick(env: Env, ...names: string[]): string | undefined {
  for (const n of names) {
    const v = env[n];
    if (v !== undefined && v !== '') return v;
  }
  return undefined;
}

function num(env: Env, name: string, dflt: number, min: number, strictlyAbove = false): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < min || (strictlyAbove && v <= min)) {
    throw new VaultError(`${name} must be a number ${strictlyAbove ? '>' : '>='} ${min}, got ${JSON.stringify(raw)}`);
  }
  return v;
}

function bool(raw: string | undefined): boolean {
  return raw !== undefined && ['1', 'true', 'yes', 'on'].includes(raw.trim().toLowerCase());
}

function mount(v: string, what: string): string {
  const m = v.replace(/^\/+|\/+$/g, '');
  if (!m) throw new VaultError(`${what}: a mount path cannot be empty`);
  return m;
}

/** Validate and normalise explicit settings (addr, mounts). */
export function normalizeSettings(s: VaultSettings): VaultSettings {
  const addr = s.addr.trim().replace(/\/+$/, '');
  if (!addr.startsWith('http://') && !addr.startsWith('https://')) {
    throw new VaultError('VAULT_ADDR must start with http:// or https://');
  }
  if (!['auto', 'token', 'kubernetes', 'approle'].includes(s.authMethod)) {
    throw new VaultError(`VAULT_AUTH_METHOD must be auto, token, kubernetes or approle, got ${JSON.stringify(s.authMethod)}`);
  }
  if (!(s.renewFraction > 0 && s.renewFraction < 1)) {
    throw new VaultError('renewFraction must be between 0 and 1');
  }
  return {
    ...s,
    addr,
    kvMount: mount(s.kvMount, 'MAILY_SECRETS_MOUNT'),
    transitMount: mount(s.transitMount, 'MAILY_SECRETS_TRANSIT_MOUNT'),
    kubernetesMount: mount(s.kubernetesMount, 'VAULT_K8S_MOUNT'),
    approleMount: mount(s.approleMount, 'VAULT_APPROLE_MOUNT'),
  };
}

/** Settings from the environment (default: `process.env`), overridden by `overrides`. */
export function loadSettings(overrides: Partial<VaultSettings> = {}, env: Env = process.env): VaultSettings {
  const base: VaultSettings = {
    addr: pick(env, 'VAULT_ADDR', 'BAO_ADDR') ?? DEFAULT_ADDR,
    namespace: pick(env, 'VAULT_NAMESPACE', 'BAO_NAMESPACE'),
    cacert: pick(env, 'VAULT_CACERT', 'BAO_CACERT'),
    skipVerify: bool(pick(env, 'VAULT_SKIP_VERIFY', 'BAO_SKIP_VERIFY')),
    timeout: num(env, env.VAULT_CLIENT_TIMEOUT !== undefined ? 'VAULT_CLIENT_TIMEOUT' : 'BAO_CLIENT_TIMEOUT', 10, 0, true),
    maxRetries: Math.floor(num(env, env.VAULT_MAX_RETRIES !== undefined ? 'VAULT_MAX_RETRIES' : 'BAO_MAX_RETRIES', 4, 0)),
    retryBaseDelay: 0.1,
    retryMaxDelay: 2.0,
    authMethod: (pick(env, 'VAULT_AUTH_METHOD', 'BAO_AUTH_METHOD') ?? 'auto') as AuthMethodName,
    token: pick(env, 'VAULT_TOKEN', 'BAO_TOKEN'),
    tokenFile: pick(env, 'VAULT_TOKEN_FILE', 'BAO_TOKEN_FILE'),
    role: pick(env, 'VAULT_ROLE', 'BAO_ROLE') ?? 'maily',
    kubernetesJwtPath: pick(env, 'VAULT_K8S_JWT_PATH') ?? K8S_SA_TOKEN,
    kubernetesMount: pick(env, 'VAULT_K8S_MOUNT') ?? 'kubernetes',
    approleMount: pick(env, 'VAULT_APPROLE_MOUNT') ?? 'approle',
    roleId: pick(env, 'VAULT_ROLE_ID'),
    roleIdFile: pick(env, 'VAULT_ROLE_ID_FILE'),
    secretId: pick(env, 'VAULT_SECRET_ID'),
    secretIdFile: pick(env, 'VAULT_SECRET_ID_FILE'),
    renewFraction: 2 / 3,
    kvMount: pick(env, 'MAILY_SECRETS_MOUNT') ?? 'maily',
    transitMount: pick(env, 'MAILY_SECRETS_TRANSIT_MOUNT') ?? 'transit',
    cacheTtl: num(env, 'MAILY_SECRETS_CACHE_TTL', 60, 0),
    maxStaleness: num(env, 'MAILY_SECRETS_MAX_STALENESS', 3600, 0),
    listenerInterval: num(env, 'MAILY_SECRETS_LISTENER_INTERVAL', 30, 0, true),
    homeTokenPath: join(homedir(), '.vault-token'),
  };
  const merged: VaultSettings = { ...base };
  // An explicitly given key wins over the environment, even when it is undefined
  // (`{ token: undefined }` means "no VAULT_TOKEN", whatever the environment says).
  for (const [k, v] of Object.entries(overrides)) (merged as unknown as Record<string, unknown>)[k] = v;
  const required: (keyof VaultSettings)[] = [
    'addr', 'skipVerify', 'timeout', 'maxRetries', 'retryBaseDelay', 'retryMaxDelay', 'authMethod', 'role',
    'kubernetesJwtPath', 'kubernetesMount', 'approleMount', 'renewFraction', 'kvMount', 'transitMount',
    'cacheTtl', 'maxStaleness', 'listenerInterval', 'homeTokenPath',
  ];
  for (const k of required) {
    if (merged[k] === undefined) (merged as unknown as Record<string, unknown>)[k] = base[k];
  }
  return normalizeSettings(merged);
}

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** Default logger: warnings and errors to stderr via console; debug/info dropped. */
export const consoleLogger: Logger = {
  debug() {},
  info() {},
  warn(message, fields) {
    console.warn(`[maily/vault] ${message}`, fields ?? '');
  },
  error(message, fields) {
    console.error(`[maily/vault] ${message}`, fields ?? '');
  },
};
