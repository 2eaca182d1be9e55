/**
 * `deno run -A bench/exit_overhead.ts [--rounds N] [--block N] [--warmup N] [--worker]`: where the
 * per-exit overhead of a JavaScript run loop over C goes, on this machine's
 * `/dev/kvm` (issue 14; the figures are in bench/RESULTS.md).
 *
 * One process, one PIO guest (bench/guests.ts), blocks of `--block` exits in
 * random order for `--rounds` rounds, each loop on the same vCPU:
 *
 * - `cChild`: bench/baseline.c's case 1 in its own process (what
 *   `deno task bench` compares with);
 * - `cHere`: the same C loop (bench/exit_overhead.c) called once per block
 *   from this Deno process, on the library's vCPU;
 * - `cOwnVm`: that loop on a VM the C file opens itself (no library object),
 *   timed inside C;
 * - `bare`: one FFI call per exit (the shim's `kvm_ioctl_ptr`) and typed-array
 *   reads of the run area, no library code;
 * - `library`: case 1's `pioStep` (`Vcpu.run()`, the exit decoder, the
 *   handler's reads);
 * - `spinC` / `spinJs`: a native busy wait as long as an exit, looped in C
 *   or called once per iteration from JavaScript (no kernel involved);
 * - `kvmContext`: case 3 (bench/context_bench.ts), the handler in a
 *   KvmContext vCPU worker, on a VM of its own.
 *
 * With `--worker`, the loops from `cHere` to `spinJs` run in a Worker
 * (bench/exit_overhead_worker.ts) on a guest of its own, one block per
 * message, so a worker thread's figures sit beside the same C child.
 *
 * Prints the 2nd, 5th, 10th, 25th and 50th percentile ns per exit and each
 * loop's difference to `cChild` (and `cHere`): on a loaded machine the low
 * percentiles are the blocks nothing else interrupted.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { baselineArgs, openGuest, PIO_GUEST, PIO_PORT, whyNoKvm } from "./guests.ts";
import { type BenchFixture, pioStep } from "./cases.ts";
import { contextWorkerCase } from "./context_bench.ts";
import { native } from "../src/ffi/library.ts";
import { KVM_RUN } from "../src/abi/ioctls.ts";

const here = new URL(".", import.meta.url).pathname;
const BUILD = `${here}build`;

/** Compiles `source` (in bench/) to `out` with `flags` unless `out` is newer. */
function build(source: string, out: string, flags: string[]): void {
  const src = Deno.statSync(`${here}${source}`).mtime!.getTime();
  try {
    if (Deno.statSync(out).mtime!.getTime() > src) return;
  } catch { /* not built yet */ }
  Deno.mkdirSync(BUILD, { recursive: true });
  const result = new Deno.Command("cc", {
    args: ["-O2", "-Wall", "-Wextra", "-Werror", ...flags, "-o", out, `${here}${source}`],
  }).outputSync();
  if (!result.success) {
    throw new Error(`cc failed on bench/${source}:\n${new TextDecoder().decode(result.stderr)}`);
  }
}

/** bench/baseline.c as a child process running one block per line (as bench/run.ts does). */
class CChild {
  #child: Deno.ChildProcess;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #reader: ReadableStreamDefaultReader<string>;
  #text = "";

  constructor(path: string) {
    this.#child = new Deno.Command(path, {
      args: ["pio", ...baselineArgs(PIO_GUEST)],
      stdin: "piped",
      stdout: "piped",
    }).spawn();
    this.#writer = this.#child.stdin.getWriter();
    this.#reader = this.#child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  }

  /** Runs `n` exits; their ns per exit as the child measured them. */
  async block(n: number): Promise<number> {
    await this.#writer.write(new TextEncoder().encode(`${n}\n`));
    while (!this.#text.includes("\n")) {
      const chunk = await this.#reader.read();
      if (chunk.done) throw new Error(`the C baseline exited (${(await this.#child.status).code})`);
      this.#text += chunk.value;
    }
    const end = this.#text.indexOf("\n");
    const line = this.#text.slice(0, end);
    this.#text = this.#text.slice(end + 1);
    return (JSON.parse(line) as { ns: number }).ns / n;
  }

  async close(): Promise<void> {
    await this.#writer.close();
    await this.#child.status;
  }
}

/** The loops that run on one thread: each takes a block size, returns ns per exit. */
export type ThreadLoops = Record<string, (n: number) => number>;

/** Builds bench/baseline and bench/build/libexit_overhead.so when out of date; their paths. */
export function buildAll(): { baseline: string; loopLib: string } {
  const baseline = `${BUILD}/baseline`;
  const loopLib = `${BUILD}/libexit_overhead.so`;
  build("baseline.c", baseline, []);
  build("exit_overhead.c", loopLib, ["-fPIC", "-shared"]);
  return { baseline, loopLib };
}

/**
 * Opens a PIO guest on the calling thread and the loops that run it there
 * (`cHere`, `bare`, `library`) or call the spin (`spinC`, `spinJs`, whose
 * length is calibrated to one exit of `cHere`).
 */
export function openThreadLoops(loopLib: string, block: number): {
  loops: ThreadLoops;
  close(): void;
} {
  const c = Deno.dlopen(loopLib, {
    exit_overhead_c_loop: { parameters: ["i32", "pointer", "i32", "u32"], result: "i64" },
    exit_overhead_spin: { parameters: ["u32"], result: "i32" },
    exit_overhead_spin_loop: { parameters: ["i32", "u32"], result: "i32" },
    exit_overhead_own_vm_block: { parameters: ["i32"], result: "i64" },
  });
  const { exit_overhead_c_loop: cLoop, exit_overhead_spin: spin } = c.symbols;
  const ownVmBlock = c.symbols.exit_overhead_own_vm_block;
  const spinLoop = c.symbols.exit_overhead_spin_loop;
  const ioctl = native().kvm_ioctl_ptr;
  const guest = openGuest(PIO_GUEST);
  const vcpu = guest.vcpu;
  const fd = vcpu.unsafeFd;
  const bytes = vcpu.runArea.bytes;
  const runPointer = Deno.UnsafePointer.of(bytes);
  const reason = new Uint32Array(bytes.buffer, bytes.byteOffset + 8, 1);
  // One guest counter shared by every loop that runs this vCPU.
  let next = 0;
  // TSC ticks of the spin: about one exit, calibrated below.
  let ticks = 10_000;
  const loops: ThreadLoops = {
    cHere(n) {
      const t0 = performance.now();
      const r = cLoop(fd, runPointer, n, next);
      const t = performance.now() - t0;
      if (r < 0n) throw new Error(`C loop: ${r}`);
      next = Number(r);
      return t * 1e6 / n;
    },
    cOwnVm(n) {
      const ns = ownVmBlock(n);
      if (ns < 0n) throw new Error(`C-owned VM: ${ns}`);
      return Number(ns) / n;
    },
    bare(n) {
      const t0 = performance.now();
      for (let i = 0; i < n; i++) {
        // KVM_EXIT_IO = 2; io.port at 34, io.data_offset at 40 (struct kvm_run).
        if (ioctl(fd, KVM_RUN, null) < 0 || reason[0] !== 2) throw new Error("bare: exit");
        if ((bytes[34] | bytes[35] << 8) !== PIO_PORT) throw new Error("bare: port");
        if (bytes[bytes[40] | bytes[41] << 8] !== (next & 0xff)) throw new Error("bare: value");
        next++;
      }
      return (performance.now() - t0) * 1e6 / n;
    },
    library(n) {
      const t0 = performance.now();
      let k = next;
      for (let i = 0; i < n; i++) k = pioStep(vcpu, k);
      next = k;
      return (performance.now() - t0) * 1e6 / n;
    },
    spinC(n) {
      const t0 = performance.now();
      if (spinLoop(n, ticks | 0) !== n) throw new Error("spin");
      return (performance.now() - t0) * 1e6 / n;
    },
    spinJs(n) {
      const t0 = performance.now();
      const t = ticks | 0;
      let s = 0;
      for (let i = 0; i < n; i++) s += spin(t);
      if (s !== n) throw new Error("spin");
      return (performance.now() - t0) * 1e6 / n;
    },
  };
  // Warm-up (JIT), then the spin's length from the C exit loop.
  for (const loop of Object.values(loops)) for (let i = 0; i < 10; i++) loop(block);
  const exitNs = Math.min(...Array.from({ length: 20 }, () => loops.cHere(block)));
  const spinNs = Math.min(...Array.from({ length: 20 }, () => loops.spinC(block)));
  ticks = Math.max(1, Math.round(ticks * exitNs / spinNs));
  return {
    loops,
    close() {
      guest.close();
      c.close();
    },
  };
}

/** The thread loops in a Worker, one block per message. */
class WorkerLoops {
  #worker = new Worker(new URL("./exit_overhead_worker.ts", import.meta.url), { type: "module" });
  #pending: ((value: { ns?: number; names?: string[]; error?: string }) => void) | undefined;

  constructor() {
    this.#worker.onmessage = (e) => this.#pending?.(e.data);
    this.#worker.onerror = (e) => {
      e.preventDefault();
      this.#pending?.({ error: e.message });
    };
  }

  #ask(message: unknown): Promise<{ ns?: number; names?: string[]; error?: string }> {
    return new Promise((resolve, reject) => {
      this.#pending = (value) => value.error ? reject(new Error(value.error)) : resolve(value);
      this.#worker.postMessage(message);
    });
  }

  /** Opens the worker's guest; the loop names. */
  async open(loopLib: string, block: number): Promise<string[]> {
    return (await this.#ask({ open: { loopLib, block } })).names!;
  }

  /** One block of `name` in the worker; ns per exit. */
  async block(name: string, n: number): Promise<number> {
    return (await this.#ask({ name, n })).ns!;
  }

  async close(): Promise<void> {
    await this.#ask({ close: true });
    this.#worker.terminate();
  }
}

async function main(): Promise<void> {
  const noKvm = whyNoKvm();
  if (noKvm) {
    console.log(`exit_overhead: skipped: ${noKvm}`);
    return;
  }
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      rounds: { type: "string" },
      block: { type: "string" },
      worker: { type: "boolean" },
      warmup: { type: "string" },
    },
  });
  const rounds = Number(values.rounds ?? 300);
  const block = Number(values.block ?? 200);
  const warmup = Number(values.warmup ?? 0);
  if (!(rounds > 0 && block > 0)) throw new Error("--rounds and --block take positive numbers");
  if (!(warmup >= 0)) throw new Error("--warmup takes a count of blocks");
  const { baseline, loopLib } = buildAll();
  const child = new CChild(baseline);
  const context: BenchFixture = await contextWorkerCase.open();
  const loops: Record<string, (n: number) => number | Promise<number>> = {
    cChild: (n) => child.block(n),
    kvmContext: async (n) => await context.measure(n) * 1e6 / n,
  };
  let here: { close(): void } | undefined;
  let worker: WorkerLoops | undefined;
  try {
    if (values.worker) {
      worker = new WorkerLoops();
      for (const name of await worker.open(loopLib, block)) {
        loops[name] = (n) => worker!.block(name, n);
      }
    } else {
      const opened = openThreadLoops(loopLib, block);
      here = opened;
      Object.assign(loops, opened.loops);
    }
    const names = Object.keys(loops);
    for (let i = 0; i < 10; i++) {
      await child.block(block);
      await loops.kvmContext(block);
    }
    // V8 compiles a loop with TurboFan only after many iterations; until then its FFI calls
    // take a slower path (measured: ~170 ns more per call under Maglev). A VM's run loop
    // runs for millions of exits, so its steady state is what counts: `--warmup N` runs each
    // loop N blocks before measuring.
    for (let i = 0; i < warmup; i++) {
      for (const name of names) if (name !== "cChild") await loops[name](block);
    }
    const samples: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
    for (let r = 0; r < rounds; r++) {
      const order = [...names].sort(() => Math.random() - 0.5);
      for (const name of order) samples[name].push(await loops[name](block));
    }
    report(samples, rounds, block, values.worker ? "in a Worker" : "on the main thread");
  } finally {
    await child.close();
    await context.close();
    here?.close();
    await worker?.close();
  }
}

const QUANTILES = [0.02, 0.05, 0.1, 0.25, 0.5];

function report(
  samples: Record<string, number[]>,
  rounds: number,
  block: number,
  where: string,
): void {
  for (const v of Object.values(samples)) v.sort((a, b) => a - b);
  const at = (name: string, q: number) => samples[name][Math.floor(samples[name].length * q)];
  const load = Deno.loadavg().map((x) => x.toFixed(1)).join(" ");
  console.log(
    `${rounds} rounds of ${block}-exit blocks, thread loops ${where}, load average ${load}`,
  );
  console.log(
    `ns per exit at p2 / p5 / p10 / p25 / p50; then minus cChild and minus cHere at p2 / p5 / p10`,
  );
  const fmt = (xs: number[]) => xs.map((x) => x.toFixed(0).padStart(6)).join(" ");
  const low = QUANTILES.slice(0, 3);
  for (const name of Object.keys(samples)) {
    const own = QUANTILES.map((q) => at(name, q));
    const vs = (other: string) => fmt(low.map((q) => at(name, q) - at(other, q)));
    const diffs = name.startsWith("spin")
      ? `   spinJs - spinC ${fmt(low.map((q) => at("spinJs", q) - at("spinC", q)))}`
      : ` | ${vs("cChild")} | ${vs("cHere")}`;
    console.log(`${name.padEnd(10)} ${fmt(own)}${diffs}`);
  }
}

if (import.meta.main) await main();
