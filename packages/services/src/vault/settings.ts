/**
 * Configuration read from the environment, with the same names and defaults as
 * maily_secrets.settings (VAULT_* first, the BAO_* spellings too, MAILY_SECRETS_* for
 * the facade). Only those prefixes are read: never a bare name such as NAMESPACE, ROLE
 * or TOKEN (a pod's downward API sets NAMESPACE). An invalid value is a
 * {@link ConfigurationError} naming the variable, raised on first use of the client.
 * The defaults and names are held to tests/conformance/cases.json.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ConfigurationError } from './errors.js';
import { parseKV2, validatePath } from './paths.js';

export const DEFAULT_ADDR = 'http://vault.vault:8200';
export const K8S_SA_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';
/** The prefixes of every environment variable this package reads. */
export const ENV_PREFIXES = ['VAULT_', 'BAO_', 'MAILY_'] as const;

export type AuthMethodName = 'auto' | 'token' | 'kubernetes' | 'approle' | 'cert';
const AUTH_METHODS: readonly string[] = ['auto', 'token', 'kubernetes', 'approle', 'cert'];

export interface VaultSettings {
  addr: string;
  /**
   * A local Vault Agent's API proxy (VAULT_AGENT_ADDR): when set, every request goes
   * there instead of `addr`, as the Vault CLI does; with no credentials of its own the
   * client sends no token and the agent adds its auto-auth token (use_auto_auth_token).
   */
  agentAddr?: string | undefined;
  namespace: string | undefined;
  /** PEM file of the CA that signed the server's certificate. */
  cacert: string | undefined;
  skipVerify: boolean;
  /**
   * A directory of PEM CA certificates (VAULT_CAPATH): every file is loaded, no hashed
   * names needed; ignored when `cacert` is set (as by the Vault CLI).
   */
  capath: string | undefined;
  /** PEM client certificate for mutual TLS and the cert auth method (VAULT_CLIENT_CERT). */
  clientCert: string | undefined;
  /** Its unencrypted PEM private key (VAULT_CLIENT_KEY). */
  clientKey: string | undefined;
  /** Name sent as SNI and checked in the server's certificate instead of addr's host. */
  tlsServerName: string | undefined;
  /** Seconds for one HTTP request. */
  timeout: number;
  maxRetries: number;
  /** Seconds. */
  retryBaseDelay: number;
  /** Seconds. */
  retryMaxDelay: number;
  /** Connections kept per origin (VAULT_POOL_SIZE). */
  poolSize: number;
  /**
   * Other nodes of the Vault cluster (MAILY_SECRETS_CLUSTER_MEMBERS, comma-separated
   * addresses): a 307/308 to one of them is followed with the token. Redirects to the
   * same origin as `addr` are always followed; anywhere else is refused.
   */
  clusterMembers: string[];
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
  /** Mount of the TLS certificate auth method (VAULT_CERT_MOUNT). */
  certMount: string;
  /** Cert auth role to log in as (VAULT_CERT_ROLE; unset: any role that trusts the cert). */
  certRole: string | undefined;
  renewFraction: number;
  kvMount: string;
  transitMount: string;
  /** Seconds a read is served from memory. */
  cacheTtl: number;
  /** Seconds: oldest last-known value served while Vault is down. */
  maxStaleness: number;
  /** Seconds between two polls of a watched secret (+-10% jitter); with the change feed, of the beacon. */
  listenerInterval: number;
  /**
   * The change feed (MAILY_SECRETS_CHANGE_FEED): the beacon secret that every write made
   * through us bumps and that listeners poll instead of each path. Unset (or `on`):
   * `<kvMount>/data/_changes`; a bare name is taken under `kvMount`, a value with `/data/`
   * is a KV v2 API path; `off`: no beacon, each watched path is polled every interval.
   * See {@link changeFeedPath}.
   */
  changeFeed?: string | undefined;
  /**
   * Seconds between two polls of each watched path while the change feed is on
   * (MAILY_SECRETS_LISTENER_FULL_POLL_INTERVAL, default 300): catches writes made around us
   * (`bao kv put`, a writer with the feed off).
   */
  listenerFullPollInterval: number;
  /**
   * A JSON file rendered by Vault Agent (MAILY_CONFIG_FILE, the injector's
   * /vault/secrets/config.json): `getConfig()` is served from it, reloaded when it
   * changes; no Vault token needed for it.
   */
  configFile?: string | undefined;
  /** Where ~/.vault-token is looked for (tests). */
  homeTokenPath: string;
  /**
   * The environment variable each value came from (for error messages), e.g.
   * `{ cacert: 'BAO_CACERT' }`; absent for defaults and explicit settings.
   */
  sources?: Partial<Record<keyof VaultSettings, string>>;
}

type Env = Record<string, string | undefined>;

/** Reads the environment, remembering which variable each value came from. */
class Reader {
  readonly sources: Partial<Record<keyof VaultSettings, string>> = {};
  constructor(private readonly env: Env) {}

  /** The first of `names` that is set and not empty. */
  str(key: keyof VaultSettings, ...names: string[]): string | undefined {
    for (const n of names) {
      const v = this.env[n];
      if (v !== undefined && v !== '') {
        this.sources[key] = n;
        return v;
      }
    }
    return undefined;
  }

  num(
    key: keyof VaultSettings,
    names: string[],
    dflt: number,
    o: { min: number; above?: boolean; integer?: boolean },
  ): number {
    const raw = this.str(key, ...names);
    if (raw === undefined) return dflt;
    const v = Number(raw.trim());
    const bad = raw.trim() === '' || !Number.isFinite(v) || (o.integer && !Number.isInteger(v)) || v < o.min || (o.above && v <= o.min);
    if (bad) {
      const name = this.sources[key]!;
      const what = o.integer ? 'an integer' : 'a number';
      throw new ConfigurationError(`${name} must be ${what} ${o.above ? '>' : '>='} ${o.min}, got ${JSON.stringify(raw)}`, {
        variable: name,
      });
    }
    return v;
  }

  bool(key: keyof VaultSettings, ...names: string[]): boolean {
    const raw = this.str(key, ...names);
    if (raw === undefined) return false;
    const v = raw.trim().toLowerCase();
    if (['1', 'true', 'yes', 'on', 't', 'y'].includes(v)) return true;
    if (['0', 'false', 'no', 'off', 'f', 'n'].includes(v)) return false;
    const name = this.sources[key]!;
    throw new ConfigurationError(`${name} must be true or false (1/0, yes/no, on/off), got ${JSON.stringify(raw)}`, {
      variable: name,
    });
  }
}

function variable(s: VaultSettings, key: keyof VaultSettings, fallback: string): string {
  return s.sources?.[key] ?? fallback;
}

function mount(
  s: VaultSettings,
  key: 'kvMount' | 'transitMount' | 'kubernetesMount' | 'approleMount' | 'certMount',
  name: string,
): string {
  const m = String(s[key]).replace(/^\/+|\/+$/g, '');
  if (!m) {
    const v = variable(s, key, name);
    throw new ConfigurationError(`${v}: a mount path cannot be empty`, { variable: v });
  }
  return m;
}

/** An http(s) address with no path, query, fragment or userinfo; without a trailing slash. */
function address(raw: string, name: string, what = 'an address'): string {
  const v = raw.trim().replace(/\/+$/, '');
  const fail = (why: string): never => {
    const shown = raw.slice(0, 200).replace(/\/\/[^/?#]*@/, '//***@'); // never echo a password
    throw new ConfigurationError(`${name} must be ${what} such as https://vault.example:8200 (${why}), got ${JSON.stringify(shown)}`, {
      variable: name,
    });
  };
  if (!/^https?:\/\//i.test(v)) fail('it must start with http:// or https://');
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    return fail('not a URL');
  }
  if (u.username !== '' || u.password !== '' || /^[a-z]+:\/\/[^/]*@/i.test(v)) fail('no user or password in it');
  if (u.search !== '' || v.includes('?')) fail('no query');
  if (u.hash !== '' || v.includes('#')) fail('no fragment');
  if (!u.hostname) fail('no host');
  return v;
}

/** The beacon's name under the KV mount when MAILY_SECRETS_CHANGE_FEED is unset. */
export const DEFAULT_CHANGE_FEED = '_changes';
const FEED_OFF = new Set(['off', 'false', '0', 'no', 'none', 'disabled']);
const FEED_ON = new Set(['on', 'true', '1', 'yes']);

/**
 * The change feed's beacon as a KV v2 API path (`<kvMount>/data/_changes` when unset or
 * `on`), or null when MAILY_SECRETS_CHANGE_FEED is `off`; a bare name is taken under the
 * mount, a value with `/data/` is an API path (as maily_secrets.settings.change_feed_path).
 */
export function changeFeedPath(s: Pick<VaultSettings, 'changeFeed' | 'kvMount'>): string | null {
  let v = String(s.changeFeed ?? '').trim().replace(/^\/+|\/+$/g, '');
  if (FEED_OFF.has(v.toLowerCase())) return null;
  if (!v || FEED_ON.has(v.toLowerCase())) v = DEFAULT_CHANGE_FEED;
  return v.includes('/data/') ? v : `${s.kvMount}/data/${v}`;
}

function checkChangeFeed(s: VaultSettings): void {
  const path = changeFeedPath(s);
  let ok = true;
  if (path !== null) {
    try {
      ok = parseKV2(validatePath(path)) !== null;
    } catch {
      ok = false;
    }
  }
  if (!ok) {
    const v = variable(s, 'changeFeed', 'MAILY_SECRETS_CHANGE_FEED');
    throw new ConfigurationError(`${v} must be off, a secret name (under the KV mount) or a KV v2 path <mount>/data/<name>`, {
      variable: v,
    });
  }
}

/** Where requests go: `agentAddr` (VAULT_AGENT_ADDR) when set, else `addr`. */
export function apiAddr(s: VaultSettings): string {
  return s.agentAddr ?? s.addr;
}

/** Validate and normalise explicit settings (addr, mounts, numbers). */
export function normalizeSettings(s: VaultSettings): VaultSettings {
  const addr = address(String(s.addr), variable(s, 'addr', 'VAULT_ADDR'));
  const agentAddr =
    s.agentAddr === undefined || s.agentAddr.trim() === ''
      ? undefined
      : address(s.agentAddr, variable(s, 'agentAddr', 'VAULT_AGENT_ADDR'));
  if (!AUTH_METHODS.includes(s.authMethod)) {
    const v = variable(s, 'authMethod', 'VAULT_AUTH_METHOD');
    throw new ConfigurationError(`${v} must be auto, token, kubernetes, approle or cert, got ${JSON.stringify(s.authMethod)}`, {
      variable: v,
    });
  }
  // Both files or neither (as the Vault CLI): they are read when the first connection is made.
  if ((s.clientCert === undefined) !== (s.clientKey === undefined)) {
    const [have, missing] = s.clientKey === undefined ? ['clientCert', 'clientKey'] as const : ['clientKey', 'clientCert'] as const;
    const v = variable(s, missing, missing === 'clientKey' ? 'VAULT_CLIENT_KEY' : 'VAULT_CLIENT_CERT');
    const h = variable(s, have, have === 'clientKey' ? 'VAULT_CLIENT_KEY' : 'VAULT_CLIENT_CERT');
    throw new ConfigurationError(`${v} is not set but ${h} is (mutual TLS needs both files)`, { variable: v });
  }
  let tlsServerName = s.tlsServerName;
  if (tlsServerName !== undefined) {
    tlsServerName = String(tlsServerName).trim();
    if (!tlsServerName || /[/:@ ]/.test(tlsServerName) || tlsServerName.length > 253) {
      const v = variable(s, 'tlsServerName', 'VAULT_TLS_SERVER_NAME');
      throw new ConfigurationError(`${v} must be a host name such as vault.example (no scheme or port)`, { variable: v });
    }
  }
  if (!(s.renewFraction > 0 && s.renewFraction < 1)) {
    const v = variable(s, 'renewFraction', 'MAILY_SECRETS_RENEW_FRACTION');
    throw new ConfigurationError(`${v} must be between 0 and 1`, { variable: v });
  }
  const positive: [keyof VaultSettings, string, boolean][] = [
    ['timeout', 'VAULT_CLIENT_TIMEOUT', true],
    ['maxRetries', 'VAULT_MAX_RETRIES', false],
    ['retryBaseDelay', 'MAILY_SECRETS_RETRY_BASE_DELAY', true],
    ['retryMaxDelay', 'MAILY_SECRETS_RETRY_MAX_DELAY', true],
    ['poolSize', 'VAULT_POOL_SIZE', true],
    ['cacheTtl', 'MAILY_SECRETS_CACHE_TTL', false],
    ['maxStaleness', 'MAILY_SECRETS_MAX_STALENESS', false],
    ['listenerInterval', 'MAILY_SECRETS_LISTENER_INTERVAL', true],
    ['listenerFullPollInterval', 'MAILY_SECRETS_LISTENER_FULL_POLL_INTERVAL', true],
  ];
  for (const [key, name, above] of positive) {
    const v = s[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (above && v === 0)) {
      const n = variable(s, key, name);
      throw new ConfigurationError(`${n} must be a number ${above ? '>' : '>='} 0, got ${JSON.stringify(v)}`, { variable: n });
    }
  }
  const membersVar = variable(s, 'clusterMembers', 'MAILY_SECRETS_CLUSTER_MEMBERS');
  const clusterMembers = (s.clusterMembers ?? []).map((m) => address(m, membersVar, 'a list of addresses'));
  const out: VaultSettings = {
    ...s,
    addr,
    agentAddr,
    clusterMembers,
    tlsServerName,
    certMount: mount(s, 'certMount', 'VAULT_CERT_MOUNT'),
    kvMount: mount(s, 'kvMount', 'MAILY_SECRETS_MOUNT'),
    transitMount: mount(s, 'transitMount', 'MAILY_SECRETS_TRANSIT_MOUNT'),
    kubernetesMount: mount(s, 'kubernetesMount', 'VAULT_K8S_MOUNT'),
    approleMount: mount(s, 'approleMount', 'VAULT_APPROLE_MOUNT'),
  };
  checkChangeFeed(out);
  return out;
}

/**
 * Settings from the environment (default: `process.env`), overridden by `overrides`.
 * Throws {@link ConfigurationError} (with `.variable`) for an invalid value.
 */
export function loadSettings(overrides: Partial<VaultSettings> = {}, env: Env = process.env): VaultSettings {
  const r = new Reader(env);
  const members = r.str('clusterMembers', 'MAILY_SECRETS_CLUSTER_MEMBERS');
  const base: VaultSettings = {
    addr: r.str('addr', 'VAULT_ADDR', 'BAO_ADDR') ?? DEFAULT_ADDR,
    agentAddr: r.str('agentAddr', 'VAULT_AGENT_ADDR', 'BAO_AGENT_ADDR'),
    namespace: r.str('namespace', 'VAULT_NAMESPACE', 'BAO_NAMESPACE'),
    cacert: r.str('cacert', 'VAULT_CACERT', 'BAO_CACERT'),
    skipVerify: r.bool('skipVerify', 'VAULT_SKIP_VERIFY', 'BAO_SKIP_VERIFY'),
    capath: r.str('capath', 'VAULT_CAPATH', 'BAO_CAPATH'),
    clientCert: r.str('clientCert', 'VAULT_CLIENT_CERT', 'BAO_CLIENT_CERT'),
    clientKey: r.str('clientKey', 'VAULT_CLIENT_KEY', 'BAO_CLIENT_KEY'),
    tlsServerName: r.str('tlsServerName', 'VAULT_TLS_SERVER_NAME', 'BAO_TLS_SERVER_NAME'),
    timeout: r.num('timeout', ['VAULT_CLIENT_TIMEOUT', 'BAO_CLIENT_TIMEOUT'], 10, { min: 0, above: true }),
    maxRetries: r.num('maxRetries', ['VAULT_MAX_RETRIES', 'BAO_MAX_RETRIES'], 4, { min: 0, integer: true }),
    retryBaseDelay: r.num('retryBaseDelay', ['MAILY_SECRETS_RETRY_BASE_DELAY'], 0.1, { min: 0, above: true }),
    retryMaxDelay: r.num('retryMaxDelay', ['MAILY_SECRETS_RETRY_MAX_DELAY'], 2.0, { min: 0, above: true }),
    poolSize: r.num('poolSize', ['VAULT_POOL_SIZE'], 100, { min: 1, integer: true }),
    clusterMembers: members === undefined ? [] : members.split(',').map((m) => m.trim()).filter((m) => m !== ''),
    authMethod: (r.str('authMethod', 'VAULT_AUTH_METHOD', 'BAO_AUTH_METHOD') ?? 'auto') as AuthMethodName,
    token: r.str('token', 'VAULT_TOKEN', 'BAO_TOKEN'),
    tokenFile: r.str('tokenFile', 'VAULT_TOKEN_FILE', 'BAO_TOKEN_FILE'),
    role: r.str('role', 'VAULT_ROLE', 'BAO_ROLE') ?? 'maily',
    kubernetesJwtPath: r.str('kubernetesJwtPath', 'VAULT_K8S_JWT_PATH') ?? K8S_SA_TOKEN,
    kubernetesMount: r.str('kubernetesMount', 'VAULT_K8S_MOUNT') ?? 'kubernetes',
    approleMount: r.str('approleMount', 'VAULT_APPROLE_MOUNT') ?? 'approle',
    roleId: r.str('roleId', 'VAULT_ROLE_ID'),
    roleIdFile: r.str('roleIdFile', 'VAULT_ROLE_ID_FILE'),
    secretId: r.str('secretId', 'VAULT_SECRET_ID'),
    secretIdFile: r.str('secretIdFile', 'VAULT_SECRET_ID_FILE'),
    certMount: r.str('certMount', 'VAULT_CERT_MOUNT') ?? 'cert',
    certRole: r.str('certRole', 'VAULT_CERT_ROLE'),
    renewFraction: r.num('renewFraction', ['MAILY_SECRETS_RENEW_FRACTION'], 2 / 3, { min: 0, above: true }),
    kvMount: r.str('kvMount', 'MAILY_SECRETS_MOUNT') ?? 'maily',
    transitMount: r.str('transitMount', 'MAILY_SECRETS_TRANSIT_MOUNT') ?? 'transit',
    cacheTtl: r.num('cacheTtl', ['MAILY_SECRETS_CACHE_TTL'], 60, { min: 0 }),
    maxStaleness: r.num('maxStaleness', ['MAILY_SECRETS_MAX_STALENESS'], 3600, { min: 0 }),
    listenerInterval: r.num('listenerInterval', ['MAILY_SECRETS_LISTENER_INTERVAL'], 30, { min: 0, above: true }),
    changeFeed: r.str('changeFeed', 'MAILY_SECRETS_CHANGE_FEED'),
    listenerFullPollInterval: r.num('listenerFullPollInterval', ['MAILY_SECRETS_LISTENER_FULL_POLL_INTERVAL'], 300, {
      min: 0,
      above: true,
    }),
    configFile: r.str('configFile', 'MAILY_CONFIG_FILE'),
    homeTokenPath: join(homedir(), '.vault-token'),
  };
  const merged: VaultSettings = { ...base };
  const sources = { ...r.sources };
  // An explicitly given key wins over the environment, even when it is undefined
  // (`{ token: undefined }` means "no VAULT_TOKEN", whatever the environment says).
  for (const [k, v] of Object.entries(overrides)) {
    if (k === 'sources') continue;
    (merged as unknown as Record<string, unknown>)[k] = v;
    delete sources[k as keyof VaultSettings];
  }
  const required: (keyof VaultSettings)[] = [
    'addr', 'skipVerify', 'timeout', 'maxRetries', 'retryBaseDelay', 'retryMaxDelay', 'poolSize', 'clusterMembers',
    'authMethod', 'role', 'kubernetesJwtPath', 'kubernetesMount', 'approleMount', 'certMount', 'renewFraction', 'kvMount',
    'transitMount', 'cacheTtl', 'maxStaleness', 'listenerInterval', 'listenerFullPollInterval', 'homeTokenPath',
  ];
  for (const k of required) {
    if (merged[k] === undefined) (merged as unknown as Record<string, unknown>)[k] = base[k];
  }
  merged.sources = sources;
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
