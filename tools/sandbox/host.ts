/**
 * Finds what the sandbox needs on the host: QEMU, a kernel with loadable `kvm-amd`, a static
 * busybox and the libraries of the running deno; and installs the Debian packages if asked.
 *
 * @module
 */

import { basename, delimiter, join } from "node:path";
import { elfInterpreter } from "./elf.ts";

/**
 * The Debian packages the sandbox needs (QEMU, a kernel with `kvm-amd`, a static busybox, cpio),
 * and a C compiler: the guest has none, so the native shim is built on the host.
 */
const PACKAGES = ["qemu-system-x86", "linux-image-amd64", "busybox-static", "cpio"];
const COMPILER_PACKAGES = ["gcc", "libc6-dev"];

/** The apt-get arguments: no recommended packages (1.3 GB and 352 packages with them). */
const APT_INSTALL = ["install", "-y", "-q", "--no-install-recommends"];

/** The shell command that installs `packages` (the package lists first: a fresh image has none). */
export function installCommand(packages: readonly string[]): string {
  return `sudo apt-get update && sudo apt-get ${APT_INSTALL.join(" ")} ${packages.join(" ")}`;
}

/** The command that installs everything the sandbox needs on Debian or Ubuntu. */
export const INSTALL_COMMAND: string = installCommand([...PACKAGES, ...COMPILER_PACKAGES]);

/** The kernel the guest boots, with the modules that give it `/dev/kvm`. */
export interface GuestKernel {
  /** e.g. `6.1.0-56-amd64` */
  version: string;
  /** e.g. `/boot/vmlinuz-6.1.0-56-amd64` */
  image: string;
  /** absolute paths of `kvm-amd` and its dependencies, in load order (possibly compressed) */
  modules: string[];
}

/** Everything found on the host; see {@link findHost}. */
export interface HostTools {
  qemu: string;
  kernel: GuestKernel;
  busybox: string;
  /** the real deno ELF, `Deno.execPath()` */
  deno: string;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Looks a program up on `$PATH` (plus the sbin directories, which non-root PATHs lack). */
export async function which(name: string): Promise<string | null> {
  const dirs = (Deno.env.get("PATH") ?? "").split(delimiter).filter(Boolean);
  for (const dir of [...dirs, "/usr/sbin", "/sbin"]) {
    const p = join(dir, name);
    try {
      const st = await Deno.stat(p);
      if (st.isFile && ((st.mode ?? 0) & 0o111) !== 0) return p;
    } catch {
      // not here
    }
  }
  return null;
}

/**
 * Orders `target` and its dependencies for loading, from the text of `modules.dep`
 * (`path: dep dep...`, paths relative to the modules directory): dependencies come first.
 * Returns `null` when `target` (a basename without extension, `-`/`_` insensitive) is absent.
 */
export function moduleLoadOrder(modulesDep: string, target: string): string[] | null {
  const deps = new Map<string, string[]>();
  for (const line of modulesDep.split("\n")) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    deps.set(
      line.slice(0, colon).trim(),
      line.slice(colon + 1).trim().split(/\s+/).filter(Boolean),
    );
  }
  const key = (p: string) => basename(p).replace(/\.ko(\.\w+)?$/, "").replaceAll("-", "_");
  const wanted = target.replaceAll("-", "_");
  const root = [...deps.keys()].find((p) => key(p) === wanted);
  if (root === undefined) return null;
  const order: string[] = [];
  const visit = (p: string, stack: Set<string>) => {
    if (order.includes(p) || stack.has(p)) return;
    stack.add(p);
    for (const d of deps.get(p) ?? []) visit(d, stack);
    order.push(p);
  };
  visit(root, new Set());
  return order;
}

/** Sorts kernel versions newest first (`6.10` after `6.9`). */
function newestFirst(a: string, b: string): number {
  return b.localeCompare(a, "en", { numeric: true });
}

/** Picks the newest `/boot/vmlinuz-*` that has `kvm-amd` under `/lib/modules/<version>`. */
export async function findKernel(): Promise<GuestKernel | string> {
  const versions: string[] = [];
  try {
    for await (const e of Deno.readDir("/boot")) {
      if (e.name.startsWith("vmlinuz-")) versions.push(e.name.slice("vmlinuz-".length));
    }
  } catch {
    // no /boot: reported below
  }
  if (versions.length === 0) return "no kernel image /boot/vmlinuz-* found";
  versions.sort(newestFirst);
  const problems: string[] = [];
  for (const version of versions) {
    const image = `/boot/vmlinuz-${version}`;
    const dir = `/lib/modules/${version}`;
    let dep: string;
    try {
      dep = await Deno.readTextFile(join(dir, "modules.dep"));
    } catch {
      problems.push(`${dir}/modules.dep is missing`);
      continue;
    }
    const order = moduleLoadOrder(dep, "kvm-amd");
    if (!order) {
      problems.push(`${dir} has no kvm-amd module`);
      continue;
    }
    try {
      // Ubuntu keeps kernel images readable by root only.
      (await Deno.open(image)).close();
    } catch (e) {
      problems.push(
        `cannot read ${image} (${(e as Error).message}); try: sudo chmod 0644 ${image}`,
      );
      continue;
    }
    return { version, image, modules: order.map((p) => join(dir, p)) };
  }
  return problems.join("; ");
}

/** Finds a statically linked busybox (the guest, and guests nested in it, have no libc). */
export async function findBusybox(): Promise<string> {
  const candidates = ["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"];
  const onPath = await which("busybox");
  if (onPath) candidates.push(onPath);
  let dynamic = "";
  for (const p of candidates) {
    try {
      const bytes = await Deno.readFile(p);
      if (elfInterpreter(bytes) === null) return p;
      dynamic = p;
    } catch {
      // missing or not an ELF
    }
  }
  throw new Error(
    dynamic ? `${dynamic} is dynamically linked; a static busybox is needed` : "no busybox found",
  );
}

/**
 * Lists the shared libraries of an executable as `ldd` resolves them, including the dynamic
 * loader, as absolute paths on the host. Both sides of `name => path` are kept when absolute:
 * the loader is looked up by its `PT_INTERP` path, which may differ from where it resolves.
 */
export async function sharedLibraries(executable: string): Promise<string[]> {
  const out = await new Deno.Command("ldd", {
    args: [executable],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    // A static executable makes ldd fail with "not a dynamic executable": nothing to copy.
    if (
      /not a dynamic executable|statically linked/.test(text + new TextDecoder().decode(out.stderr))
    ) return [];
    throw new Error(`ldd ${executable} failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return parseLdd(text);
}

/** Parses `ldd` output; see {@link sharedLibraries}. */
export function parseLdd(text: string): string[] {
  const paths = new Set<string>();
  for (const line of text.split("\n")) {
    if (/not found/.test(line)) throw new Error(`ldd: ${line.trim()}`);
    const m = line.trim().match(/^(\S+)(?:\s+=>\s+(\S+))?/);
    if (!m) continue;
    for (const p of [m[1], m[2]]) if (p?.startsWith("/")) paths.add(p);
  }
  return [...paths];
}

/** Finds every host ingredient or throws an Error saying what is missing. */
export async function findHost(): Promise<HostTools> {
  const qemu = await which("qemu-system-x86_64");
  if (!qemu) throw new Error("qemu-system-x86_64 not found");
  const kernel = await findKernel();
  if (typeof kernel === "string") throw new Error(kernel);
  const busybox = await findBusybox();
  const deno = Deno.execPath();
  if (!(await exists(deno))) throw new Error(`deno executable ${deno} not found`);
  if (!(await which("ldd"))) throw new Error("ldd not found");
  return { qemu, kernel, busybox, deno };
}

/** Whether the sandbox can run here; when not, why and how to fix it. */
export async function sandboxAvailable(): Promise<
  { ok: true } | { ok: false; reason: string; install: string }
> {
  try {
    await findHost();
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: (e as Error).message, install: INSTALL_COMMAND };
  }
}

/**
 * Runs apt-get with its output in a log file, not on the terminal (an install prints thousands
 * of lines); on failure the log's tail is in the error.
 */
async function aptGet(args: string[]): Promise<void> {
  const log = await Deno.makeTempFile({ prefix: "deno-kvm-apt-", suffix: ".log" });
  const child = new Deno.Command("apt-get", {
    args,
    env: { DEBIAN_FRONTEND: "noninteractive" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Both streams into the log, in the order they come (two appending handles: a stream can
  // only be piped from one source).
  await Promise.all([child.stdout, child.stderr].map(async (stream) => {
    const file = await Deno.open(log, { append: true });
    await stream.pipeTo(file.writable); // closes the file
  }));
  const status = await child.status;
  if (!status.success) {
    const tail = (await Deno.readTextFile(log)).trimEnd().split("\n").slice(-15).join("\n");
    throw new Error(
      `apt-get ${args.join(" ")} failed with code ${status.code} (log ${log}):\n${tail}`,
    );
  }
  await Deno.remove(log).catch(() => {});
}

/**
 * Installs Debian packages with apt-get when this process is root and apt-get exists, saying
 * what it installs and that it takes a while; otherwise throws an Error naming the command to
 * run. Used for the sandbox's packages and for the files a Linux example needs.
 */
export async function aptInstall(packages: string[], why: string): Promise<void> {
  if (Deno.uid() !== 0 || !(await which("apt-get"))) {
    throw new Error(`${why}. Install the packages with: ${installCommand(packages)}`);
  }
  console.error(
    `${why}: installing ${packages.join(" ")} with apt-get (a minute or more; output in a log)`,
  );
  const t0 = performance.now();
  await aptGet(["update", "-q"]);
  await aptGet([...APT_INSTALL, ...packages]);
  console.error(`installed in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}

/** Which of the sandbox's packages provide what {@link findHost} misses (all when unsure). */
async function missingSandboxPackages(): Promise<string[]> {
  const missing: string[] = [];
  if (!(await which("qemu-system-x86_64"))) missing.push("qemu-system-x86");
  if (typeof (await findKernel()) === "string") missing.push("linux-image-amd64");
  if (!(await findBusybox().then(() => true, () => false))) missing.push("busybox-static");
  if (!(await which("cpio"))) missing.push("cpio");
  return missing.length > 0 ? missing : [...PACKAGES];
}

/**
 * Makes sure the sandbox's packages (and a C compiler for the shim) are installed: as root with
 * apt-get available, installs what is missing; otherwise throws an Error whose message holds the
 * command to run.
 */
export async function ensureSandboxPackages(): Promise<void> {
  const first = await sandboxAvailable();
  const needCompiler = !(await which("cc"));
  if (first.ok && !needCompiler) return;
  // Only what is missing: installing linux-image-amd64 where a kernel is present upgrades it.
  const packages = [
    ...(first.ok ? [] : await missingSandboxPackages()),
    ...(needCompiler ? COMPILER_PACKAGES : []),
  ];
  const why = first.ok
    ? "sandbox: no C compiler (cc) to build the native shim"
    : `sandbox: ${first.reason}${needCompiler ? ", and no C compiler (cc)" : ""}`;
  await aptInstall(packages, why);
  const again = await sandboxAvailable();
  if (!again.ok) throw new Error(`sandbox: still not usable after installing: ${again.reason}`);
}

/** Whether this process can open `/dev/kvm` for reading and writing (then no sandbox is needed). */
export function kvmUsable(): boolean {
  try {
    Deno.openSync("/dev/kvm", { read: true, write: true }).close();
    return true;
  } catch {
    return false;
  }
}
