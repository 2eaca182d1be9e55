/**
 * The boot CLI's start-up as one module: a `deno bundle` of the CLI's sources
 * kept in the per-user cache (`<cache>/cli/`, see `userCacheDir`), run in
 * their place only while every source file it was built from is unchanged.
 *
 * Why: Deno's cost of a module graph is mostly per module, not per byte. In
 * the sandbox's emulator (`bench/RESULTS.md`, issue 17) the CLI's 108 modules
 * take 2.1-2.9 s to `--version`, the same code as one bundled module 1.6-1.8 s,
 * an empty `deno eval` 1.3-1.5 s.
 *
 * The sources stay the truth. {@linkcode launch} runs the bundle only when
 * {@linkcode checkBundle} finds it fresh: its record (a manifest beside it)
 * names the Deno version, the entry and, for every file of the entry's module
 * graph (as `deno info` listed it when the bundle was built), the file's
 * status stamp (`fileStamp`: device, inode, size, modification and change
 * times; any write, truncation or rename of a file sets a new change time),
 * and the bundle's SHA-256 (checked once, then while the bundle's own stamp,
 * kept beside it, stays the same). The files must be ours (owner and mode, as the
 * kernel cache's). Otherwise the sources run, and after the run (never before
 * the guest does) {@linkcode buildBundle} writes a new bundle: stamps taken
 * before `deno bundle` and compared after it, so a file edited meanwhile is
 * never recorded as what the bundle holds; a file changed less than 2 s ago
 * is not stamped at all (the next run builds). A bundle that cannot be built
 * costs only the fast path.
 *
 * The bundle's modules keep their own URLs: `deno bundle` leaves
 * `import.meta.url` as it is (it would name the bundle's file), so each
 * module's uses are replaced by its source file's URL (workers, the native
 * shim's source and build resolve as from the sources); a bundle with any
 * other use of `import.meta` than `.main`, or a dynamic `import()`, is refused.
 *
 * With the CLI, the machines' AP workers get a bundle of their own (`ap_worker.ts`:
 * the vCPU worker and its AP device, about sixty modules), built and checked
 * with the CLI's under one record, and started through `setApWorkerModule`.
 *
 * `DENO_KVM_CLI_BUNDLE=0` runs the sources and builds nothing.
 *
 * @module
 */

import {
  ensureCacheDir,
  fileStamp,
  readStamp,
  sha256HexAsync,
  untrustedReason,
  userCacheDir,
  writeExclusive,
  writeStamp,
} from "../cache_dir.ts";

/** One bundle file of a record: its name in the same directory and its SHA-256 (hex). */
interface BundleFile {
  file: string;
  sha256: string;
}

/** The record kept beside the bundles (`<key>.json`). */
interface Manifest {
  format: 2;
  /** `Deno.version.deno` of the Deno that built it. */
  deno: string;
  /** The entry module's URL. */
  entry: string;
  /** The worker entry's URL, if any. */
  worker?: string;
  /** The entry's bundle, then the worker's, if any. */
  bundles: BundleFile[];
  /** Every local file of the entries' module graphs: path and `fileStamp` line. */
  sources: [string, string][];
}

/** A worker's module bundled beside the entry (the machines' AP workers). */
export interface WorkerBundle {
  /** The worker's module (a `file:` URL). */
  entry: URL;
  /**
   * Source files whose dynamic `import()`s are known to take absolute URLs
   * (the vCPU worker's device modules), so they may stay in the bundle.
   */
  dynamicImportsIn?: readonly string[];
}

/** Where a bundle is kept and what it is built from. */
export interface BundleOptions {
  /**
   * The entry module (a `file:` URL), whose export `main` the bundle keeps
   * (and, with {@linkcode BundleOptions.worker}, `setApWorkerModule`).
   */
  entry: URL;
  /** A worker's module to bundle and check with the entry. */
  worker?: WorkerBundle;
  /** The directory for bundles; default `<userCacheDir()>/cli`. */
  directory?: string;
  /** The `deno` that builds the bundle; default `Deno.execPath()`. */
  deno?: string;
}

/**
 * What {@linkcode checkBundle} found: the bundle to run (and the worker's),
 * or why not.
 */
export type BundleCheck =
  | { url: string; workerUrl?: string; reason?: undefined }
  | { url?: undefined; workerUrl?: undefined; reason: string };

const FORMAT = 2;

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function defaultDirectory(): string | undefined {
  const base = userCacheDir();
  return base ? `${base}/cli` : undefined;
}

/** The name stem of an entry's files: one manifest and one bundle per entry (per checkout). */
function entryKey(options: BundleOptions): string {
  // FNV-1a, twice over (two seeds): a name, not a check (the manifest names its entries), and no
  // WebCrypto to start up for it (tens of ms in the sandbox's emulator).
  const text = `${options.entry.href} ${options.worker?.entry.href ?? ""}`;
  let a = 0x811c9dc5, b = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < text.length; i++) {
    a = Math.imul(a ^ text.charCodeAt(i), 0x01000193);
    b = Math.imul(b ^ text.charCodeAt(i), 0x01000193);
  }
  return `boot-${(a >>> 0).toString(16).padStart(8, "0")}${
    (b >>> 0).toString(16).padStart(8, "0")
  }`;
}

function stampOf(path: string, how: "stat" | "lstat" = "stat"): string | undefined {
  try {
    return fileStamp(how === "stat" ? Deno.statSync(path) : Deno.lstatSync(path));
  } catch {
    return undefined;
  }
}

function parseManifest(text: string): Manifest | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  const m = value as Partial<Manifest> | null;
  if (
    !m || m.format !== FORMAT || typeof m.deno !== "string" || typeof m.entry !== "string" ||
    (m.worker !== undefined && typeof m.worker !== "string") ||
    !Array.isArray(m.bundles) || m.bundles.length !== (m.worker === undefined ? 1 : 2) ||
    !m.bundles.every((b) =>
      typeof b?.file === "string" && /^[\w.-]+\.js$/.test(b.file) &&
      typeof b.sha256 === "string" && /^[0-9a-f]{64}$/.test(b.sha256)
    ) ||
    !Array.isArray(m.sources) || m.sources.length === 0 ||
    !m.sources.every((s) =>
      Array.isArray(s) && s.length === 2 && typeof s[0] === "string" && typeof s[1] === "string"
    )
  ) return undefined;
  return m as Manifest;
}

/**
 * Whether the bundle kept for `options.entry` may run in its place: the
 * directory, the manifest and the bundle are ours, the manifest names this
 * Deno and this entry, every source file it lists has the stamp it recorded,
 * and the bundle's SHA-256 is the recorded one. Never throws.
 */
export async function checkBundle(options: BundleOptions): Promise<BundleCheck> {
  const dir = options.directory ?? defaultDirectory();
  if (!dir) return { reason: "no cache directory (set DENO_KVM_CACHE or HOME)" };
  try {
    const manifestPath = `${dir}/${entryKey(options)}.json`;
    const untrusted = untrustedReason(dir, "directory") ?? untrustedReason(manifestPath, "file");
    if (untrusted) return { reason: untrusted };
    const manifest = parseManifest(Deno.readTextFileSync(manifestPath));
    if (!manifest) return { reason: `${manifestPath} is damaged` };
    if (manifest.deno !== Deno.version.deno) {
      return { reason: `built by Deno ${manifest.deno}, this is ${Deno.version.deno}` };
    }
    if (
      manifest.entry !== options.entry.href || manifest.worker !== options.worker?.entry.href
    ) return { reason: `built for ${manifest.entry} ${manifest.worker ?? ""}` };
    for (const [path, stamp] of manifest.sources) {
      if (stampOf(path) !== stamp) return { reason: `${path} changed` };
    }
    const urls: string[] = [];
    for (const { file, sha256 } of manifest.bundles) {
      const bundlePath = `${dir}/${file}`;
      const bundleUntrusted = untrustedReason(bundlePath, "file");
      if (bundleUntrusted) return { reason: bundleUntrusted };
      // The bundle's content is checked by its SHA-256 once; while its status stays the same (a
      // stamp kept beside it once it settled, as the kernel cache's entries) it is not read
      // again: hashing costs 50-100 ms in the sandbox's emulator, which the bundle is to save.
      const stampPath = `${bundlePath}.stamp`;
      const stamp = stampOf(bundlePath, "lstat");
      if (!stamp || readStamp(stampPath) !== `${stamp}\n${sha256}`) {
        if (await sha256HexAsync(Deno.readFileSync(bundlePath)) !== sha256) {
          return { reason: `${bundlePath} is damaged` };
        }
        if (stamp) writeStamp(stampPath, `${stamp}\n${sha256}`);
      }
      urls.push(new URL(`file://${bundlePath}`).href);
    }
    return { url: urls[0], workerUrl: urls[1] };
  } catch (e) {
    return { reason: message(e) };
  }
}

/**
 * The local files of `entry`'s module graph, from `deno info --json` (without
 * a configuration file, as the bundle is built), or why there is none: an
 * error in the graph or a module that is not a local file (a remote module
 * has no stamp). `node:` built-ins are part of Deno.
 */
async function graphFiles(deno: string, entry: URL): Promise<string[] | string> {
  const out = await new Deno.Command(deno, {
    args: ["info", "--json", "--no-config", entry.pathname],
    cwd: "/",
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) return `deno info failed: ${new TextDecoder().decode(out.stderr).trim()}`;
  const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    modules?: { specifier: string; local?: string; error?: string }[];
  };
  const files: string[] = [];
  for (const m of info.modules ?? []) {
    if (m.specifier.startsWith("node:")) continue;
    if (m.error || !m.specifier.startsWith("file:") || !m.local) {
      return `the module graph holds ${m.specifier}${m.error ? `: ${m.error}` : ""}`;
    }
    files.push(m.local);
  }
  return files.length > 0 ? files : "an empty module graph";
}

/**
 * `deno bundle`'s output with each module's `import.meta.url` replaced by its
 * source file's URL, or why it cannot run in the sources' place. The bundler
 * marks each module's code with a `// path` line (relative to the directory
 * it ran in, here `/`); every `import.meta` must lie under a mark that names
 * a file of the graph whose source uses `import.meta.url`, and no dynamic
 * `import()` may be left (it would resolve against the bundle's URL).
 */
export function rewriteBundle(
  code: string,
  files: readonly string[],
  dynamicImportsIn: readonly string[] = [],
): string | { problem: string } {
  const known = new Set(files);
  const lines = code.split("\n");
  let current: string | undefined;
  const rewritten = new Set<string>();
  for (let i = 0; i < lines.length; i++) {
    const mark = /^\/\/ (\S+)$/.exec(lines[i]);
    if (mark) {
      const path = `/${mark[1]}`;
      current = known.has(path) ? path : undefined;
      continue;
    }
    if (
      /\bimport\s*\(/.test(lines[i]) &&
      (!current || !dynamicImportsIn.includes(current) || /\bimport\s*\(\s*["'`]/.test(lines[i]))
    ) return { problem: `a dynamic import: ${lines[i].trim()}` };
    if (!lines[i].includes("import.meta")) continue;
    const uses: string[] = lines[i].match(/\bimport\.meta\.\w+/g) ?? [];
    if (
      uses.length === 0 || uses.some((u) => u !== "import.meta.url" && u !== "import.meta.main")
    ) {
      return { problem: `an unknown use of import.meta: ${lines[i].trim()}` };
    }
    if (!uses.includes("import.meta.url")) continue;
    if (!current) return { problem: `import.meta.url outside a known module: ${lines[i].trim()}` };
    const url = JSON.stringify(new URL(`file://${current}`).href);
    lines[i] = lines[i].replaceAll(/\bimport\.meta\.url\b/g, url);
    rewritten.add(current);
  }
  for (const path of rewritten) {
    if (!Deno.readTextFileSync(path).includes("import.meta.url")) {
      return { problem: `import.meta.url placed in ${path}, whose source has none` };
    }
  }
  return lines.join("\n");
}

/** How long a failed build keeps the next runs from trying again, ms. */
export const BUILD_RETRY_MS = 3_600_000;

/** Why the last build failed, when it did less than {@linkcode BUILD_RETRY_MS} ago. */
function lastFailure(path: string): string | undefined {
  if (untrustedReason(path, "file")) return undefined;
  try {
    const age = Date.now() - (Deno.statSync(path).mtime?.getTime() ?? 0);
    if (!(age >= 0 && age < BUILD_RETRY_MS)) return undefined;
    return `the last build, ${Math.round(age / 1000)} s ago, failed (tried again ${
      BUILD_RETRY_MS / 60_000
    } min after it): ${Deno.readTextFileSync(path).slice(0, 500)}`;
  } catch {
    return undefined;
  }
}

/**
 * Builds the bundle of `options.entry` and records it (see the module's
 * documentation); returns why it could not, or undefined. Runs `deno info`
 * and `deno bundle` (needs `--allow-run`; its first use fetches esbuild, as
 * `deno bundle` does); a bundle is recorded only when no source file changed
 * while it was built. A failure of either (or a bundle {@linkcode rewriteBundle}
 * refuses) is kept beside the bundle, and for {@linkcode BUILD_RETRY_MS} a
 * build returns it without trying again.
 */
export async function buildBundle(options: BundleOptions): Promise<string | undefined> {
  const dir = options.directory ?? defaultDirectory();
  if (!dir) return "no cache directory (set DENO_KVM_CACHE or HOME)";
  const deno = options.deno ?? Deno.execPath();
  try {
    const base = dir.slice(0, dir.lastIndexOf("/"));
    const untrusted = (base && !options.directory ? ensureCacheDir(base) : undefined) ??
      ensureCacheDir(dir);
    if (untrusted) return untrusted;
    const key = entryKey(options);
    const failedPath = `${dir}/${key}.failed`;
    const failed = lastFailure(failedPath);
    if (failed) return failed;
    // A failure that a later try cannot undo soon (no esbuild to fetch offline, a source the
    // bundle cannot hold) is kept, so that every run does not pay for it again.
    const fail = (problem: string) => {
      try {
        Deno.renameSync(
          writeExclusive(dir, new TextEncoder().encode(problem), ".failed-", ".tmp"),
          failedPath,
        );
      } catch {
        // Tried again next run.
      }
      return problem;
    };
    const entries = [
      { url: options.entry, dynamicImportsIn: [] as readonly string[] },
      ...options.worker
        ? [{ url: options.worker.entry, dynamicImportsIn: options.worker.dynamicImportsIn ?? [] }]
        : [],
    ];
    const graphs: string[][] = [];
    for (const entry of entries) {
      const files = await graphFiles(deno, entry.url);
      if (typeof files === "string") return fail(files);
      graphs.push(files);
    }
    const files = [...new Set(graphs.flat())];
    const before = files.map((path) => stampOf(path));
    const unsettled = files.find((_, i) => before[i] === undefined);
    if (unsettled) return `${unsettled} changed less than 2 s ago (or cannot be read)`;
    const codes: Uint8Array[] = [];
    for (const [i, entry] of entries.entries()) {
      const out = await new Deno.Command(deno, {
        args: [
          "bundle",
          "--no-config",
          "--platform",
          "deno",
          "--format",
          "esm",
          entry.url.pathname,
        ],
        cwd: "/",
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      if (!out.success) {
        const why = new TextDecoder().decode(out.stderr).trim().slice(-500);
        return fail(`deno bundle failed: ${why}`);
      }
      const code = rewriteBundle(
        new TextDecoder().decode(out.stdout),
        graphs[i],
        entry.dynamicImportsIn,
      );
      if (typeof code !== "string") return fail(code.problem);
      codes.push(new TextEncoder().encode(code));
    }
    const changed = files.find((path, i) => stampOf(path) !== before[i]);
    if (changed) return `${changed} changed while the bundle was built`;
    const manifestPath = `${dir}/${key}.json`;
    let previous: string[] = [];
    try {
      previous = parseManifest(Deno.readTextFileSync(manifestPath))?.bundles.map((b) => b.file) ??
        [];
    } catch {
      // None yet.
    }
    const bundles: BundleFile[] = [];
    for (const [i, bytes] of codes.entries()) {
      const sha256 = await sha256HexAsync(bytes);
      const file = `${key}-${i === 0 ? "" : "worker-"}${sha256.slice(0, 16)}.js`;
      Deno.renameSync(writeExclusive(dir, bytes, ".bundle-", ".tmp"), `${dir}/${file}`);
      bundles.push({ file, sha256 });
    }
    const manifest: Manifest = {
      format: FORMAT,
      deno: Deno.version.deno,
      entry: options.entry.href,
      ...options.worker ? { worker: options.worker.entry.href } : {},
      bundles,
      sources: files.map((path, i) => [path, before[i]!]),
    };
    Deno.renameSync(
      writeExclusive(dir, new TextEncoder().encode(JSON.stringify(manifest)), ".manifest-", ".tmp"),
      manifestPath,
    );
    try {
      Deno.removeSync(failedPath);
    } catch {
      // No failure kept.
    }
    // A run that checked an old bundle and has not imported it yet falls back to the sources.
    for (const old of previous.filter((file) => !bundles.some((b) => b.file === file))) {
      for (const path of [`${dir}/${old}`, `${dir}/${old}.stamp`]) {
        try {
          Deno.removeSync(path);
        } catch {
          // Removed by another build.
        }
      }
    }
    return undefined;
  } catch (e) {
    return message(e);
  }
}

/** What {@linkcode launch} runs: the entry's `main`. */
type Main = (argv: readonly string[]) => Promise<number>;

async function importMain(url: string, workerUrl?: string): Promise<Main> {
  const module = await import(url) as { main?: unknown; setApWorkerModule?: unknown };
  if (typeof module.main !== "function") throw new Error(`${url} exports no main`);
  if (workerUrl) {
    if (typeof module.setApWorkerModule !== "function") {
      throw new Error(`${url} exports no setApWorkerModule`);
    }
    (module.setApWorkerModule as (url: string) => void)(workerUrl);
  }
  return module.main as Main;
}

/**
 * Runs `options.entry`'s `main(argv)` from its fresh bundle (see
 * {@linkcode checkBundle}) or else from its sources, then, when the sources
 * ran and main did not refuse its arguments (exit code 2), builds the bundle
 * for the next run ({@linkcode buildBundle}). Returns
 * main's exit code. With `--trace` among the arguments it says on stderr
 * which ran and why.
 */
export async function launch(argv: readonly string[], options: BundleOptions): Promise<number> {
  const say = argv.includes("--trace")
    ? (what: string) => console.error(`boot_linux: ${what}`)
    : () => {};
  let enabled = true;
  try {
    enabled = Deno.env.get("DENO_KVM_CLI_BUNDLE") !== "0";
  } catch {
    // No env access: the default.
  }
  const check: BundleCheck = enabled
    ? await checkBundle(options)
    : { reason: "DENO_KVM_CLI_BUNDLE=0" };
  const checked = Math.round(performance.now());
  let main: Main | undefined;
  if (check.url) {
    say(`${checked} ms CLI bundle checked`);
    try {
      main = await importMain(check.url, check.workerUrl);
      say(`${Math.round(performance.now())} ms CLI loaded from its bundle`);
    } catch (e) {
      say(`the CLI's bundle did not load: ${message(e)}`);
    }
  } else {
    say(`the CLI's bundle is not used: ${check.reason}`);
  }
  const fromSources = main === undefined;
  if (!main) {
    main = await importMain(options.entry.href);
    say(`${Math.round(performance.now())} ms CLI loaded from its sources`);
  }
  const code = await main(argv);
  // Not after a refusal of the arguments (exit code 2): a mistyped command line gets its answer
  // without waiting for a build.
  if (fromSources && enabled && code !== 2) {
    const problem = await buildBundle(options);
    say(problem ? `the CLI's bundle was not built: ${problem}` : "the CLI's bundle was built");
  }
  return code;
}

/**
 * What the repository's boot CLI (`examples/boot_linux.ts`) bundles: the
 * CLI's `main` with the AP worker hook (`bundle_entry.ts`), and the AP
 * workers' module (`ap_worker.ts`, whose vCPU worker imports device modules
 * by absolute URL).
 */
export function bootCliBundle(directory?: string): BundleOptions {
  return {
    entry: new URL("./bundle_entry.ts", import.meta.url),
    worker: {
      entry: new URL("./ap_worker.ts", import.meta.url),
      dynamicImportsIn: [new URL("../context/vcpu_worker.ts", import.meta.url).pathname],
    },
    ...directory ? { directory } : {},
  };
}
