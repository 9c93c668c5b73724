/**
 * Secret path validation and KV v2 path arithmetic (mirrors maily_secrets.paths).
 *
 * Paths are Vault API paths without the `/v1/` prefix, as the guide writes them:
 * `maily/data/config`. Validation happens before any request.
 */
import { InvalidPath } from './errors.js';

export const MAX_PATH_LENGTH = 1024; // code points, as in Python

/**
 * The characters no path may contain (the same table as maily_secrets.paths, checked by
 * tests/conformance/cases.json): C0 and C1 controls and DEL (Cc), format characters (Cf:
 * soft hyphen, BOM, zero-width space/joiners, bidi marks, embeddings, overrides and
 * isolates, invisible operators, tags), line and paragraph separators (Zl, Zp), lone
 * surrogates (Cs) and every space separator except U+0020 (Zs: NBSP, ideographic
 * space...), as of Unicode 17; plus the noncharacters (U+FDD0-FDEF, U+xFFFE/xFFFF).
 * An explicit table, not \p{Cf}: Python's and Node's Unicode versions differ.
 * Ordinary letters of any script, digits, marks, symbols and emoji are allowed.
 */
const FORBIDDEN_CHAR =
  /[\u0000-\u001f\u007f-\u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u3000\ud800-\udfff\ufdd0-\ufdef\ufeff\ufff9-\ufffb\ufffe\uffff\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}\u{1fffe}\u{1ffff}\u{2fffe}\u{2ffff}\u{3fffe}\u{3ffff}\u{4fffe}\u{4ffff}\u{5fffe}\u{5ffff}\u{6fffe}\u{6ffff}\u{7fffe}\u{7ffff}\u{8fffe}\u{8ffff}\u{9fffe}\u{9ffff}\u{afffe}\u{affff}\u{bfffe}\u{bffff}\u{cfffe}\u{cffff}\u{dfffe}\u{dffff}\u{efffe}\u{effff}\u{ffffe}\u{fffff}\u{10fffe}\u{10ffff}]/u;
const FORBIDDEN_CHAR_ALL = new RegExp(FORBIDDEN_CHAR.source, 'gu');
/** Characters that would change the meaning of the URL we build. */
const FORBIDDEN = ['?', '#', '%', '\\'];
const valid = new Set<string>();

function codePoints(s: string): number {
  if (s.length <= MAX_PATH_LENGTH) return s.length; // UTF-16 units >= code points
  let n = 0;
  for (const _ of s) n += 1; // eslint-disable-line @typescript-eslint/no-unused-vars
  return n;
}

function clean(s: string): string {
  return [...s.replace(FORBIDDEN_CHAR_ALL, '?')].slice(0, 200).join('');
}

function show(s: string): string {
  return JSON.stringify(clean(s));
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
  const p = { path: clean(path) };
  if (codePoints(path) > MAX_PATH_LENGTH) {
    throw new InvalidPath(`secret path ${shown} is longer than ${MAX_PATH_LENGTH}`, p);
  }
  const m = FORBIDDEN_CHAR.exec(path);
  if (m !== null) {
    const cp = m[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0');
    throw new InvalidPath(`secret path ${shown} contains a control, format or separator character (U+${cp})`, p);
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
  if (segments.some((s) => s.startsWith(' ') || s.endsWith(' '))) {
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
  const known = kv2Paths.get(path);
  if (known !== undefined) return known;
  validatePath(path);
  const kv = splitKV2(path);
  if (kv2Paths.size < 4096) kv2Paths.set(path, kv);
  return kv;
}

/** Parsed paths (a miss parses its path once, not once per read); frozen, so shared safely. */
const kv2Paths = new Map<string, KV2Path | null>();

function splitKV2(path: string): KV2Path | null {
  const segments = path.split('/');
  for (let i = 1; i < segments.length - 1; i++) {
    if (segments[i] === 'data') {
      const mount = segments.slice(0, i).join('/');
      const name = segments.slice(i + 1).join('/');
      return Object.freeze({ mount, name, data: `${mount}/data/${name}`, metadata: `${mount}/metadata/${name}` });
    }
  }
  return null;
}
