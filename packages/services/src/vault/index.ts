/**
 * `@maily/services/vault`: Maily's Vault/OpenBao client for TypeScript/JavaScript.
 *
 *     import { getVaultClient } from '@maily/services/vault';
 *     const vault = await getVaultClient();
 *     const config = await vault.getSecret('maily/data/config');
 */
import { VaultClient } from './service.js';

export { VaultClient } from './service.js';
export type { VaultClientOptions, DecryptOptions, OnChangeOptions, CacheStatus, SecretValidator } from './service.js';
export { VaultApi, TokenManager, TokenAuth, AppRoleAuth, KubernetesAuth, CertAuth, AgentProxyAuth, authFromSettings, newerIndex } from './client.js';
export type { VaultResponse, RequestOptions, SecretData, Json, AuthMethod, Token, Consistency } from './client.js';
export { Transit } from './transit.js';
export { FileSecret, ConfigFileUnavailable } from './filesource.js';
export type { Plaintext } from './transit.js';
export { SecretCache, Entry, jsonCopy } from './cache.js';
export type { SecretCallback, WatchMode } from './listeners.js';
export { Watcher, BeaconPoller } from './listeners.js';
export { ChangeFeed, beaconPath, beaconEntries, MAX_BUMP_ATTEMPTS } from './changes.js';
export { validatePath, parseKV2 } from './paths.js';
export type { KV2Path } from './paths.js';
export { loadSettings, normalizeSettings, apiAddr, consoleLogger, DEFAULT_ADDR, DEFAULT_CHANGE_FEED, ENV_PREFIXES } from './settings.js';
export { shouldRetry, redirectTarget, errorClass, isIdempotent, origin, KV_UPGRADING } from './policy.js';
export type { Failure, Outcome } from './policy.js';
export type { VaultSettings, Logger, AuthMethodName } from './settings.js';
export * from './errors.js';

let shared: VaultClient | null = null;

/**
 * The process-wide client (created on first call, configured from the environment).
 * Does no I/O: the first request logs in. After `close()` it may be used again.
 */
export async function getVaultClient(): Promise<VaultClient> {
  if (shared === null) shared = new VaultClient();
  return shared;
}

/** Close and forget the shared client (tests; graceful shutdown). */
export async function closeVaultClient(): Promise<void> {
  const c = shared;
  shared = null;
  if (c !== null) await c.close();
}
