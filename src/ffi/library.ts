/**
 * Finds, builds when needed, and loads the native shim.
 *
 * Search order:
 * 1. the path given to {@linkcode loadNative} or in `DENO_KVM_LIB`;
 * 2. when this module is a `file:` URL, `native/build/libkvm_shim.so` beside
 *    the sources (what `deno task build` produces), when it is newer than its
 *    source;
 * 3. otherwise a build in the per-user cache (`$DENO_KVM_CACHE`, or
 *    `$XDG_CACHE_HOME/deno-kvm`, or `~/.cache/deno-kvm`) keyed by the hash of
 *    the C source, compiled with `cc` on first use. The source is read from
 *    disk for a `file:` import (a checkout may have edited it) and otherwise
 *    taken from {@linkcode SHIM_SOURCE}, shipped inside the module: a JSR
 *    import needs no network for it, and the first `Kvm.open()` builds the
 *    shim itself (synchronously). Later runs find the build by
 *    {@linkcode SHIM_SOURCE_HASH} and work offline without `cc`.
 *
 * {@linkcode loadNative} is optional: it does the same with `cc` running
 * asynchronously, so a first use does not block the thread while compiling.
 *
 * A build (the local one or a cached one) is loaded only when it and its
 * directory belong to the current user and are not writable by group or
 * others (otherwise loading is refused with the path: someone else could
 * have planted the library). A cached build must also match the SHA-256
 * written beside it at build time (a truncated or altered build is rebuilt,
 * never `dlopen`ed: a truncated library would crash the process with
 * SIGBUS). Builds happen in a fresh private temporary directory, never
 * through predictable names.
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
import {
  CORE_SYMBOLS,
  LAZY_SYMBOL_GROUPS,
  type NativeSymbols,
  SHIM_VERSION,
  type SymbolName,
  symbols,
} from "./symbols.ts";
import { SHIM_SOURCE_HASH } from "./shim_hash.ts";
import { SHIM_SOURCE } from "./shim_source.ts";

export { SHIM_SOURCE, SHIM_SOURCE_HASH };

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
  /**
   * Bind only the symbols a VM and a vCPU's run loop use now, the others
   * (timers, eventfds, file and tap I/O) in small groups on their first use
   * (default false: all at once). Binding costs about 0.2 ms a symbol
   * natively and 10-20 ms in an emulated sandbox; the boot CLI and the
   * machines' AP workers load this way. A group bound inside a `Deno.test`
   * counts as a dynamic library loaded by that test for its resource
   * sanitizer. Only the first load of a process (or Worker) decides.
   */
  lazySymbols?: boolean;
}

const SOURCE_URL = new URL("../../native/kvm_shim.c", import.meta.url);
const LOCAL_BUILD = new URL("../../native/build/libkvm_shim.so", import.meta.url);

/** Compiler flags; the same as `deno task build`. */
export const CC_FLAGS = ["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror"];

/** The shim's symbols, once loaded (with `lazySymbols`, some bound on first use). */
let loaded: NativeSymbols | undefined;

/**
 * The loaded shim, loading it synchronously on first use: from the local
 * build, the cache, or, on a cold cache, compiled with `cc` right here (the
 * thread blocks for the compile, about a second, once per shim version).
 */
export function native(): NativeSymbols {
  if (loaded) return loaded;
  checkPlatform();
  const explicit = envPath();
  if (explicit) return open(explicit);
  const found = locate();
  return open(typeof found === "string" ? found : buildSync(found));
}

/**
 * Loads the shim, compiling it when needed with `cc` running asynchronously
 * (the thread stays free). Optional: `Kvm.open()` loads it on first use
 * anyway. Safe to call more than once; only the first call does work.
 */
export async function loadNative(options: LoadOptions = {}): Promise<void> {
  if (loaded) return;
  checkPlatform();
  const explicit = options.path ?? envPath();
  if (explicit) return void open(explicit, options.lazySymbols);
  const found = locate();
  const path = typeof found === "string" ? found : await buildAsync(found);
  // Another caller may have loaded it while cc ran.
  if (!loaded) open(path, options.lazySymbols);
}

/** A build the cache lacks: where it goes, under which key, from which source. */
interface Build {
  dir: string;
  key: string;
  source: string;
}

/**
 * The path of a trusted build to load, or the {@linkcode Build} to make:
 * the one search both loaders share (see the module's documentation).
 */
function locate(): string | Build {
  if (SOURCE_URL.protocol === "file:") {
    const local = LOCAL_BUILD.pathname;
    // No build could be loaded without --allow-ffi: name that flag before the trust check
    // asks for --allow-sys or the cache for --allow-write (as in a fresh clone).
    if (exists(local) && isFresh(local)) {
      requireFfi(local);
      checkLocalBuild(local);
      return local;
    }
    requireFfi(cacheDir());
  }
  const dir = cacheDir();
  const source = localSource() ?? SHIM_SOURCE;
  const key = source === SHIM_SOURCE ? SHIM_SOURCE_HASH : shimSourceHash(source);
  return cachedBuild(dir, key) ?? { dir, key, source };
}

/**
 * Refuses the local build `path` unless it and its directory are the
 * current user's and not writable by group or others: the same trust the
 * cache demands (a build anyone else could replace would run their code).
 */
function checkLocalBuild(path: string): void {
  const dir = path.slice(0, path.lastIndexOf("/"));
  const problem = untrustedReason(dir, "directory") ?? untrustedReason(path, "file");
  if (problem) {
    throw new NativeLoadError(
      `refusing to load the local native shim ${path}: ${problem}. ` +
        "Fix its owner and mode (chmod go-w), or remove it and run `deno task build`",
    );
  }
}

/** Path of the shared library in use, or undefined before loading. */
export let nativePath: string | undefined;

/** `Deno.dlopen` of `names` only (each symbol bound costs time: see `CORE_SYMBOLS`). */
function bind(path: string, names: readonly SymbolName[]) {
  const subset: Record<string, Deno.ForeignFunction> = {};
  for (const name of names) subset[name] = symbols[name];
  try {
    return Deno.dlopen(path, subset);
  } catch (cause) {
    throw new NativeLoadError(
      `cannot load the native shim ${path}: ${describe(cause)}${permissionHint(cause, "ffi")}`,
      { cause },
    );
  }
}

function open(path: string, lazy = false): NativeSymbols {
  const core = bind(path, lazy ? CORE_SYMBOLS : Object.keys(symbols) as SymbolName[]);
  const version = (core.symbols.kvm_shim_version as () => number)();
  if (version !== SHIM_VERSION) {
    core.close();
    throw new NativeLoadError(
      `${path} is shim version ${version}, this library needs ${SHIM_VERSION}: ` +
        "rebuild it (`deno task build`)",
    );
  }
  if (!lazy) {
    loaded = core.symbols as NativeSymbols;
    nativePath = path;
    return loaded;
  }
  const table: Record<string, unknown> = { ...core.symbols };
  // The other groups are accessors that bind their group on first use, then return the bound
  // function from then on (the accessor stays: redefining properties would turn the table into
  // a slower dictionary for the hot path's core symbols too).
  for (const group of LAZY_SYMBOL_GROUPS) {
    let bound: Record<string, unknown> | undefined;
    for (const name of group) {
      Object.defineProperty(table, name, {
        enumerable: true,
        get() {
          bound ??= bind(path, group).symbols;
          return bound[name];
        },
      });
    }
  }
  loaded = table as NativeSymbols;
  nativePath = path;
  return loaded;
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

/**
 * The shim's source beside this module in a checkout (`file:` import), or
 * undefined where there is none: then the built-in {@linkcode SHIM_SOURCE}.
 */
function localSource(): string | undefined {
  if (SOURCE_URL.protocol !== "file:") return undefined;
  try {
    return Deno.readTextFileSync(SOURCE_URL);
  } catch (cause) {
    if (cause instanceof Deno.errors.NotFound) return undefined;
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
  return cachedBuild(dir, hash) ?? buildSync({ dir, key: hash, source });
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

/** Runs {@linkcode buildSteps} with `cc` on this thread; returns the build's path. */
function buildSync(build: Build): string {
  const steps = buildSteps(build);
  let step = steps.next();
  while (!step.done) {
    try {
      compile(...step.value);
    } catch (e) {
      step = steps.throw(e); // cleans up and rethrows
      continue;
    }
    step = steps.next();
  }
  return step.value;
}

/** Runs {@linkcode buildSteps} with `cc` as a child process awaited; returns the build's path. */
async function buildAsync(build: Build): Promise<string> {
  const steps = buildSteps(build);
  let step = steps.next();
  while (!step.done) {
    try {
      await compileAsync(...step.value);
    } catch (e) {
      step = steps.throw(e);
      continue;
    }
    step = steps.next();
  }
  return step.value;
}

/**
 * The one build into the cache, for both loaders: it yields the
 * `[source, output]` paths where `cc` must run, so {@linkcode native} runs
 * it synchronously and {@linkcode loadNative} awaits it, and returns the
 * verified build's path. Everything happens in a fresh private temporary
 * directory; the build and its SHA-256 are renamed into place.
 */
function* buildSteps(build: Build): Generator<[string, string], string, void> {
  const { dir, key, source } = build;
  const path = cachePath(dir, key);
  let tmp: string | undefined;
  try {
    // mkdtemp: a fresh directory of mode 0700 under a random name; cc writes only in there.
    tmp = Deno.makeTempDirSync({ dir, prefix: ".build-" });
    const src = writeExclusive(tmp, new TextEncoder().encode(source), "kvm_shim-", ".c");
    const lib = `${tmp}/libkvm_shim.so`;
    yield [src, lib];
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

function ccCommand(source: string, output: string): Deno.Command {
  return new Deno.Command("cc", {
    args: [...CC_FLAGS, "-o", output, source],
    stdout: "null",
    stderr: "piped",
  });
}

/** Compiles the shim with `cc`; used by the loader and `deno task build`. */
export function compile(source: string, output: string): void {
  let result: Deno.CommandOutput;
  try {
    result = ccCommand(source, output).outputSync();
  } catch (cause) {
    throw ccFailure(cause);
  }
  ccDone(source, output, result);
}

/** {@linkcode compile} with `cc` awaited: the calling thread stays free. */
export async function compileAsync(source: string, output: string): Promise<void> {
  let result: Deno.CommandOutput;
  try {
    result = await ccCommand(source, output).output();
  } catch (cause) {
    throw ccFailure(cause);
  }
  ccDone(source, output, result);
}

function ccFailure(cause: unknown): NativeLoadError {
  if (cause instanceof Deno.errors.NotFound) {
    return new NativeLoadError(
      "the native shim must be compiled but `cc` is not installed: " +
        "install a C compiler (Debian: `apt-get install gcc`) or set DENO_KVM_LIB",
      { cause },
    );
  }
  return new NativeLoadError(
    `cannot run cc: ${describe(cause)}${permissionHint(cause, "run=cc")}`,
    { cause },
  );
}

function ccDone(source: string, output: string, result: Deno.CommandOutput): void {
  if (!result.success) {
    throw new NativeLoadError(
      `cc failed to compile ${source}:\n${new TextDecoder().decode(result.stderr)}`,
    );
  }
  // cc creates the file with the umask's mode; the loader refuses a group- or world-writable
  // build, so drop those bits whatever the umask (002 on some systems).
  try {
    Deno.chmodSync(output, 0o755);
  } catch (cause) {
    throw new NativeLoadError(`cannot chmod ${output}: ${describe(cause)}`, { cause });
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
