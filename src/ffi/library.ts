/**
 * Finds, builds when needed, and loads the native shim.
 *
 * Search order:
 * 1. the path given to {@linkcode loadNative} or in `DENO_KVM_LIB`;
 * 2. when this module is a `file:` URL, `native/build/libkvm_shim.so` beside
 *    the sources (what `deno task build` produces);
 * 3. otherwise a build in the per-user cache (`$DENO_KVM_CACHE`, or
 *    `$XDG_CACHE_HOME/deno-kvm`, or `~/.cache/deno-kvm`) keyed by the hash of
 *    the C source, compiled with `cc` on first use. The source is read from
 *    disk for a `file:` import and fetched for an `https:` one (JSR), since
 *    `Deno.dlopen` only loads files from the local disk. For a remote import
 *    the key is {@linkcode SHIM_SOURCE_HASH}, known without the source: once
 *    a build is cached, `Kvm.open()` finds it synchronously (no
 *    `loadNative()`) and nothing is fetched again, so later runs work offline.
 *
 * A cached build is loaded only when the directory and the file belong to the
 * current user and are not writable by group or others (otherwise loading is
 * refused with the path: someone else could have planted the library), and
 * when its SHA-256 matches the one written beside it at build time (a
 * truncated or altered build is rebuilt, never `dlopen`ed: a truncated
 * library would crash the process with SIGBUS). Builds happen in a fresh
 * private temporary directory, never through predictable names.
 *
 * @module
 */

import {
  ensureCacheDir,
  readVerified,
  sha256Hex,
  untrustedReason,
  userCacheDir,
  writeExclusive,
} from "../cache_dir.ts";
import { type NativeSymbols, SHIM_VERSION, symbols } from "./symbols.ts";
import { SHIM_SOURCE_HASH } from "./shim_hash.ts";

export { SHIM_SOURCE_HASH };

/** Raised when the native shim cannot be found, built or loaded. */
export class NativeLoadError extends Error {
  /** Creates the error; `cause` keeps the underlying failure. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NativeLoadError";
  }
}

/** Options of {@linkcode loadNative}. */
export interface LoadOptions {
  /** Path of a prebuilt `libkvm_shim.so`; overrides `DENO_KVM_LIB`. */
  path?: string;
}

const SOURCE_URL = new URL("../../native/kvm_shim.c", import.meta.url);
const LOCAL_BUILD = new URL("../../native/build/libkvm_shim.so", import.meta.url);

/** Compiler flags; the same as `deno task build`. */
export const CC_FLAGS = ["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror"];

let loaded: Deno.DynamicLibrary<typeof symbols> | undefined;

/**
 * The loaded shim, loading it synchronously on first use. Throws a
 * {@linkcode NativeLoadError} when the source would have to be fetched over the
 * network (a JSR import whose cache is cold): call {@linkcode loadNative} first.
 */
export function native(): NativeSymbols {
  if (loaded) return loaded.symbols;
  checkPlatform();
  const explicit = envPath();
  if (explicit) return open(explicit);
  if (SOURCE_URL.protocol === "file:") {
    const local = LOCAL_BUILD.pathname;
    if (exists(local) && isFresh(local)) return open(local);
    // No build could be loaded without --allow-ffi: name that flag before the cache asks for
    // --allow-write (as it did in a fresh clone, where there is no local build yet).
    requireFfi(cacheDir());
    return open(buildCached(readSource()));
  }
  const dir = cacheDir();
  const cached = cachedBuild(dir, SHIM_SOURCE_HASH);
  if (cached) return open(cached);
  throw new NativeLoadError(
    `no build of the native shim (version ${SHIM_VERSION}) is cached in ${dir}; ` +
      `it must be fetched from ${SOURCE_URL.href} and compiled once: ` +
      "call `await loadNative()` before the first `Kvm.open()`, or set DENO_KVM_LIB",
  );
}

/**
 * Loads the shim, fetching and compiling its source when needed. Safe to call
 * more than once; only the first call does work.
 */
export async function loadNative(options: LoadOptions = {}): Promise<void> {
  if (loaded) return;
  checkPlatform();
  const explicit = options.path ?? envPath();
  if (explicit) return void open(explicit);
  if (SOURCE_URL.protocol === "file:") return void native();
  // A build of this shim version is cached: use it, offline.
  const cached = cachedBuild(cacheDir(), SHIM_SOURCE_HASH);
  if (cached) return void open(cached);
  let source: string;
  try {
    const response = await fetch(SOURCE_URL);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    source = await response.text();
  } catch (cause) {
    throw new NativeLoadError(
      `cannot fetch the native shim's source ${SOURCE_URL.href}: ${describe(cause)}`,
      { cause },
    );
  }
  open(buildCached(source));
}

/** Path of the shared library in use, or undefined before loading. */
export let nativePath: string | undefined;

function open(path: string): NativeSymbols {
  try {
    loaded = Deno.dlopen(path, symbols);
  } catch (cause) {
    throw new NativeLoadError(
      `cannot load the native shim ${path}: ${describe(cause)}${permissionHint(cause, "ffi")}`,
      { cause },
    );
  }
  const version = loaded.symbols.kvm_shim_version();
  if (version !== SHIM_VERSION) {
    loaded.close();
    loaded = undefined;
    throw new NativeLoadError(
      `${path} is shim version ${version}, this library needs ${SHIM_VERSION}: ` +
        "rebuild it (`deno task build`)",
    );
  }
  nativePath = path;
  return loaded.symbols;
}

function checkPlatform(): void {
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") {
    throw new NativeLoadError(
      `KVM for Deno runs on Linux x86-64 only, not ${Deno.build.os} ${Deno.build.arch}`,
    );
  }
}

function envPath(): string | undefined {
  try {
    return Deno.env.get("DENO_KVM_LIB") || undefined;
  } catch {
    // Without --allow-env the variable simply does not apply.
    return undefined;
  }
}

function readSource(): string {
  try {
    return Deno.readTextFileSync(SOURCE_URL);
  } catch (cause) {
    throw new NativeLoadError(
      `cannot read ${SOURCE_URL.pathname}: ${describe(cause)}${permissionHint(cause, "read")}`,
      { cause },
    );
  }
}

/** A local build is fresh when it is newer than its source. */
function isFresh(path: string): boolean {
  try {
    const lib = Deno.statSync(path).mtime?.getTime() ?? 0;
    const src = Deno.statSync(SOURCE_URL).mtime?.getTime() ?? Infinity;
    return lib >= src;
  } catch {
    return true;
  }
}

function cacheDir(): string {
  const dir = userCacheDir();
  if (!dir) {
    throw new NativeLoadError(
      "no cache directory for the native shim: set DENO_KVM_CACHE or HOME (needs --allow-env)",
    );
  }
  return dir;
}

function buildCached(source: string): string {
  return cachedShim(source, cacheDir());
}

/**
 * The path of a verified build of `source` in the cache directory `dir`,
 * compiling it when there is none or the one there fails its SHA-256 check
 * (`libkvm_shim-<hash of the source>.so` with its `.sha256` beside it).
 * Throws a {@linkcode NativeLoadError} naming the path when `dir` or the
 * build in it is not the current user's or is writable by group or others.
 * Used by the loader; exported for tests and tools.
 */
export function cachedShim(source: string, dir: string): string {
  const hash = shimSourceHash(source);
  return cachedBuild(dir, hash) ?? buildInCache(source, dir, hash);
}

/**
 * The path of the verified build keyed `hash` in the cache directory `dir`,
 * or undefined when there is none (or it fails its SHA-256 check: it is
 * rebuilt then). Creates `dir` (mode 0700); throws a
 * {@linkcode NativeLoadError} naming the path when `dir` or the build is not
 * the current user's or is writable by group or others.
 */
function cachedBuild(dir: string, hash: string): string | undefined {
  const path = cachePath(dir, hash);
  let problem: string | undefined;
  try {
    problem = ensureCacheDir(dir);
  } catch (cause) {
    throw new NativeLoadError(
      `cannot create the cache directory ${dir}: ${describe(cause)}${
        permissionHint(cause, "write")
      }`,
      { cause },
    );
  }
  if (problem) {
    throw new NativeLoadError(
      `refusing to use the cache directory ${dir} for the native shim: ${problem}. ` +
        "Fix its owner and mode, or set DENO_KVM_CACHE to a directory of your own",
    );
  }
  if (present(path)) {
    problem = untrustedReason(path, "file");
    if (problem) {
      throw new NativeLoadError(
        `refusing to load the cached native shim ${path}: ${problem}. Remove it to rebuild`,
      );
    }
    if (readVerified(path)) return path;
    // Truncated, altered, or from a build without a hash: build it again.
  }
  return undefined;
}

function cachePath(dir: string, hash: string): string {
  return `${dir}/libkvm_shim-${hash}.so`;
}

function buildInCache(source: string, dir: string, key: string): string {
  const path = cachePath(dir, key);
  let tmp: string | undefined;
  try {
    // mkdtemp: a fresh directory of mode 0700 under a random name; cc writes only in there.
    tmp = Deno.makeTempDirSync({ dir, prefix: ".build-" });
    const src = writeExclusive(tmp, new TextEncoder().encode(source), "kvm_shim-", ".c");
    const lib = `${tmp}/libkvm_shim.so`;
    compile(src, lib);
    const hash = writeExclusive(tmp, new TextEncoder().encode(sha256Hex(Deno.readFileSync(lib))));
    Deno.renameSync(lib, path);
    Deno.renameSync(hash, `${path}.sha256`);
  } catch (cause) {
    if (cause instanceof NativeLoadError) throw cause;
    throw new NativeLoadError(
      `cannot build the native shim in ${dir}: ${describe(cause)}${permissionHint(cause, "write")}`,
      { cause },
    );
  } finally {
    if (tmp) {
      try {
        Deno.removeSync(tmp, { recursive: true });
      } catch {
        // Already gone.
      }
    }
  }
  if (!readVerified(path)) {
    throw new NativeLoadError(`the native shim built at ${path} changed before it was loaded`);
  }
  return path;
}

/** Compiles the shim with `cc`; used by the loader and `deno task build`. */
export function compile(source: string, output: string): void {
  let result: Deno.CommandOutput;
  try {
    result = new Deno.Command("cc", { args: [...CC_FLAGS, "-o", output, source] }).outputSync();
  } catch (cause) {
    if (cause instanceof Deno.errors.NotFound) {
      throw new NativeLoadError(
        "the native shim must be compiled but `cc` is not installed: " +
          "install a C compiler (Debian: `apt-get install gcc`) or set DENO_KVM_LIB",
        { cause },
      );
    }
    throw new NativeLoadError(
      `cannot run cc: ${describe(cause)}${permissionHint(cause, "run=cc")}`,
      { cause },
    );
  }
  if (!result.success) {
    throw new NativeLoadError(
      `cc failed to compile ${source}:\n${new TextDecoder().decode(result.stderr)}`,
    );
  }
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Whether anything (a file, a symlink, even a dangling one) is at `path`. */
function present(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function requireFfi(dir: string): void {
  if (Deno.permissions.querySync({ name: "ffi", path: dir }).state === "granted") return;
  throw new NativeLoadError(
    `cannot load the native shim from ${dir}: Deno.dlopen needs --allow-ffi (run Deno with --allow-ffi)`,
  );
}

function permissionHint(error: unknown, flag: string): string {
  return error instanceof Deno.errors.NotCapable ? ` (run Deno with --allow-${flag})` : "";
}

/**
 * The cache key of a shim source: its FNV-1a 64-bit hash in hex (enough to key
 * a cache by source text; the build itself is checked by SHA-256).
 * {@linkcode SHIM_SOURCE_HASH} is this of `native/kvm_shim.c`.
 */
export function shimSourceHash(text: string): string {
  let hash = 0xcbf29ce484222325n;
  for (const byte of new TextEncoder().encode(text)) {
    hash = BigInt.asUintN(64, (hash ^ BigInt(byte)) * 0x100000001b3n);
  }
  return hash.toString(16).padStart(16, "0");
}
