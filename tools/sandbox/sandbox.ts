/**
 * Runs a command inside a QEMU TCG guest whose kernel loads kvm-amd, so the command sees a real
 * `/dev/kvm` on hosts without one (see shared/NESTED_KVM.md). The guest gets a copy of the
 * project at /project, the running deno as `deno`, and reports the command's exit code back
 * over the serial console.
 *
 * CLI: `deno run -A tools/sandbox/sandbox.ts [--timeout SEC] [--memory MiB] [--cpus N]
 * [--include PATH]... [--verbose] -- <command...>`
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { compile } from "../../src/ffi/library.ts";
import { ConsoleParser } from "./console.ts";
import { CpioWriter } from "./cpio.ts";
import { findHost } from "./host.ts";
import { ensureBaseArchive } from "./initramfs.ts";
import { sandboxQemu } from "./qemu_fix.ts";
import { bootableKernel } from "./kernel.ts";
import { listProjectFiles, writeProject } from "./project.ts";
import { initScript, passedEnv, runScript } from "./script.ts";

export { ensureSandboxPackages, kvmUsable, sandboxAvailable } from "./host.ts";

/** What to run in the sandbox, and how. */
export interface SandboxOptions {
  /** argv, run inside the guest with cwd /project (the copy of the project) */
  command: string[];
  /** default 600_000; on timeout QEMU is killed and the result's code is 124 */
  timeoutMs?: number;
  /** guest RAM in MiB, default 3072 */
  memoryMiB?: number;
  /** guest CPUs, default 2 */
  cpus?: number;
  /**
   * extra variables for the command; KVM_TESTS, NO_COLOR, CI and any variable starting with
   * KVM_ or DENO_KVM_ pass through from the host anyway (these override them)
   */
  env?: Record<string, string>;
  /** the project to copy in; default: the repository holding this file */
  projectRoot?: string;
  /** extra project-relative paths, git-ignored or not; `native/build` is always added if present */
  extraPaths?: string[];
  /** receives the console stream; default: written to Deno.stdout */
  stdout?: (chunk: Uint8Array) => void;
  /** when true, the kernel's and init's boot output is not streamed, only the command's */
  quiet?: boolean;
}

/** How a sandboxed run ended. */
export interface SandboxResult {
  /** the command's exit code; 124 on timeout; 1 when the guest died without reporting one */
  code: number;
  /** the command's output; the whole console when the command never started */
  output: string;
  /** QEMU start to the command's start, ms (-1 if it never started) */
  bootMs: number;
  /** the whole call including preparing the initramfs, ms */
  totalMs: number;
}

const DEFAULT_PROJECT_ROOT = join(import.meta.dirname ?? ".", "..", "..");
const ALWAYS_INCLUDED = ["native/build"];

function writeAllStdout(chunk: Uint8Array): void {
  let off = 0;
  while (off < chunk.length) off += Deno.stdout.writeSync(chunk.subarray(off));
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * The guest has no C compiler: build the project's shim on the host when its
 * build is missing or older than its source, so the guest loads it.
 */
async function ensureShimBuilt(root: string): Promise<void> {
  const source = join(root, "native", "kvm_shim.c");
  const output = join(root, "native", "build", "libkvm_shim.so");
  const mtime = async (p: string) => (await Deno.stat(p).catch(() => undefined))?.mtime?.getTime();
  const [src, built] = [await mtime(source), await mtime(output)];
  if (src === undefined || (built !== undefined && built >= src)) return;
  await Deno.mkdir(join(root, "native", "build"), { recursive: true });
  compile(source, output);
  console.error(`sandbox: built the native shim on the host (${output})`);
}

/** Writes the per-run archive (init, run.sh, project) after the copied base archive. */
async function appendRunArchive(
  initrd: string,
  opts: SandboxOptions,
  root: string,
  nonce: string,
): Promise<void> {
  const extras = [...(opts.extraPaths ?? [])];
  for (const p of extras) {
    if (!await exists(join(root, p))) console.error(`sandbox: extra path ${p} does not exist`);
  }
  await ensureShimBuilt(root);
  for (const p of ALWAYS_INCLUDED) {
    if (!extras.includes(p) && await exists(join(root, p))) extras.push(p);
  }
  const files = await listProjectFiles(root, extras);
  const env = { ...passedEnv(Deno.env.toObject()), ...opts.env };
  const file = await Deno.open(initrd, { append: true });
  const writer = file.writable.getWriter();
  try {
    const w = new CpioWriter((c) => writer.write(c));
    const enc = new TextEncoder();
    await w.file("init", enc.encode(initScript(nonce)), 0o755);
    await w.file("sandbox/run.sh", enc.encode(runScript(opts.command, env)), 0o644);
    await writeProject(w, root, files, "project");
    await w.finish();
  } finally {
    await writer.close();
  }
}

/**
 * The guest's CPU count when the caller gives none: `DENO_KVM_SANDBOX_CPUS`, else 2. With one
 * CPU the round-robin TCG thread has no vCPU to kick, which also hid QEMU's VMRUN bug (see
 * qemu_fix.ts), but the whole sandbox then froze at the third boot of our VMM in a benchmark, twice
 * in two runs (bench/RESULTS.md, seventh session): two CPUs with the fixed QEMU instead.
 */
function defaultCpus(): number {
  const fromEnv = Number(Deno.env.get("DENO_KVM_SANDBOX_CPUS"));
  return Number.isInteger(fromEnv) && fromEnv > 0 ? fromEnv : 2;
}

function qemuArgs(kernel: string, initrd: string, cpus: number, memoryMiB: number): string[] {
  return [
    "-nodefaults",
    "-no-user-config",
    "-accel",
    // Single-threaded TCG: with thread=multi (QEMU 7.2, Debian 6.1 guest kernel) the guest
    // locks up (soft lockups on both CPUs) after a few dozen KVM VM create/destroy cycles, or
    // its kernel crashes in kvm_amd's VMRUN path (a benchmark's fourth nested boot, 2026-11-30).
    Deno.env.get("DENO_KVM_SANDBOX_ACCEL") ?? "tcg,thread=single",
    "-smp",
    String(cpus),
    "-cpu",
    "max", // under TCG includes svm, which kvm-amd needs
    "-m",
    String(memoryMiB),
    "-display",
    "none",
    "-monitor",
    "none",
    "-serial",
    "stdio",
    "-no-reboot", // a guest panic (panic=-1 reboots) ends QEMU instead of looping
    "-kernel",
    kernel,
    "-initrd",
    initrd,
    "-append",
    // mitigations=off: speculation barriers only slow a throwaway guest (and its KVM) down.
    `console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off ${
      Deno.env.get("DENO_KVM_SANDBOX_APPEND") ?? ""
    }`.trim(),
  ];
}

/**
 * Boots the sandbox guest and runs `opts.command` in it, streaming the console. Throws when the
 * host lacks an ingredient (the message says what to install); a failing command is a result.
 */
export async function runInSandbox(opts: SandboxOptions): Promise<SandboxResult> {
  const t0 = performance.now();
  const timeoutMs = opts.timeoutMs ?? 600_000;
  const write = opts.stdout ?? writeAllStdout;
  const enc = new TextEncoder();
  const host = await findHost();
  const base = await ensureBaseArchive(host);
  const kernel = await bootableKernel(host.kernel.image);
  // QEMU 7.2's VMRUN can deliver the nested guest's interrupt twice, the second time with the
  // guest's IF 0 (see qemu_fix.ts): run a copy with that one store removed where possible.
  const qemu = await sandboxQemu(host.qemu);
  if (!qemu.fixed) console.error(`sandbox: ${qemu.note}`);
  const nonce = Array.from(
    crypto.getRandomValues(new Uint8Array(8)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  const tmp = await Deno.makeTempDir({ prefix: "deno-kvm-sandbox-" });
  let child: Deno.ChildProcess | undefined;
  // Ctrl-C (or SIGTERM) must not leave a QEMU running: kill it, reap it, clean up, and exit
  // as the signal would have.
  const onSignal = (signal: Deno.Signal, code: number) => async () => {
    try {
      child?.kill("SIGKILL");
      await child?.status;
    } catch {
      // already gone
    }
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    console.error(`\nsandbox: ${signal}, QEMU killed`);
    Deno.exit(code);
  };
  const onInt = onSignal("SIGINT", 130);
  const onTerm = onSignal("SIGTERM", 143);
  Deno.addSignalListener("SIGINT", onInt);
  Deno.addSignalListener("SIGTERM", onTerm);
  try {
    const initrd = join(tmp, "initrd.cpio");
    await Deno.copyFile(base, initrd);
    await appendRunArchive(initrd, opts, opts.projectRoot ?? DEFAULT_PROJECT_ROOT, nonce);

    let startedAt = -1;
    const parser = new ConsoleParser({
      nonce,
      quiet: opts.quiet ?? false,
      write: (text) => write(enc.encode(text)),
      onStart: () => startedAt = performance.now(),
    });
    const spawnedAt = performance.now();
    child = new Deno.Command(qemu.path, {
      args: qemuArgs(kernel, initrd, opts.cpus ?? defaultCpus(), opts.memoryMiB ?? 3072),
      stdin: "null", // so QEMU never puts the host terminal in raw mode
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child?.kill("SIGKILL");
    }, timeoutMs);
    const stderr = new Response(child.stderr).text();
    const decoder = new TextDecoder();
    try {
      for await (const chunk of child.stdout) parser.push(decoder.decode(chunk, { stream: true }));
      parser.push(decoder.decode());
      parser.end();
    } finally {
      clearTimeout(timer);
    }
    const status = await child.status;
    const qemuErr = (await stderr).trim();
    const bootMs = startedAt < 0 ? -1 : Math.round(startedAt - spawnedAt);

    let code: number;
    let output = parser.output;
    if (timedOut) {
      code = 124;
      console.error(`sandbox: timed out after ${timeoutMs / 1000} s; QEMU killed`);
    } else if (parser.exitCode !== null) {
      code = parser.exitCode;
    } else {
      code = 1;
      if (parser.phase === "boot") output = parser.bootLog;
      // The hidden boot log is the only clue to why the guest died; show its tail.
      if (opts.quiet) console.error(parser.bootLog.split("\n").slice(-40).join("\n"));
      console.error(
        `sandbox: the guest ended without reporting an exit code ` +
          `(QEMU exit ${status.code}${
            parser.phase === "boot" ? ", before the command started" : ""
          })` +
          (qemuErr ? `\nQEMU: ${qemuErr}` : ""),
      );
    }
    const totalMs = Math.round(performance.now() - t0);
    console.error(`sandbox: boot-to-command ${bootMs} ms, total ${totalMs} ms, exit code ${code}`);
    return { code, output, bootMs, totalMs };
  } finally {
    Deno.removeSignalListener("SIGINT", onInt);
    Deno.removeSignalListener("SIGTERM", onTerm);
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

const USAGE =
  "usage: deno run -A tools/sandbox/sandbox.ts [--timeout SEC] [--memory MiB] [--cpus N] " +
  "[--include PATH]... [--verbose] -- <command...>";

/** The CLI: parses arguments, runs the command, exits with its code. */
async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      timeout: { type: "string" },
      memory: { type: "string" },
      cpus: { type: "string" },
      include: { type: "string", multiple: true },
      verbose: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help || positionals.length === 0) {
    console.error(USAGE);
    return values.help ? 0 : 2;
  }
  const num = (v: string | undefined, name: string): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) {
      throw new Error(`--${name} needs a positive number, got ${v}`);
    }
    return n;
  };
  const timeout = num(values.timeout, "timeout");
  const result = await runInSandbox({
    command: positionals,
    timeoutMs: timeout === undefined ? undefined : timeout * 1000,
    memoryMiB: num(values.memory, "memory"),
    cpus: num(values.cpus, "cpus"),
    extraPaths: values.include,
    quiet: !values.verbose,
  });
  return result.code;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(2);
  }
}
