/**
 * Secret path validation and KV v2 path arithmetic (mirrors maily_secrets.paths).
 *
 * Paths are Vault API paths without the `/v1/` prefix, as the guide writes them:
 * `maily/data/config`. Validation happens before any request.
 */
import { InvalidPath } from './errors.js';

export const MAX_PATH_LENGTH = 1024;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;
// eslint-disable-next-line no-control-regex
const CONTROL_ALL = /[\x00-\x1f\x7f]/g;
const FORBIDDEN = ['?', '#', '%', '\\'];
const valid = new Set<string>();

function show(s: string): string {
  return JSON.stringify(s.replace(CONTROL_ALL, '?').slice(0, 200));
}

/** Return `path` if it is a safe relative Vault path, else throw {@link InvalidPath}. */
export function validatePath(path: unknown): string {
  if (typeof path !== 'string') {
    throw new InvalidPath(`secret path must be a string, got ${path === null ? 'null' : typeof path}`);
  }
  if (valid.has(path)) return path;
  check(path);
  if (valid.size < 4096) valid.add(path);
  return path;
}

function check(path: string): void {
  if (!path) throw new InvalidPath('secret path is empty', { path });
  const shown = show(path);
  const p = { path: path.replace(CONTROL_ALL, '?').slice(0, 200) };
  if (path.length > MAX_PATH_LENGTH) {
    throw new InvalidPath(`secret path ${shown} is longer than ${MAX_PATH_LENGTH}`, p);
  }
  if (CONTROL.test(path)) {
    throw new InvalidPath(`secret path ${shown} contains a control character`, p);
  }
  const lower = path.toLowerCase();
  if (path.includes('://') || lower.startsWith('http:') || lower.startsWith('https:') || path.startsWith('//')) {
    throw new InvalidPath(
      `secret path ${shown} looks like a URL; give a path such as 'maily/data/config'`,
      p,
    );
  }
  const bad = FORBIDDEN.filter((c) => path.includes(c)).sort();
  if (bad.length) {
    throw new InvalidPath(
      `secret path ${shown} contains forbidden character(s) ${JSON.stringify(bad.join(''))}`,
      p,
    );
  }
  const segments = path.split('/');
  if (segments.some((s) => s === '')) {
    throw new InvalidPath(
      `secret path ${shown} has an empty segment (leading, trailing or double '/')`,
      p,
    );
  }
  if (segments.some((s) => s === '.' || s === '..')) {
    throw new InvalidPath(`secret path ${shown} contains '.' or '..'`, p);
  }
  if (segments.some((s) => s !== s.trim())) {
    throw new InvalidPath(`secret path ${shown} has a segment with leading/trailing spaces`, p);
  }
}

/** A KV v2 secret: `<mount>/data/<name>`. */
export interface KV2Path {
  readonly mount: string;
  readonly name: string;
  readonly data: string;
  readonly metadata: string;
}

/**
 * Split `maily/data/config` into mount and name; `null` if not a KV v2 data path.
 * The first `data` segment after the first segment separates mount from name.
 */
export function parseKV2(path: string): KV2Path | null {
  validatePath(path);
  const segments = path.split('/');
  for (let i = 1; i < segments.length - 1; i++) {
    if (segments[i] === 'data') {
      const mount = segments.slice(0, i).join('/');
      const name = segments.slice(i + 1).join('/');
      return { mount, name, data: `${mount}/data/${name}`, metadata: `${mount}/metadata/${name}` };
    }
  }
  return null;
}
