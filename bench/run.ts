/**
 * `deno task bench`: every hot-path case of this library against the C
 * baseline (bench/baseline.c) running the same guest, in one run, and a table
 * of exits (ioctls, scans) per second with the ratio Deno / C.
 *
 * Compiles the baseline with `cc -O2` into bench/build/, then runs both sides
 * natively when `/dev/kvm` is usable, otherwise inside the sandbox (a QEMU TCG
 * guest with kvm-amd; tests/sandbox/sandbox.ts), both sides in the same
 * sandbox run. Each round runs every case once on each side (alternating
 * which goes first); the table keeps each side's best round.
 *
 * Options: `--rounds N` (default 3), `--case ID` (repeatable: only these
 * cases), `--json FILE` (also write the results as JSON), `--inside` (used
 * by the sandbox run: measure here, the baseline is already built).
 *
 * Cases come from bench/cases.ts and, when it exists, from the `cases` export
 * of bench/context_bench.ts.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type BenchCase, cases as hotPathCases } from "./cases.ts";
import { baselineArgs, kvmUsable } from "./guests.ts";

const here = new URL(".", import.meta.url).pathname;
const root = new URL("..", import.meta.url).pathname;
const BUILD = `${here}build`;
const BASELINE = `${BUILD}/baseline`;
const RESULT_MARK = "@@BENCH-RESULTS ";

/** One side's figure for one case. */
interface Figure {
  /** Operations per second, best round. */
  perSecond: number;
  /** Every round's operations per second. */
  rounds: number[];
}

/** A row of the table. */
interface Row {
  id: string;
  title: string;
  unit: string;
  ops: number;
  deno: Figure;
  c: Figure | null;
}

/** What a run measured, and where. */
interface Results {
  machine: string;
  rounds: number;
  rows: Row[];
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rounds: { type: "string", default: "3" },
    case: { type: "string", multiple: true },
    json: { type: "string" },
    inside: { type: "boolean", default: false },
  },
});
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error("--rounds takes a positive integer");

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

function runBaseline(c: BenchCase): number {
  const spec = c.baseline!;
  const args = [spec.case, String(c.ops), String(c.warmup), ...baselineArgs(spec.guest)];
  const out = new Deno.Command(BASELINE, { args, stderr: "piped" }).outputSync();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    throw new Error(
      `baseline ${spec.case} failed (${out.code}): ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  const { ops, ns } = JSON.parse(text) as { ops: number; ns: number };
  return ops / (ns / 1e9);
}

async function runDeno(c: BenchCase): Promise<number> {
  const fixture = await c.open();
  try {
    await fixture.measure(c.warmup);
    const ms = await fixture.measure(c.ops);
    return c.ops / (ms / 1000);
  } finally {
    await fixture.close();
  }
}

function figure(list: number[]): Figure {
  return { perSecond: Math.max(...list), rounds: list };
}

function machine(): string {
  const read = (path: string) => {
    try {
      return Deno.readTextFileSync(path);
    } catch {
      return "";
    }
  };
  const cpu = /model name\s*:\s*(.*)/.exec(read("/proc/cpuinfo"))?.[1] ?? "unknown CPU";
  const cores = read("/proc/cpuinfo").match(/^processor\s*:/gm)?.length ?? 0;
  const kernel = read("/proc/sys/kernel/osrelease").trim();
  const where = Deno.env.get("KVM_SANDBOX") ? "sandbox (QEMU TCG guest, nested kvm-amd)" : "native";
  return `${where}: ${cores} x ${cpu}, Linux ${kernel}, Deno ${Deno.version.deno}`;
}

/** Measures every case here, on this machine's /dev/kvm. */
async function measureHere(): Promise<Results> {
  const list = await loadCases();
  const deno = new Map<string, number[]>();
  const c = new Map<string, number[]>();
  for (let round = 0; round < rounds; round++) {
    for (const bench of list) {
      const doDeno = async () => {
        const v = await runDeno(bench);
        deno.set(bench.id, [...deno.get(bench.id) ?? [], v]);
        return v;
      };
      const doC = () => {
        if (!bench.baseline) return NaN;
        const v = runBaseline(bench);
        c.set(bench.id, [...c.get(bench.id) ?? [], v]);
        return v;
      };
      let dv: number, cv: number;
      if (round % 2 === 0) {
        cv = doC();
        dv = await doDeno();
      } else {
        dv = await doDeno();
        cv = doC();
      }
      console.log(
        `round ${round + 1}/${rounds} ${bench.id}: Deno ${fmt(dv)} ${bench.unit}/s, ` +
          `C ${fmt(cv)} ${bench.unit}/s, ratio ${(dv / cv).toFixed(3)}`,
      );
    }
  }
  const rows = list.map((bench): Row => ({
    id: bench.id,
    title: bench.title,
    unit: bench.unit,
    ops: bench.ops,
    deno: figure(deno.get(bench.id)!),
    c: c.has(bench.id) ? figure(c.get(bench.id)!) : null,
  }));
  return { machine: machine(), rounds, rows };
}

function fmt(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return "-";
  return perSecond >= 100 ? Math.round(perSecond).toLocaleString("en-US") : perSecond.toFixed(2);
}

/** The table, as Markdown. */
export function table(results: Results): string {
  const lines = [
    `Machine: ${results.machine}; best of ${results.rounds} rounds.`,
    "",
    "| case | ops | Deno / s | C / s | ratio Deno/C | Deno us/op | C us/op |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const row of results.rows) {
    const d = row.deno.perSecond;
    const c = row.c?.perSecond ?? NaN;
    const us = (v: number) => Number.isFinite(v) ? (1e6 / v).toFixed(2) : "-";
    lines.push(
      `| ${row.title} | ${row.ops.toLocaleString("en-US")} ${row.unit} | ${fmt(d)} | ${fmt(c)} | ${
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
    const { runInSandbox, sandboxAvailable } = await import("../tests/sandbox/sandbox.ts");
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
      "--rounds",
      String(rounds),
      ...(values.case ?? []).flatMap((c) => ["--case", c]),
    ];
    const result = await runInSandbox({
      command: ["deno", "run", "-A", "--no-check", "bench/run.ts", "--inside", ...forwarded],
      extraPaths: ["bench/build"],
      timeoutMs: 20 * 60_000,
      quiet: true,
    });
    const line = result.output.split("\n").find((l) => l.startsWith(RESULT_MARK));
    if (result.code !== 0 || !line) {
      console.error(`the sandbox run failed (exit ${result.code})`);
      Deno.exit(1);
    }
    report(JSON.parse(line.slice(RESULT_MARK.length).trim()) as Results);
  }
}
