/**
 * Typed errors of @maily/services/vault, mirroring maily_secrets.errors.
 *
 * Every message names the path and the cause, never a secret value.
 *
 *     VaultError
 *     ├── ConfigurationError   a setting (environment variable) is invalid; names the variable
 *     ├── InvalidPath          the path was refused before any request was made
 *     ├── SecretNotFound       the path does not exist (HTTP 404)
 *     │   └── TransitKeyNotFound
 *     ├── PermissionDenied     the token may not do this (HTTP 403 after re-login)
 *     ├── AuthFailed           logging in (token, Kubernetes, AppRole) failed
 *     ├── VaultRequestError    Vault refused the request (other 4xx)
 *     │   ├── CheckAndSetConflict
 *     │   ├── InvalidCiphertext
 *     │   │   └── DecryptionFailed
 *     │   ├── CiphertextVersionTooOld
 *     │   └── TransitContextError
 *     ├── DecryptedNotText     decrypt() asked for text, the plaintext is not UTF-8
 *     ├── InvalidSecretValue   getSecret<T>(path, validate): the validator refused the value
 *     └── VaultUnavailable     connection error, timeout, sealed, or 5xx after retries
 */

export interface VaultErrorOptions {
  path?: string | undefined;
  status?: number | undefined;
  /** Vault's own error text (never a secret value). */
  detail?: string | undefined;
}

export class VaultError extends Error {
  readonly path: string | undefined;
  readonly status: number | undefined;
  readonly detail: string;

  constructor(message: string, options: VaultErrorOptions = {}) {
    super(message);
    this.name = new.target.name;
    this.path = options.path;
    this.status = options.status;
    this.detail = options.detail ?? '';
  }
}

/** A setting is invalid; `variable` names the environment variable. Nothing was sent. */
export class ConfigurationError extends VaultError {
  readonly variable: string | undefined;

  constructor(message: string, options: VaultErrorOptions & { variable?: string | undefined } = {}) {
    super(message, options);
    this.variable = options.variable;
  }
}
/** The secret path is malformed; no request was sent. */
export class InvalidPath extends VaultError {}
/** The secret does not exist (or was deleted/destroyed). Never an empty object. */
export class SecretNotFound extends VaultError {}
/** Vault answered 403 for this path even with a fresh login. */
export class PermissionDenied extends VaultError {}
/** Authentication to Vault failed (bad token, role, JWT or secret-id). */
export class AuthFailed extends VaultError {}
/** Vault rejected the request (4xx other than 403/404). */
export class VaultRequestError extends VaultError {}
/** A KV v2 write's check-and-set version did not match the current version. */
export class CheckAndSetConflict extends VaultRequestError {}
/** Vault could not be reached or kept failing (connection, timeout, 5xx, sealed). */
export class VaultUnavailable extends VaultError {}

// ---------------------------------------------------------------- transit
/** The transit key does not exist (and encrypt may not create it: upsert disabled). */
export class TransitKeyNotFound extends SecretNotFound {}
/** The ciphertext is malformed, or names a key version newer than the key has. */
export class InvalidCiphertext extends VaultRequestError {}
/** The ciphertext did not authenticate: altered, another key, or another context. */
export class DecryptionFailed extends InvalidCiphertext {}
/** The ciphertext's key version is below the key's min_decryption_version. */
export class CiphertextVersionTooOld extends VaultRequestError {}
/** A derived key needs a context. */
export class TransitContextError extends VaultRequestError {}
/** decrypt() was asked for text but the plaintext is not UTF-8 (use { asBytes: true }). */
export class DecryptedNotText extends VaultError {}

/** The validator given to `getSecret<T>(path, validate)` refused the value (names the error class, never the value). */
export class InvalidSecretValue extends VaultError {}
