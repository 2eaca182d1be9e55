/**
 * `deno task bench`: every hot-path case of this library against the C
 * baseline (bench/baseline.c) running the same guest, in one run, and a table
 * of exits (ioctls, scans) per second with the ratio Deno / C.
 *
 * Compiles the baseline with `cc -O2` into bench/build/, then runs both sides
 * natively when `/dev/kvm` is usable, otherwise inside the sandbox (a QEMU TCG
 * guest with kvm-amd; tools/sandbox/sandbox.ts), both sides in the same
 * sandbox run. Each case runs in short blocks that alternate between the two
 * sides (the C program is a child process that runs a block per request), so
 * both see the same machine; each side's figure is its 10th-percentile block,
 * which filters out time stolen by other processes on a shared machine.
 *
 * Options: `--blocks N` (blocks per side, overriding each case's), `--case ID`
 * (repeatable: only these cases), `--json FILE` (also write the results as
 * JSON), `--inside` (used by the sandbox run: measure here, the baseline is
 * already built).
 *
 * Cases come from bench/cases.ts and, when it exists, from the `cases` export
 * of bench/context_bench.ts.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type BenchCase, cases as hotPathCases } from "./cases.ts";
import { kvmUsable } from "../tools/sandbox/host.ts";
import { baselineArgs } from "./guests.ts";

const here = new URL(".", import.meta.url).pathname;
const root = new URL("..", import.meta.url).pathname;
const BUILD = `${here}build`;
const BASELINE = `${BUILD}/baseline`;
const RESULT_MARK = "@@BENCH-RESULTS ";

/** One side's figure for one case, from its blocks. */
interface Figure {
  /** Operations per second in the 10th-percentile block (the headline figure). */
  perSecond: number;
  /** Operations per second in the fastest block. */
  best: number;
  /** Operations per second in the median block. */
  median: number;
}

/** A row of the table. */
interface Row {
  id: string;
  title: string;
  unit: string;
  block: number;
  blocks: number;
  deno: Figure;
  c: Figure | null;
}

/** What a run measured, and where. */
interface Results {
  machine: string;
  rows: Row[];
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    blocks: { type: "string" },
    case: { type: "string", multiple: true },
    json: { type: "string" },
    inside: { type: "boolean", default: false },
  },
});
const blocksOverride = values.blocks === undefined ? undefined : Number(values.blocks);
if (blocksOverride !== undefined && !(Number.isInteger(blocksOverride) && blocksOverride > 0)) {
  throw new Error("--blocks takes a positive integer");
}

async function loadCases(): Promise<BenchCase[]> {
  const all = [...hotPathCases];
  // Cases 3 and 4 (Worker, KvmContext mailbox) live beside the context code.
  const extra = new URL("./context_bench.ts", import.meta.url);
  let exists = false;
  try {
    exists = Deno.statSync(extra).isFile;
  } catch {
    // not there (yet)
  }
  if (exists) {
    const mod = await import(extra.href) as { cases?: BenchCase[] };
    all.push(...(mod.cases ?? []));
  }
  const wanted = values.case;
  const picked = wanted ? all.filter((c) => wanted.includes(c.id)) : all;
  if (wanted && picked.length !== wanted.length) {
    throw new Error(`unknown case; the cases are: ${all.map((c) => c.id).join(", ")}`);
  }
  // Table order: by the number the title starts with.
  return picked.sort((a, b) => a.title.localeCompare(b.title, "en", { numeric: true }));
}

/** Builds bench/build/baseline; static when the toolchain can, so it runs in the sandbox. */
function buildBaseline(): void {
  Deno.mkdirSync(BUILD, { recursive: true });
  const source = `${here}baseline.c`;
  const flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-o", BASELINE, source];
  let result = new Deno.Command("cc", { args: ["-static", ...flags] }).outputSync();
  if (!result.success) result = new Deno.Command("cc", { args: flags }).outputSync();
  if (!result.success) {
    throw new Error(`cc failed on bench/baseline.c:\n${new TextDecoder().decode(result.stderr)}`);
  }
}

/** The C baseline as a child process that runs one block per line it is sent. */
class Baseline {
  #child: Deno.ChildProcess;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #lines: AsyncIterator<string>;
  #stderr: Promise<string>;

  constructor(c: BenchCase) {
    const spec = c.baseline!;
    this.#child = new Deno.Command(BASELINE, {
      args: [spec.case, ...baselineArgs(spec.guest)],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#writer = this.#child.stdin.getWriter();
    this.#lines = this.#child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
      new LineStream(),
    )[Symbol.asyncIterator]();
    this.#stderr = new Response(this.#child.stderr).text();
  }

  /** Runs `n` operations; returns their milliseconds. */
  async measure(n: number): Promise<number> {
    await this.#writer.write(new TextEncoder().encode(`${n}\n`));
    const line = await this.#lines.next();
    if (line.done) {
      const status = await this.#child.status;
      throw new Error(
        `the C baseline failed (exit ${status.code}): ${(await this.#stderr).trim()}`,
      );
    }
    const { ns } = JSON.parse(line.value) as { ns: number };
    return ns / 1e6;
  }

  async close(): Promise<void> {
    await this.#writer.close();
    const status = await this.#child.status;
    await this.#stderr;
    if (!status.success) throw new Error(`the C baseline exited with ${status.code}`);
  }
}

/** Splits a text stream into lines. */
class LineStream extends TransformStream<string, string> {
  constructor() {
    let rest = "";
    super({
      transform(chunk, controller) {
        const parts = (rest + chunk).split("\n");
        rest = parts.pop()!;
        for (const part of parts) controller.enqueue(part);
      },
      flush(controller) {
        if (rest) controller.enqueue(rest);
      },
    });
  }
}

/** Per-op milliseconds of each block → the figure. */
function figure(msPerOp: number[]): Figure {
  const sorted = [...msPerOp].sort((a, b) => a - b);
  const at = (q: number) =>
    1000 / sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { perSecond: at(0.1), best: at(0), median: at(0.5) };
}

function machine(): string {
  const read = (path: string) => {
    try {
      return Deno.readTextFileSync(path);
    } catch {
      return "";
    }
  };
  const cpuinfo = read("/proc/cpuinfo");
  const cpu = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? "unknown CPU";
  const cores = cpuinfo.match(/^processor\s*:/gm)?.length ?? 0;
  const kernel = read("/proc/sys/kernel/osrelease").trim();
  const where = Deno.env.get("KVM_SANDBOX")
    ? "sandbox (QEMU TCG guest with nested kvm-amd)"
    : "native /dev/kvm";
  return `${where}: ${cores} x ${cpu}, Linux ${kernel}, Deno ${Deno.version.deno}`;
}

/** Measures one case: warm-up, then alternating blocks of Deno and C. */
async function measureCase(bench: BenchCase): Promise<Row> {
  const blocks = blocksOverride ?? bench.blocks;
  const fixture = await bench.open();
  const baseline = bench.baseline ? new Baseline(bench) : null;
  const deno: number[] = [];
  const c: number[] = [];
  try {
    await fixture.measure(bench.warmup);
    await baseline?.measure(bench.warmup);
    for (let i = 0; i < blocks; i++) {
      // Alternate which side goes first, so neither always follows the other.
      if (i % 2 === 1) deno.push(await fixture.measure(bench.block) / bench.block);
      if (baseline) c.push(await baseline.measure(bench.block) / bench.block);
      if (i % 2 === 0) deno.push(await fixture.measure(bench.block) / bench.block);
    }
  } finally {
    await fixture.close();
    await baseline?.close();
  }
  const row: Row = {
    id: bench.id,
    title: bench.title,
    unit: bench.unit,
    block: bench.block,
    blocks,
    deno: figure(deno),
    c: baseline ? figure(c) : null,
  };
  const ratio = row.c ? (row.deno.perSecond / row.c.perSecond).toFixed(3) : "-";
  console.log(
    `${bench.id}: Deno ${fmt(row.deno.perSecond)} ${bench.unit}/s, ` +
      `C ${row.c ? fmt(row.c.perSecond) : "-"} ${bench.unit}/s, ratio ${ratio}`,
  );
  return row;
}

/** Measures every case here, on this machine's /dev/kvm. */
async function measureHere(): Promise<Results> {
  const rows: Row[] = [];
  for (const bench of await loadCases()) rows.push(await measureCase(bench));
  return { machine: machine(), rows };
}

function fmt(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return "-";
  return perSecond >= 100 ? Math.round(perSecond).toLocaleString("en-US") : perSecond.toFixed(2);
}

/** The table, as Markdown. */
function table(results: Results): string {
  const lines = [
    `Machine: ${results.machine}.`,
    "Figures: operations per second in each side's 10th-percentile block " +
    "(blocks of the two sides alternate).",
    "",
    "| case | blocks | Deno / s | C / s | ratio Deno/C | Deno us/op | C us/op |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const row of results.rows) {
    const d = row.deno.perSecond;
    const c = row.c?.perSecond ?? NaN;
    const us = (v: number) => Number.isFinite(v) ? (1e6 / v).toFixed(2) : "-";
    lines.push(
      `| ${row.title} | ${row.blocks} x ${row.block} ${row.unit} | ${fmt(d)} | ${fmt(c)} | ${
        Number.isFinite(c) ? (d / c).toFixed(3) : "-"
      } | ${us(d)} | ${us(c)} |`,
    );
  }
  return lines.join("\n");
}

function report(results: Results): void {
  console.log(`\n${table(results)}\n`);
  if (values.json) Deno.writeTextFileSync(values.json, JSON.stringify(results, null, 2) + "\n");
}

if (values.inside) {
  // In the sandbox (or any machine with KVM) with the baseline already built.
  const results = await measureHere();
  console.log(RESULT_MARK + JSON.stringify(results));
} else {
  buildBaseline();
  if (kvmUsable()) {
    report(await measureHere());
  } else {
    const { runInSandbox, sandboxAvailable } = await import("../tools/sandbox/sandbox.ts");
    const available = await sandboxAvailable();
    if (!available.ok) {
      console.error(
        `no usable /dev/kvm and no sandbox (${available.reason}); install with: ${available.install}`,
      );
      Deno.exit(1);
    }
    // Type-check here, where it is much faster than in the guest.
    const check = new Deno.Command(Deno.execPath(), {
      args: ["check", "bench/"],
      cwd: root,
    }).outputSync();
    if (!check.success) {
      console.error(new TextDecoder().decode(check.stderr));
      Deno.exit(1);
    }
    console.log("no usable /dev/kvm here: measuring inside the sandbox (both sides, one run)");
    const forwarded = [
      ...(values.blocks ? ["--blocks", values.blocks] : []),
      ...(values.case ?? []).flatMap((c) => ["--case", c]),
    ];
    // Stream the guest's progress lines, but not the one-line JSON for this side.
    let pending = "";
    const decoder = new TextDecoder();
    const encoder = new TextEncoder();
    const result = await runInSandbox({
      command: ["deno", "run", "-A", "--no-check", "bench/run.ts", "--inside", ...forwarded],
      extraPaths: ["bench/build"],
      timeoutMs: 20 * 60_000,
      quiet: true,
      stdout: (chunk) => {
        const lines = (pending + decoder.decode(chunk, { stream: true })).split("\n");
        pending = lines.pop()!;
        const shown = lines.filter((l) => !l.startsWith(RESULT_MARK));
        if (shown.length) Deno.stdout.writeSync(encoder.encode(shown.join("\n") + "\n"));
      },
    });
    if (pending && !pending.startsWith(RESULT_MARK)) console.log(pending);
    const line = result.output.split("\n").find((l) => l.startsWith(RESULT_MARK));
    if (result.code !== 0 || !line) {
      console.error(`the sandbox run failed (exit ${result.code})`);
      Deno.exit(1);
    }
    report(JSON.parse(line.slice(RESULT_MARK.length).trim()) as Results);
  }
}
