/**
 * The guest's base initramfs: static busybox, the kvm-amd modules, the running deno with its
 * libraries, and the kernel image itself (for VMM tests that boot Linux inside the sandbox).
 * It is heavy (about 110 MB) and changes only with its ingredients, so it is built once and
 * cached, keyed by a hash of them. Each run appends a small archive of its own to a copy.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import { CpioWriter } from "./cpio.ts";
import { cacheDir, fingerprint, hashKey, pruneCache } from "./cache.ts";
import { type HostTools, sharedLibraries } from "./host.ts";

/** Bump when the layout of the base archive changes, to invalidate caches. */
const FORMAT_VERSION = 2;

/**
 * Libraries the VMM opens with `Deno.dlopen` at run time, which `ldd` of deno does not list: the
 * system's liblzma decompresses a kernel's xz payload three times faster than the TypeScript
 * fallback, which matters most under the sandbox's emulator. Carried where the host has them.
 */
const RUNTIME_LIBRARIES = [
  "/usr/lib/x86_64-linux-gnu/liblzma.so.5",
  "/lib/x86_64-linux-gnu/liblzma.so.5",
];

/** The first of {@link RUNTIME_LIBRARIES} that exists (one per library name), resolved paths kept. */
async function runtimeLibraries(): Promise<string[]> {
  const found = new Map<string, string>();
  for (const path of RUNTIME_LIBRARIES) {
    if (found.has(basename(path))) continue;
    try {
      if ((await Deno.stat(path)).isFile) found.set(basename(path), path);
    } catch {
      // not on this host: the guest uses the fallback
    }
  }
  return [...found.values()];
}

/** Where guest paths live; `/init` and the run archive rely on these. */
export const GUEST = {
  busybox: "/bin/busybox",
  deno: "/usr/bin/deno",
  kernel: "/boot/vmlinuz",
  modules: "/sandbox/modules",
} as const;

/** The cache key: a hash over the kernel, deno and busybox binaries and {@link FORMAT_VERSION}. */
export async function baseKey(host: HostTools): Promise<string> {
  return await hashKey([
    `base-format:${FORMAT_VERSION}`,
    await fingerprint(host.kernel.image),
    await fingerprint(host.deno),
    await fingerprint(host.busybox, false),
    ...await Promise.all((await runtimeLibraries()).map((l) => fingerprint(l))),
    ...await Promise.all(host.kernel.modules.map((m) => fingerprint(m))),
  ]);
}

async function pipeOutput(cmd: string, args: string[]): Promise<Uint8Array> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return out.stdout;
}

/** Reads a kernel module, decompressing `.ko.xz`/`.ko.zst`/`.ko.gz` (busybox insmod may not). */
export async function readModule(path: string): Promise<Uint8Array> {
  if (path.endsWith(".ko")) return await Deno.readFile(path);
  if (path.endsWith(".ko.xz")) return await pipeOutput("xz", ["-dc", path]);
  if (path.endsWith(".ko.zst")) return await pipeOutput("zstd", ["-dc", path]);
  if (path.endsWith(".ko.gz")) {
    const stream = (await Deno.open(path)).readable.pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  throw new Error(`unknown kernel module format: ${path}`);
}

/** Writes the base archive's entries (not its trailer) into `w`. */
async function writeBase(w: CpioWriter, host: HostTools): Promise<void> {
  for (const d of ["proc", "sys", "dev", "tmp", "usr/bin", "sbin", "usr/sbin", "project"]) {
    await w.dir(d);
  }
  // The kernel opens /dev/console for init before anything is mounted.
  await w.charDevice("dev/console", 5, 1);
  await w.file(GUEST.busybox, await Deno.readFile(host.busybox), 0o755);
  for (const [i, m] of host.kernel.modules.entries()) {
    const name = `${String(i).padStart(2, "0")}-${basename(m).replace(/\.ko(\.\w+)?$/, "")}.ko`;
    await w.file(join(GUEST.modules, name), await readModule(m), 0o644);
  }
  // Libraries go to the paths ldd names (the loader to its PT_INTERP path), contents followed
  // through symlinks.
  const libraries = new Set(await sharedLibraries(host.deno));
  for (const extra of await runtimeLibraries()) {
    libraries.add(extra);
    for (const dep of await sharedLibraries(extra)) libraries.add(dep);
  }
  const dirs = new Set<string>();
  for (const lib of libraries) {
    if (!dirs.has(dirname(lib))) await w.dir(dirname(lib));
    dirs.add(dirname(lib));
    await w.file(lib, await Deno.readFile(lib), 0o755);
  }
  await w.file(GUEST.deno, await Deno.readFile(host.deno), 0o755);
  await w.file(GUEST.kernel, await Deno.readFile(host.kernel.image), 0o644);
}

/**
 * Returns the path of the cached base archive (an uncompressed newc cpio), building it first
 * when missing. The file is written to a temporary name and renamed, so concurrent runs never
 * see a partial one.
 */
export async function ensureBaseArchive(
  host: HostTools,
  log: (line: string) => void = (l) => console.error(l),
): Promise<string> {
  const dir = cacheDir();
  const path = join(dir, `base-${await baseKey(host)}.cpio`);
  try {
    await Deno.stat(path);
    return path;
  } catch {
    // build it below
  }
  await Deno.mkdir(dir, { recursive: true });
  const t0 = performance.now();
  log(`sandbox: building the base initramfs (once) at ${path}`);
  const tmp = `${path}.${Deno.pid}.tmp`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  const writer = file.writable.getWriter();
  try {
    const w = new CpioWriter((c) => writer.write(c));
    await writeBase(w, host);
    await w.finish();
    await writer.close();
    await Deno.rename(tmp, path);
  } catch (e) {
    await writer.abort().catch(() => {});
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  log(`sandbox: base initramfs built in ${Math.round(performance.now() - t0)} ms`);
  await pruneCache(dir, "base-", path);
  return path;
}
