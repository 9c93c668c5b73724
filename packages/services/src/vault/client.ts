/**
 * The HTTP layer (mirrors maily_secrets.vault.client + auth): Node's own http/https
 * modules with a keep-alive pool, retries with exponential backoff and jitter, HA
 * redirects, X-Vault-Index consistency, typed errors, and a token manager
 * (token / token file / ~/.vault-token, Kubernetes, AppRole, TLS certificate; single-flight login,
 * renewal at 2/3 of the TTL, one fresh login after a 403).
 *
 * Nothing here does I/O at construction time.
 */
import * as http from 'node:http';
import * as https from 'node:https';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { urlToHttpOptions } from 'node:url';
import { createSecureContext } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  AuthFailed,
  CheckAndSetConflict,
  ConfigurationError,
  PermissionDenied,
  SecretNotFound,
  VaultError,
  VaultRequestError,
  VaultUnavailable,
} from './errors.js';
import { validatePath, type KV2Path } from './paths.js';
import { REDIRECT_STATUS, errorClass, redirectTarget, shouldRetry, type Failure } from './policy.js';
import { apiAddr, consoleLogger, type Logger, type VaultSettings } from './settings.js';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type SecretData = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const MAX_REDIRECTS = 3;
/** Idle keep-alive sockets are closed after this (below any server's or proxy's idle timeout). */
const IDLE_SOCKET_MS = 5000;
const TLS_ERRORS = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);
/** TLS alerts of a server that requires a client certificate, or refuses ours. */
const CLIENT_CERT_ALERTS = new Set([
  'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
  'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA',
  'ERR_SSL_TLSV1_ALERT_ACCESS_DENIED',
  'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE',
  'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED',
  'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED',
  'ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN',
  'ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE',
  // TLS 1.2 (Go's listener with no client certificate): ambiguous, worded so.
  'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE',
]);

/**
 * The error's code; for a TLS alert that Node reports as a bare `EPROTO` (a TLS 1.2 server's
 * "sslv3 alert handshake failure"), the `ERR_SSL_*` code OpenSSL's name gives it.
 */
function errorCode(err: NodeJS.ErrnoException): string {
  const code = err.code ?? err.name;
  if (code !== 'EPROTO') return code;
  const m = /:(sslv3|tlsv1|tlsv13) alert ([a-z ]+?):/.exec(err.message ?? '');
  return m ? `ERR_SSL_${m[1]!.toUpperCase()}_ALERT_${m[2]!.toUpperCase().replace(/ /g, '_')}` : code;
}

/**
 * Every PEM file under `capath` (as the Vault CLI's VAULT_CAPATH: no hashed names needed;
 * sub-directories walked). A file without a certificate is an error naming it.
 */
function caDirectory(capath: string, name: string): Buffer[] {
  const fail = (why: string): never => {
    throw new ConfigurationError(`invalid configuration: ${name} ${why}`, { variable: name });
  };
  const out: Buffer[] = [];
  const walk = (dir: string): void => {
    let entries: string[];
    try {
      entries = readdirSync(dir).sort();
    } catch (e) {
      return fail(`${JSON.stringify(dir)} cannot be read as a directory: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    for (const entry of entries) {
      const path = join(dir, entry);
      let st;
      try {
        st = statSync(path);
      } catch (e) {
        return fail(`cannot read ${JSON.stringify(path)}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
      }
      if (st.isDirectory()) {
        walk(path);
        continue;
      }
      const pem = readFileSync(path);
      if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
        fail(`${JSON.stringify(path)} holds no PEM certificate (every file of the directory must be one, as for the Vault CLI)`);
      }
      out.push(pem);
    }
  };
  walk(capath);
  if (out.length === 0) fail(`${JSON.stringify(capath)} holds no certificate`);
  return out;
}

export interface VaultResponse {
  status: number;
  body: Record<string, any> | null; // eslint-disable-line @typescript-eslint/no-explicit-any
  /** `body.data` when it is an object. */
  data: Record<string, any> | null; // eslint-disable-line @typescript-eslint/no-explicit-any
  headers: http.IncomingHttpHeaders;
}

export interface RequestOptions {
  body?: unknown;
  params?: Record<string, string>;
  authenticated?: boolean;
  /** Use this token instead of the managed one (no re-login on 403). */
  token?: string;
  retries?: number;
  /**
   * Resending has no further effect (transit encrypt/decrypt), so the request may be
   * retried after a timeout or a 500/502/504 even though it is a POST. Default: by method.
   */
  idempotent?: boolean;
}

class TransportError extends Error {
  /** `connect`: nothing reached the server; `sent`: the request may have reached it. */
  constructor(
    readonly code: string,
    readonly failure: Failure,
  ) {
    super(code);
  }
}

interface RawResponse {
  status: number;
  body: unknown;
  headers: http.IncomingHttpHeaders;
  /** Set when a 307/308 was refused: where it pointed (origin only). */
  refused?: string;
}

/**
 * Where one request goes, as `http.request` options: resolved once per path (percent-encoded
 * as the URL parser does), so a request builds no URL and Node converts none.
 */
interface Target {
  readonly protocol: string;
  readonly hostname: string;
  readonly port: string;
  /** Path and query, encoded. */
  readonly path: string;
}

function targetOf(u: URL): Target {
  const o = urlToHttpOptions(u); // hostname without IPv6 brackets, as http.request wants it
  return { protocol: u.protocol, hostname: o.hostname ?? '', port: u.port, path: `${u.pathname}${u.search}` };
}

/** Resolved targets kept per client (bounded: a client reads a bounded set of paths). */
const MAX_TARGETS = 4096;

function timeoutError(this: http.ClientRequest): void {
  this.destroy(Object.assign(new Error('timeout'), { code: 'TimeoutError' }));
}

function errorsOf(body: unknown): string {
  const errs = (body as { errors?: unknown } | null)?.errors;
  return Array.isArray(errs) ? errs.map(String).join('; ').slice(0, 300) : '';
}

function indexPosition(index: string): [string, number] | null {
  try {
    const doc = JSON.parse(Buffer.from(index, 'base64').toString('utf8')) as { cluster?: unknown; value?: unknown };
    const v = Number(doc.value);
    if (doc.cluster === undefined || !Number.isFinite(v)) return null;
    return [String(doc.cluster), v];
  } catch {
    return null;
  }
}

/** Keep the most advanced X-Vault-Index: responses of concurrent writes arrive out of order. */
export function newerIndex(current: string | null, next: string): string {
  if (current === null || current === next) return next;
  const a = indexPosition(current);
  const b = indexPosition(next);
  if (a && b && a[0] === b[0] && a[1] > b[1]) return current;
  return next;
}

/** The value and version in the answer to a KV v2 data read of `p`. */
export function kvValue(p: KV2Path, r: VaultResponse): { data: SecretData; version: number } {
  const body = r.data ?? {};
  if (body.data === null || body.data === undefined) {
    throw new SecretNotFound(`secret ${JSON.stringify(p.data)} has no live data (deleted)`, { path: p.data });
  }
  return { data: body.data as SecretData, version: Number(body.metadata?.version ?? 0) || 0 };
}

// ------------------------------------------------------------------------- auth
export interface Token {
  value: string;
  /** Seconds; 0 = never expires (root token). */
  ttl: number;
  renewable: boolean;
  /** performance.now() in ms. */
  obtained: number;
  keep: boolean;
  retryAfter: number;
}

function renewAt(t: Token, fraction: number): number | null {
  if (t.ttl <= 0 || t.keep) return null;
  return Math.max(t.obtained + t.ttl * 1000 * fraction, t.retryAfter);
}

function expired(t: Token): boolean {
  return t.ttl > 0 && performance.now() >= t.obtained + t.ttl * 1000;
}

function readSecretFile(path: string, what: string): string {
  let value: string;
  try {
    value = readFileSync(path, 'utf8').trim();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new AuthFailed(`cannot read ${what} from ${path}: ${code}`);
  }
  if (!value) throw new AuthFailed(`${what} file ${path} is empty`);
  return value;
}

function tokenFromAuth(body: Record<string, any> | null, method: string): Token { // eslint-disable-line @typescript-eslint/no-explicit-any
  const auth = (body?.auth ?? {}) as Record<string, unknown>;
  const value = auth.client_token;
  if (!value) throw new AuthFailed(`${method} login returned no client token`);
  return {
    value: String(value),
    ttl: Number(auth.lease_duration ?? 0) || 0,
    renewable: Boolean(auth.renewable),
    obtained: performance.now(),
    keep: false,
    retryAfter: 0,
  };
}

export interface AuthMethod {
  readonly name: string;
  /** Whether a fresh login may produce a different, valid token. */
  readonly canRelogin: boolean;
  login(api: VaultApi): Promise<Token>;
}

async function lookupSelf(api: VaultApi, value: string, method: string): Promise<Token> {
  let r: VaultResponse;
  try {
    r = await api.request('GET', 'auth/token/lookup-self', { token: value });
  } catch (e) {
    if (e instanceof VaultError && e.status === 403) {
      throw new AuthFailed(`${method}: the token is invalid, expired or revoked`, { status: 403 });
    }
    throw e;
  }
  const d = r.data ?? {};
  return {
    value,
    ttl: Number(d.ttl ?? 0) || 0,
    renewable: Boolean(d.renewable),
    obtained: performance.now(),
    keep: false,
    retryAfter: 0,
  };
}

export class TokenAuth implements AuthMethod {
  readonly name = 'token';
  constructor(private readonly token?: string, private readonly file?: string) {
    if (token === undefined && file === undefined) throw new AuthFailed('token auth needs a token or a token file');
  }
  get canRelogin(): boolean {
    return this.file !== undefined; // an agent may have written a new token
  }
  get source(): string {
    return this.file ?? 'VAULT_TOKEN';
  }
  async login(api: VaultApi): Promise<Token> {
    const value = this.file === undefined ? this.token! : readSecretFile(this.file, 'Vault token');
    return lookupSelf(api, value, `token (${this.source})`);
  }
}

export class KubernetesAuth implements AuthMethod {
  readonly name = 'kubernetes';
  readonly canRelogin = true;
  constructor(readonly role: string, readonly jwtPath: string, readonly mount = 'kubernetes') {}
  async login(api: VaultApi): Promise<Token> {
    const jwt = readSecretFile(this.jwtPath, 'Kubernetes service-account token');
    try {
      const r = await api.request('POST', `auth/${this.mount}/login`, {
        body: { role: this.role, jwt },
        authenticated: false,
      });
      return tokenFromAuth(r.body, 'kubernetes');
    } catch (e) {
      if (e instanceof VaultError && (e.status === 400 || e.status === 403)) {
        throw new AuthFailed(
          `kubernetes login as role ${JSON.stringify(this.role)} at auth/${this.mount} was refused` +
            ` (HTTP ${e.status}: ${e.detail || 'no reason given'}); check the role's bound service accounts and the JWT`,
          { status: e.status },
        );
      }
      throw e;
    }
  }
}

export interface AppRoleOptions {
  roleId?: string | undefined;
  roleIdFile?: string | undefined;
  secretId?: string | undefined;
  secretIdFile?: string | undefined;
  mount?: string | undefined;
}

export class AppRoleAuth implements AuthMethod {
  readonly name = 'approle';
  readonly canRelogin = true;
  readonly mount: string;
  constructor(private readonly o: AppRoleOptions) {
    if (o.roleId === undefined && o.roleIdFile === undefined) {
      throw new AuthFailed('approle auth needs VAULT_ROLE_ID or VAULT_ROLE_ID_FILE');
    }
    this.mount = o.mount ?? 'approle';
  }
  async login(api: VaultApi): Promise<Token> {
    const body: Record<string, string> = {
      role_id: this.o.roleId ?? readSecretFile(this.o.roleIdFile!, 'AppRole role-id'),
    };
    if (this.o.secretId !== undefined) body.secret_id = this.o.secretId;
    else if (this.o.secretIdFile !== undefined) body.secret_id = readSecretFile(this.o.secretIdFile, 'AppRole secret-id');
    try {
      const r = await api.request('POST', `auth/${this.mount}/login`, { body, authenticated: false });
      return tokenFromAuth(r.body, 'approle');
    } catch (e) {
      if (e instanceof VaultError && (e.status === 400 || e.status === 403)) {
        throw new AuthFailed(
          `approle login at auth/${this.mount} was refused (HTTP ${e.status}: ${e.detail || 'no reason given'});` +
            ' check the role-id and secret-id',
          { status: e.status },
        );
      }
      throw e;
    }
  }
}

/**
 * TLS certificate auth: the connection's client certificate (VAULT_CLIENT_CERT) is the
 * credential; `auth/<mount>/login` with an optional role `name`.
 */
export class CertAuth implements AuthMethod {
  readonly name = 'cert';
  readonly canRelogin = true;
  constructor(
    readonly clientCert: string | undefined,
    readonly role: string | undefined = undefined,
    readonly mount = 'cert',
  ) {
    if (clientCert === undefined) {
      throw new AuthFailed('cert auth needs a client certificate: set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY');
    }
  }
  async login(api: VaultApi): Promise<Token> {
    try {
      const r = await api.request('POST', `auth/${this.mount}/login`, {
        body: this.role ? { name: this.role } : {},
        authenticated: false,
        idempotent: true,
      });
      return tokenFromAuth(r.body, 'cert');
    } catch (e) {
      if (e instanceof VaultError && (e.status === 400 || e.status === 403)) {
        const as = this.role ? ` as role ${JSON.stringify(this.role)}` : '';
        throw new AuthFailed(
          `cert login${as} at auth/${this.mount} with ${this.clientCert} was refused (HTTP ${e.status}: ${e.detail || 'no reason given'});` +
            ' check that a cert role there (VAULT_CERT_ROLE) trusts the CA of VAULT_CLIENT_CERT and allows its names',
          { status: e.status },
        );
      }
      throw e;
    }
  }
}

/**
 * No credentials of our own: requests go without a token to a Vault Agent whose API
 * proxy adds its auto-auth token (`api_proxy { use_auto_auth_token = true }`).
 */
export class AgentProxyAuth implements AuthMethod {
  readonly name = 'agent';
  readonly canRelogin = false;
  async login(): Promise<Token> {
    return { value: '', ttl: 0, renewable: false, obtained: performance.now(), keep: false, retryAfter: 0 };
  }
}

class NoAuth implements AuthMethod {
  readonly name = 'none';
  readonly canRelogin = false;
  async login(): Promise<Token> {
    throw new AuthFailed(
      'no Vault credentials: set VAULT_TOKEN, VAULT_TOKEN_FILE, VAULT_ROLE_ID/VAULT_SECRET_ID,' +
        ' VAULT_CLIENT_CERT/VAULT_CLIENT_KEY (cert auth), or run in Kubernetes with a service-account token',
    );
  }
}

/**
 * Pick the auth method: explicit `authMethod`, else the first credential found
 * (`auto`): VAULT_TOKEN, VAULT_TOKEN_FILE, AppRole ids, then, with VAULT_AGENT_ADDR
 * set, no token at all (the agent's API proxy adds its own), else the Kubernetes
 * service-account token file, a client certificate (VAULT_CLIENT_CERT: cert auth),
 * ~/.vault-token. A certificate used only for mutual TLS never shadows a credential
 * found before it; `authMethod: 'cert'` (VAULT_AUTH_METHOD=cert) picks cert auth in a pod.
 */
export function authFromSettings(s: VaultSettings): AuthMethod {
  const m = s.authMethod;
  const approleGiven = s.roleId !== undefined || s.roleIdFile !== undefined;
  const approle = () =>
    new AppRoleAuth({
      roleId: s.roleId,
      roleIdFile: s.roleIdFile,
      secretId: s.secretId,
      secretIdFile: s.secretIdFile,
      mount: s.approleMount,
    });
  if (m === 'token' || (m === 'auto' && (s.token || s.tokenFile))) {
    if (s.token) return new TokenAuth(s.token);
    if (s.tokenFile) return new TokenAuth(undefined, s.tokenFile);
    if (existsSync(s.homeTokenPath)) return new TokenAuth(undefined, s.homeTokenPath);
    throw new AuthFailed("auth method 'token' but no VAULT_TOKEN, VAULT_TOKEN_FILE or ~/.vault-token");
  }
  if (m === 'approle' || (m === 'auto' && approleGiven)) return approle();
  if (m === 'auto' && s.agentAddr !== undefined) return new AgentProxyAuth();
  if (m === 'kubernetes' || (m === 'auto' && existsSync(s.kubernetesJwtPath))) {
    return new KubernetesAuth(s.role, s.kubernetesJwtPath, s.kubernetesMount);
  }
  if (m === 'cert' || (m === 'auto' && s.clientCert !== undefined)) {
    return new CertAuth(s.clientCert, s.certRole, s.certMount ?? 'cert');
  }
  if (existsSync(s.homeTokenPath)) return new TokenAuth(undefined, s.homeTokenPath);
  return new NoAuth();
}

/** Holds the current token; single-flight login, renewal at a fraction of the TTL. */
export class TokenManager {
  private current: Token | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  private renewer: NodeJS.Timeout | null = null;
  private generation = 0;
  private closed = false;
  logins = 0;
  renewals = 0;

  constructor(
    readonly method: AuthMethod,
    private readonly api: VaultApi,
  ) {}

  private get fraction(): number {
    return this.api.settings.renewFraction;
  }

  private locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** The current token (the public value is the caller's business: never log it). */
  get token(): Token | null {
    return this.current;
  }

  /** The current token when it needs no refresh (no promise, no await); else null. */
  ready(): string | null {
    const t = this.current;
    if (t === null) return null;
    const at = renewAt(t, this.fraction);
    return at === null || performance.now() < at ? t.value : null;
  }

  async get(): Promise<string> {
    const t = this.current;
    if (t !== null) {
      const at = renewAt(t, this.fraction);
      if (at === null || performance.now() < at) return t.value;
    }
    return (await this.refresh()).value;
  }

  private due(t: Token): boolean {
    const at = renewAt(t, this.fraction);
    return at !== null && performance.now() >= at;
  }

  refresh(forceLogin = false, stale: Token | null = null): Promise<Token> {
    return this.locked(async () => {
      const t = this.current;
      if (t !== null && t !== stale) {
        if (forceLogin || !this.due(t)) return t; // fresh, or somebody else refreshed meanwhile
      }
      if (t !== null && !forceLogin && !expired(t)) {
        if (t.renewable) {
          const renewed = await this.renew(t);
          if (renewed !== null) return renewed;
        }
        if (!this.method.canRelogin) {
          t.keep = true; // neither renewable nor replaceable: use it while it lasts
          return t;
        }
      }
      return this.login();
    });
  }

  private async login(): Promise<Token> {
    const generation = this.generation;
    const token = await this.method.login(this.api);
    if (this.generation !== generation) throw new VaultError('the Vault client was closed during login');
    this.logins += 1;
    this.current = token;
    this.api.logger.info('vault login ok', { auth_method: this.method.name, ttl: token.ttl, renewable: token.renewable });
    this.schedule();
    return token;
  }

  private async renew(t: Token): Promise<Token | null> {
    let r: VaultResponse;
    try {
      r = await this.api.request('POST', 'auth/token/renew-self', { body: {}, token: t.value, retries: 0 });
    } catch (e) {
      if (!(e instanceof VaultError)) throw e;
      this.api.logger.warn('vault token renewal failed', { auth_method: this.method.name, error: e.name });
      if (e.status === 403 || this.method.canRelogin) return null;
      t.retryAfter = performance.now() + 5000; // Vault unreachable: keep it, retry shortly
      return t;
    }
    const fresh = tokenFromAuth(r.body, 'renew-self');
    if (this.closed) return t;
    // Renewals are capped at the max TTL: when it gained little, a fresh login is better.
    if (this.method.canRelogin && t.ttl > 0 && fresh.ttl < t.ttl * (1 - this.fraction)) return null;
    this.renewals += 1;
    this.current = fresh;
    this.api.logger.info('vault token renewed', { auth_method: this.method.name, ttl: fresh.ttl });
    this.schedule();
    return fresh;
  }

  /**
   * After a 403 with token `used`: `retry` when a new token is there (a fresh login, or
   * another caller's); `denied` when the token is alive (lookup-self works: a real
   * permission problem); `dead` when it is invalid, expired or revoked and no fresh
   * login is possible.
   */
  async handleForbidden(used: string): Promise<'retry' | 'denied' | 'dead'> {
    const stale = this.current;
    if (this.method.canRelogin && stale !== null && stale.value !== used) return 'retry'; // already replaced
    try {
      await this.api.request('GET', 'auth/token/lookup-self', { token: used, retries: 0 });
      return 'denied';
    } catch (e) {
      if (!(e instanceof VaultError) || e.status !== 403) return 'denied';
    }
    if (!this.method.canRelogin) return 'dead';
    await this.refresh(true, stale);
    return 'retry';
  }

  /** Background renewal (an unref'd timer) so that an idle process stays logged in. */
  private schedule(): void {
    if (this.renewer !== null) clearTimeout(this.renewer);
    this.renewer = null;
    const t = this.current;
    const at = t ? renewAt(t, this.fraction) : null;
    if (t === null || at === null || this.closed) return;
    const generation = this.generation;
    // +10 ms: a timer may fire a little before performance.now() says it is due.
    this.renewer = setTimeout(() => {
      this.renewer = null;
      if (this.current !== t || this.generation !== generation) return;
      this.refresh()
        .then(() => {
          if (this.renewer === null && this.generation === generation) this.schedule();
        })
        .catch((e: unknown) => {
          this.api.logger.warn('background token refresh failed', { error: (e as Error).name });
          if (this.generation !== generation) return;
          this.renewer = setTimeout(() => this.schedule(), 1000);
          this.renewer.unref();
        });
    }, Math.max(50, at - performance.now() + 10));
    this.renewer.unref();
  }

  /** Stop renewing and forget the token; a login or renewal in flight is discarded. */
  close(): void {
    this.generation += 1;
    this.closed = true;
    if (this.renewer !== null) clearTimeout(this.renewer);
    this.renewer = null;
    this.current = null;
  }
}

// ------------------------------------------------------------------------- the API client
export type Consistency = 'index' | 'forward' | 'none';

export interface VaultApiOptions {
  logger?: Logger;
  consistency?: Consistency;
  authMethod?: AuthMethod;
}

/** A low-level Vault API client (one keep-alive pool). Paths are relative to /v1/. */
export class VaultApi {
  readonly tokens: TokenManager;
  readonly logger: Logger;
  readonly consistency: Consistency;
  /** Requests sent (attempts, including retries and redirects), by method. */
  readonly stats: { requests: number; byMethod: Record<string, number> } = { requests: 0, byMethod: {} };
  private agent: http.Agent | null = null;
  private index: string | null = null;
  /** Bumped by close(): a request in flight then is not retried (nor logs in again). */
  private closings = 0;
  private readonly base: URL;
  private readonly baseHeaders: Record<string, string>;
  private readonly targets = new Map<string, Target>();
  private readonly timeoutMs: number;
  private ca: Buffer | Buffer[] | undefined;

  constructor(
    readonly settings: VaultSettings,
    options: VaultApiOptions = {},
  ) {
    this.logger = options.logger ?? consoleLogger;
    this.consistency = options.consistency ?? 'index';
    this.base = new URL(`${apiAddr(settings)}/v1/`);
    this.timeoutMs = settings.timeout * 1000;
    this.baseHeaders = { Accept: 'application/json' };
    if (settings.namespace) this.baseHeaders['X-Vault-Namespace'] = settings.namespace;
    if (this.consistency === 'forward') this.baseHeaders['X-Vault-Inconsistent'] = 'forward-active-node';
    this.tokens = new TokenManager(options.authMethod ?? authFromSettings(settings), this);
  }

  private getAgent(): http.Agent {
    if (this.agent !== null) return this.agent;
    if (this.base.protocol === 'https:') {
      if (this.settings.skipVerify) {
        this.logger.warn('TLS certificate verification is disabled (VAULT_SKIP_VERIFY)');
      }
      const st = this.settings;
      const readPem = (file: string, key: 'cacert' | 'clientCert' | 'clientKey', dflt: string): Buffer => {
        try {
          return readFileSync(file);
        } catch (e) {
          const name = st.sources?.[key] ?? dflt;
          throw new ConfigurationError(`cannot read ${name} ${JSON.stringify(file)}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, {
            variable: name,
          });
        }
      };
      // VAULT_CACERT wins over VAULT_CAPATH, as for the Vault CLI.
      if (st.cacert) this.ca ??= readPem(st.cacert, 'cacert', 'VAULT_CACERT');
      else if (st.capath) this.ca ??= caDirectory(st.capath, st.sources?.capath ?? 'VAULT_CAPATH');
      const opts: https.AgentOptions = {
        keepAlive: true,
        maxSockets: st.poolSize,
        timeout: IDLE_SOCKET_MS,
        rejectUnauthorized: !st.skipVerify,
      };
      if (this.ca !== undefined) opts.ca = this.ca;
      if (st.clientCert !== undefined && st.clientKey !== undefined) {
        opts.cert = readPem(st.clientCert, 'clientCert', 'VAULT_CLIENT_CERT');
        opts.key = readPem(st.clientKey, 'clientKey', 'VAULT_CLIENT_KEY');
        try {
          createSecureContext({ cert: opts.cert, key: opts.key }); // a mismatch fails here, not per request
        } catch (e) {
          // The OpenSSL reason only (e.g. KEY_VALUES_MISMATCH), never the files' contents.
          throw new ConfigurationError(
            `invalid configuration: VAULT_CLIENT_CERT ${JSON.stringify(st.clientCert)} and VAULT_CLIENT_KEY` +
              ` ${JSON.stringify(st.clientKey)} cannot be loaded as a pair (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
            { variable: st.sources?.clientCert ?? 'VAULT_CLIENT_CERT' },
          );
        }
      }
      // SNI and the name checked in the server's certificate (node checks `servername`).
      if (st.tlsServerName) opts.servername = st.tlsServerName;
      this.agent = new https.Agent(opts);
    } else {
      this.agent = new http.Agent({ keepAlive: true, maxSockets: this.settings.poolSize, timeout: IDLE_SOCKET_MS });
    }
    return this.agent;
  }

  /** Stop token renewal and close the connection pool. The client may be used again. */
  close(): void {
    this.closings += 1;
    this.tokens.close();
    this.agent?.destroy();
    this.agent = null;
  }

  /** Send one API request with retries; throw a typed {@link VaultError} on failure. */
  async request(method: string, path: string, options: RequestOptions = {}): Promise<VaultResponse> {
    validatePath(path);
    const authenticated = options.authenticated ?? true;
    const maxRetries = options.retries ?? this.settings.maxRetries;
    const index = this.consistency !== 'none' ? this.index : null;
    let relogged = false;
    let attempt = 0;
    const target = this.target(path, options.params);
    const payload = options.body === undefined ? undefined : Buffer.from(JSON.stringify(options.body));
    const idempotent = options.idempotent;
    const closings = this.closings;
    for (;;) {
      if (this.closings !== closings) {
        throw new VaultUnavailable(`the Vault client was closed while ${JSON.stringify(path)} was in flight`, { path });
      }
      let used = '';
      // A token that needs no refresh is taken without an await (a miss's usual case).
      if (authenticated) used = options.token ?? this.tokens.ready() ?? (await this.tokens.get());
      const headers: http.OutgoingHttpHeaders = { ...this.baseHeaders };
      if (used !== '') headers['X-Vault-Token'] = used; // '': a Vault Agent's API proxy adds its own
      if (index !== null) headers['X-Vault-Index'] = index;
      if (payload !== undefined) {
        headers['Content-Type'] = 'application/json';
        headers['Content-Length'] = payload.length;
      }
      let res: RawResponse;
      try {
        res = await this.send(method, target, headers, payload);
        if (REDIRECT_STATUS.has(res.status)) res = await this.follow(method, target, headers, payload, res);
      } catch (e) {
        if (!(e instanceof TransportError)) throw e;
        if (TLS_ERRORS.has(e.code) || CLIENT_CERT_ALERTS.has(e.code)) {
          throw new VaultUnavailable(this.tlsFailure(path, e.code), { path });
        }
        const retry = shouldRetry(method, { failure: e.failure, idempotent });
        if (retry && attempt < maxRetries) {
          await this.backoff(attempt, path, e.code);
          attempt += 1;
          continue;
        }
        if (!retry) {
          // The request may have been applied: resending it could apply it twice.
          throw new VaultUnavailable(
            `${method} ${JSON.stringify(path)} to ${apiAddr(this.settings)} failed after it was sent (${e.code}); not resent,` +
              ' since it may have been applied: check its effect before trying again',
            { path },
          );
        }
        throw new VaultUnavailable(
          `Vault at ${apiAddr(this.settings)} unreachable for ${JSON.stringify(path)}: ${e.code} after ${attempt + 1} attempt(s)`,
          { path },
        );
      }
      const { status, body } = res;
      if (res.refused !== undefined) {
        throw new VaultRequestError(
          `Vault redirected ${JSON.stringify(path)} to ${res.refused}, which is neither ${this.base.origin} nor a configured` +
            ' cluster member (MAILY_SECRETS_CLUSTER_MEMBERS); not followed, the token was not sent there',
          { path, status },
        );
      }
      if (status >= 200 && status < 300) {
        if (method !== 'GET') {
          const idx = res.headers['x-vault-index'];
          if (typeof idx === 'string' && idx) this.index = newerIndex(this.index, idx);
        }
        const obj = body !== null && typeof body === 'object' ? (body as Record<string, any>) : null; // eslint-disable-line @typescript-eslint/no-explicit-any
        const data = obj && obj.data !== null && typeof obj.data === 'object' && !Array.isArray(obj.data) ? obj.data : null;
        return { status, body: obj, data, headers: res.headers };
      }
      if (attempt < maxRetries && shouldRetry(method, { status, detail: errorsOf(body), idempotent })) {
        await this.backoff(attempt, path, `HTTP ${status}`);
        attempt += 1;
        continue;
      }
      if (status === 403 && authenticated && options.token === undefined && !relogged) {
        relogged = true; // an expired or revoked token: log in again once, then retry
        const verdict = await this.tokens.handleForbidden(used);
        if (verdict === 'retry') continue;
        if (verdict === 'dead') {
          const source = this.tokens.method instanceof TokenAuth ? ` (${this.tokens.method.source})` : '';
          throw new AuthFailed(
            `the Vault token${source} is invalid, expired or revoked (HTTP 403 for ${JSON.stringify(path)});` +
              ' give a valid token, or use an auth method that can log in again',
            { path, status, detail: errorsOf(body) },
          );
        }
      }
      throw this.error(status, body, path);
    }
  }

  /** `path` (relative to /v1/, already validated) and its query as a request target. */
  private target(path: string, params: Record<string, string> | undefined): Target {
    if (params === undefined) {
      const known = this.targets.get(path);
      if (known !== undefined) return known;
    }
    const url = new URL(path, this.base);
    if (params === undefined) {
      const t = targetOf(url);
      if (this.targets.size < MAX_TARGETS) this.targets.set(path, t);
      return t;
    }
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    return targetOf(url);
  }

  /** One HTTP exchange (no redirect followed): the status, the parsed JSON body, the headers. */
  private send(method: string, target: Target, headers: http.OutgoingHttpHeaders, payload: Buffer | undefined): Promise<RawResponse> {
    const agent = this.getAgent();
    this.stats.requests += 1;
    this.stats.byMethod[method] = (this.stats.byMethod[method] ?? 0) + 1;
    const tls = target.protocol === 'https:';
    return new Promise<RawResponse>((resolve, reject) => {
      // Until the connection is established nothing can have reached the server:
      // a failure then is `connect` (safe to resend); after, `sent` (outcome unknown).
      let connected = false;
      const req = (tls ? https : http).request(
        {
          protocol: target.protocol,
          hostname: target.hostname,
          port: target.port,
          path: target.path,
          method,
          headers,
          agent,
          // The socket's inactivity timeout while this request holds it (connecting included).
          timeout: this.timeoutMs,
        },
        (resp) => {
          let first: Buffer | null = null;
          let rest: Buffer[] | null = null;
          resp.on('data', (c: Buffer) => {
            if (first === null) first = c;
            else (rest ??= [first]).push(c);
          });
          resp.on('error', (err: NodeJS.ErrnoException) => reject(new TransportError(err.code ?? err.name, 'sent')));
          resp.on('aborted', () => reject(new TransportError('ECONNRESET', 'sent')));
          resp.on('end', () => {
            const raw: Buffer | null = rest !== null ? Buffer.concat(rest) : first;
            let body: unknown = null;
            if (raw !== null && raw.length) {
              try {
                body = JSON.parse(raw.toString('utf8'));
              } catch {
                body = null;
              }
            }
            resolve({ status: resp.statusCode ?? 0, body, headers: resp.headers });
          });
        },
      );
      // A kept-alive socket is connected; the agent says so before request() returns.
      if (req.reusedSocket) connected = true;
      else {
        req.once('socket', (sock) => {
          if (!sock.connecting && !(sock as { pending?: boolean }).pending) {
            connected = true; // a kept-alive socket handed over from the queue
            return;
          }
          sock.once(tls ? 'secureConnect' : 'connect', () => {
            connected = true;
          });
        });
      }
      req.on('timeout', timeoutError);
      req.on('error', (err: NodeJS.ErrnoException) => reject(new TransportError(errorCode(err), connected ? 'sent' : 'connect')));
      if (payload !== undefined) req.write(payload);
      req.end();
    });
  }

  /**
   * Follow 307/308 (at most MAX_REDIRECTS hops): a standby pointing at the active node gets
   * the same method, body and token, but only at the same origin or a configured cluster
   * member (never https -> http). A refused one comes back with `refused` set.
   */
  private async follow(
    method: string,
    first: Target,
    headers: http.OutgoingHttpHeaders,
    payload: Buffer | undefined,
    res: RawResponse,
  ): Promise<RawResponse> {
    let current = new URL(first.path, this.base);
    let r = res;
    for (let hop = 0; ; hop++) {
      const loc = r.headers.location;
      if (!REDIRECT_STATUS.has(r.status) || typeof loc !== 'string' || !loc) return r;
      const next = redirectTarget(current, loc, this.settings.clusterMembers);
      if (next === null) {
        let where = 'another origin';
        try {
          const u = new URL(loc, current);
          where = u.protocol === 'http:' || u.protocol === 'https:' ? u.origin : `a ${u.protocol} URL`;
        } catch {
          where = 'an invalid URL';
        }
        return { ...r, refused: where };
      }
      if (hop >= MAX_REDIRECTS) return { status: 508, body: { errors: ['too many redirects'] }, headers: {} };
      current = next;
      r = await this.send(method, targetOf(next), headers, payload);
    }
  }

  private tlsFailure(path: string, code: string): string {
    const st = this.settings;
    const where = `${apiAddr(st)} for ${JSON.stringify(path)}`;
    if (CLIENT_CERT_ALERTS.has(code)) {
      const fix =
        st.clientCert === undefined && code === 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE'
          ? 'if the server requires a client certificate (tls_require_and_verify_client_cert), set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY (mutual TLS)'
          : st.clientCert === undefined
          ? 'the server requires a client certificate: set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY (mutual TLS)'
          : `the server refused the client certificate ${st.clientCert} (VAULT_CLIENT_CERT): is it signed by a CA` +
            ' the listener trusts (tls_client_ca_file), valid now, and for client auth?';
      return `TLS handshake with ${where} failed (${code}); ${fix}`;
    }
    if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
      const fix = st.tlsServerName
        ? `VAULT_TLS_SERVER_NAME is ${JSON.stringify(st.tlsServerName)}: set it to a name in the server's certificate`
        : "set VAULT_TLS_SERVER_NAME to a name in the server's certificate, or use that name in VAULT_ADDR";
      return `TLS verification of ${where} failed (${code}); ${fix}`;
    }
    const trust = st.capath && !st.cacert ? 'VAULT_CAPATH' : 'VAULT_CACERT';
    return `TLS verification of ${where} failed (${code}); set ${trust} to the CA that signed the server's certificate`;
  }

  private async backoff(attempt: number, path: string, cause: string): Promise<void> {
    const cap = Math.min(this.settings.retryMaxDelay, this.settings.retryBaseDelay * 2 ** attempt);
    const delay = cap / 2 + Math.random() * (cap / 2);
    this.logger.debug(`retrying ${path} in ${delay.toFixed(3)}s after ${cause}`);
    await sleep(delay * 1000);
  }

  private error(status: number, body: unknown, path: string): VaultError {
    const detail = errorsOf(body);
    const where = JSON.stringify(path);
    const o = { path, status, detail };
    const cls = errorClass(status, detail);
    if (cls === SecretNotFound) return new SecretNotFound(`secret ${where} not found`, o);
    if (cls === PermissionDenied) {
      return new PermissionDenied(
        `permission denied for ${where}` +
          (detail && detail !== 'permission denied' ? ` (Vault: ${detail})` : '') +
          "; check the token's policies and the path",
        o,
      );
    }
    if (cls === VaultUnavailable) {
      return new VaultUnavailable(`Vault answered HTTP ${status} for ${where}` + (detail ? `: ${detail}` : ''), o);
    }
    if (cls === CheckAndSetConflict) return new CheckAndSetConflict(`check-and-set conflict writing ${where}: ${detail}`, o);
    return new VaultRequestError(`Vault rejected the request for ${where} (HTTP ${status})` + (detail ? `: ${detail}` : ''), o);
  }

  // ----------------------------------------------------------------- conveniences
  read(path: string, params?: Record<string, string>): Promise<VaultResponse> {
    return this.request('GET', path, params ? { params } : {});
  }

  write(path: string, data: unknown = {}): Promise<VaultResponse> {
    return this.request('POST', path, { body: data });
  }

  delete(path: string): Promise<VaultResponse> {
    return this.request('DELETE', path);
  }

  async list(path: string): Promise<string[]> {
    try {
      const r = await this.request('LIST', path);
      const keys = (r.data?.keys ?? []) as unknown[];
      return keys.map(String);
    } catch (e) {
      if (e instanceof SecretNotFound) return [];
      throw e;
    }
  }

  // ----------------------------------------------------------------- KV v2
  async kvRead(p: KV2Path): Promise<{ data: SecretData; version: number }> {
    return kvValue(p, await this.request('GET', p.data));
  }

  /** 0 when the secret does not exist. */
  async kvCurrentVersion(p: KV2Path): Promise<number> {
    try {
      const r = await this.request('GET', p.metadata);
      return Number(r.data?.current_version ?? 0) || 0;
    } catch (e) {
      if (e instanceof SecretNotFound) return 0;
      throw e;
    }
  }

  /** Write a new version if the current one is `cas` (0: only if absent); returns the new version. */
  async kvWrite(p: KV2Path, data: SecretData, cas: number): Promise<number> {
    const r = await this.request('POST', p.data, { body: { options: { cas }, data } });
    return Number(r.data?.version ?? 0) || 0;
  }
}
