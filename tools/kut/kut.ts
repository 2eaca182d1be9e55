/**
 * `deno task kut`: runs kvm-unit-tests (x86) on this project's VMM and on
 * QEMU, side by side on the same KVM, and prints a table.
 *
 * Each entry of `x86/unittests.cfg` that both VMMs can run the same way runs
 * twice, one after the other: on our `MultibootMachine` (`tools/kut/boot.ts`
 * in its own process) and on `qemu-system-x86_64 -accel kvm -cpu host`, with
 * the same program, arguments, environment module, vCPUs and memory, each
 * under the same timeout. Entries that need QEMU-only devices, machine
 * options or CPU models are listed as not applicable, with the reason.
 *
 * ```sh
 * deno task kut [--filter RE] [--timeout S] [--subset ci] [--json] [--all]
 *               [--build DIR] [--only ours|qemu] [--log DIR] [--qemu DIR] [--help]
 * deno task kut --render results.json   # the table of an earlier --json run
 * ```
 *
 * Dev tooling, not part of the published package; the suite (GPL-2.0) is
 * built from `../shared/peer/kvm-unit-tests.tar.xz` into `.cache/kut/`
 * (git-ignored), or taken from `--build`.
 *
 * @module
 */

import { applicability, expandTestArgs, type KutEntry, parseUnittestsCfg } from "./cfg.ts";
import { resolve } from "node:path";
import { bundleCommand } from "./qemu_bundle.ts";

/** The outcome of one run of one entry on one VMM. */
export type Outcome = "pass" | "fail" | "skip" | "timeout" | "not run";

/** One VMM's result for one entry. */
export interface RunResult {
  /** What happened. */
  outcome: Outcome;
  /** The process's exit code (null when killed). */
  code: number | null;
  /** Wall time in seconds. */
  seconds: number;
  /** The guest's `SUMMARY:` line, or the last line it printed, or why it stopped. */
  summary: string;
}

/** One row of the table. */
export interface Row {
  /** The entry's name. */
  name: string;
  /** Its program. */
  file: string;
  /** vCPUs. */
  smp: number;
  /** Memory in MiB. */
  memoryMiB: number;
  /** Why it was not run, when it was not. */
  notApplicable?: string;
  /** A remark on how the parameters were read. */
  note?: string;
  /** Our result. */
  ours?: RunResult;
  /** QEMU's result. */
  qemu?: RunResult;
}

/** The fixed quick subset (`--subset ci`): tests QEMU passes on both KVMs of this project. */
export const CI_SUBSET = [
  "smptest",
  "smptest3",
  "setjmp",
  "vmexit_cpuid",
  "hypercall",
  "tsc_adjust",
  "realmode",
  "s3",
];

const ROOT = new URL("../../", import.meta.url).pathname;
const TARBALL = `${ROOT}../shared/peer/kvm-unit-tests.tar.xz`;
const DEFAULT_BUILD = `${ROOT}.cache/kut`;

async function sh(cmd: string[], cwd: string): Promise<{ code: number; out: string }> {
  const p = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  return {
    code: p.code,
    out: new TextDecoder().decode(p.stdout) + new TextDecoder().decode(p.stderr),
  };
}

/**
 * Returns the directory of a kvm-unit-tests build with `x86/*.flat`: `dir`
 * (or its `kvm-unit-tests/`) when it has one, else (unless `build: false`)
 * builds the suite from the tarball into it. Throws
 * with the reason when it cannot (no tarball, no make or gcc, a failed build).
 */
export async function ensureBuild(
  dir = DEFAULT_BUILD,
  tarball = TARBALL,
  options: { build?: boolean } = {},
): Promise<string> {
  const suite = dir.endsWith("kvm-unit-tests") ? dir : `${dir}/kvm-unit-tests`;
  const has = (p: string) => {
    try {
      Deno.statSync(p);
      return true;
    } catch {
      return false;
    }
  };
  if (has(`${suite}/x86/msr.flat`)) return suite;
  if (has(`${dir}/x86/msr.flat`)) return dir;
  if (options.build === false) throw new Error(`no kvm-unit-tests build (x86/*.flat) in ${dir}`);
  if (!has(tarball)) {
    throw new Error(`no kvm-unit-tests build in ${dir} and no ${tarball} to build one`);
  }
  for (const tool of ["make", "gcc", "tar"]) {
    const which = await sh(["sh", "-c", `command -v ${tool}`], "/");
    if (which.code !== 0) {
      throw new Error(`cannot build kvm-unit-tests: no ${tool} on this machine`);
    }
  }
  Deno.mkdirSync(dir, { recursive: true });
  for (
    const [cmd, cwd] of [
      [["tar", "xf", tarball], dir],
      [["./configure", "--arch=x86_64"], suite],
      [["make", `-j${navigator.hardwareConcurrency}`], suite],
    ] as const
  ) {
    const r = await sh([...cmd], cwd);
    if (r.code !== 0) {
      throw new Error(`building kvm-unit-tests: ${cmd.join(" ")} failed:\n${r.out.slice(-2000)}`);
    }
  }
  return suite;
}

/** The environment module, the same for both VMMs (lib/x86/fwcfg.c reads the overrides). */
export function environ(smp: number, memoryMiB: number): string {
  const release = Deno.osRelease();
  const [version, patch, rest = ""] = release.split(".");
  const sub = /^\d+/.exec(rest)?.[0] ?? "";
  return [
    `NR_CPUS=${smp}`,
    `MEMSIZE=${memoryMiB}`,
    "TEST_DEVICE=0",
    `KERNEL_VERSION_STRING=${release}`,
    `KERNEL_VERSION=${version}`,
    `KERNEL_PATCHLEVEL=${patch}`,
    `KERNEL_SUBLEVEL=${sub}`,
    "",
  ].join("\n");
}

/**
 * The outcome from the exit code, as `x86/run` reads it (1 pass, 77 skip).
 * A VMM that failed to start also exits 1 (QEMU on a bad option, Deno on an
 * uncaught error) but the guest never printed: a pass needs guest output.
 */
function classify(code: number | null, timedOut: boolean, guestOutput = true): Outcome {
  if (timedOut) return "timeout";
  if (code === 1) return guestOutput ? "pass" : "fail";
  if (code === 77) return "skip";
  return "fail";
}

function summaryOf(
  output: string,
  code: number | null,
  timedOut: boolean,
  timeoutS: number,
): string {
  const lines = output.replace(/\r/g, "").split("\n").map((l) => l.trim()).filter(Boolean);
  const summary = lines.findLast((l) => l.startsWith("SUMMARY:"));
  if (timedOut) {
    return `no exit within ${timeoutS} s${summary ? `; ${summary}` : ""}; last: ${
      lines.at(-1) ?? "(no output)"
    }`;
  }
  if (summary) return summary;
  const last = lines.slice(-2).join(" | ");
  return `exit ${code}${last ? `: ${last}` : ""}`;
}

/** Runs `cmd` with a time bound (SIGKILL at the bound), collecting stdout and stderr. */
async function runBounded(
  cmd: string[],
  cwd: string,
  timeoutS: number,
  log?: string,
): Promise<
  { code: number | null; timedOut: boolean; output: string; stdout: string; seconds: number }
> {
  const start = performance.now();
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, timeoutS * 1000);
  const out = await child.output();
  clearTimeout(timer);
  const seconds = (performance.now() - start) / 1000;
  const stdout = new TextDecoder().decode(out.stdout);
  const output = stdout + new TextDecoder().decode(out.stderr);
  if (log) {
    Deno.writeTextFileSync(
      log,
      `$ ${cmd.join(" ")}\n${output}\n[exit ${out.code}${
        timedOut ? ", killed at the timeout" : ""
      }, ${seconds.toFixed(1)} s]\n`,
    );
  }
  // Our boot.ts exits 124 itself at the timeout (its vCPU watchdog fired first).
  if (out.code === 124) timedOut = true;
  return { code: timedOut ? null : out.code, timedOut, output, stdout, seconds };
}

/** Runs one entry on our VMM (boot.ts in a child process). */
export async function runOurs(
  suite: string,
  e: KutEntry,
  memoryMiB: number,
  envPath: string,
  timeoutS: number,
  log?: string,
): Promise<RunResult> {
  const args = expandTestArgs(e.testArgs);
  const cmd = [
    Deno.execPath(),
    "run",
    "-A",
    `${ROOT}tools/kut/boot.ts`,
    "--kernel",
    `x86/${e.file}`,
    "--initrd",
    envPath,
    "--smp",
    String(e.smp),
    "--memory",
    String(memoryMiB),
    "--timeout",
    String(timeoutS),
    ...(args ? ["--append", args] : []),
  ];
  // The guest's own watchdog ends it at timeoutS; the process is killed 10 s later.
  const r = await runBounded(cmd, suite, timeoutS + 10, log);
  return {
    outcome: classify(r.code, r.timedOut, r.stdout.trim() !== ""),
    code: r.code,
    seconds: r.seconds,
    summary: summaryOf(r.output, r.code, r.timedOut, timeoutS),
  };
}

/**
 * Runs one entry on QEMU with KVM, as `x86/run` does (less `pci-testdev`);
 * `qemu` is the command that starts QEMU (default: the one on PATH; a
 * bundle's, see `qemu_bundle.ts`).
 */
export async function runQemu(
  suite: string,
  e: KutEntry,
  memoryMiB: number,
  envPath: string,
  timeoutS: number,
  log?: string,
  qemu: string[] = ["qemu-system-x86_64"],
): Promise<RunResult> {
  const args = expandTestArgs(e.testArgs);
  const cmd = [
    ...qemu,
    "-no-reboot",
    "-nodefaults",
    "-global",
    "kvm-pit.lost_tick_policy=discard",
    // x86/run's devices, less pci-testdev (this VMM has no PCI): both VMMs offer the same ports.
    "-device",
    "pc-testdev",
    "-device",
    "isa-debug-exit,iobase=0xf4,iosize=0x4",
    "-display",
    "none",
    "-serial",
    "stdio",
    "-accel",
    "kvm",
    "-cpu",
    "host",
    "-smp",
    String(e.smp),
    "-m",
    String(memoryMiB),
    "-kernel",
    `x86/${e.file}`,
    "-initrd",
    envPath,
    ...(args ? ["-append", args] : []),
  ];
  const r = await runBounded(cmd, suite, timeoutS, log);
  return {
    outcome: classify(r.code, r.timedOut, r.stdout.trim() !== ""),
    code: r.code,
    seconds: r.seconds,
    summary: summaryOf(r.output, r.code, r.timedOut, timeoutS),
  };
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + " ".repeat(n - s.length);
}

/** Renders rows as a Markdown table with totals. */
export function renderTable(rows: Row[], kvmLine: string): string {
  const out: string[] = [];
  const cell = (r?: RunResult) => r ? `${r.outcome} ${r.seconds.toFixed(1)} s` : "—";
  out.push(`KVM: ${kvmLine}`);
  out.push("");
  out.push("| test | smp | ours | QEMU | ours: summary | QEMU: summary |");
  out.push("| ---- | --: | ---- | ---- | ------------- | ------------- |");
  for (const r of rows) {
    if (r.notApplicable) {
      out.push(`| ${r.name} | ${r.smp} | n/a | n/a | not applicable: ${r.notApplicable} | |`);
      continue;
    }
    const note = r.note ? ` (${r.note})` : "";
    out.push(
      `| ${r.name} | ${r.smp} | ${cell(r.ours)} | ${cell(r.qemu)} | ${
        (r.ours?.summary ?? "").replaceAll("|", "/")
      }${note} | ${(r.qemu?.summary ?? "").replaceAll("|", "/")} |`,
    );
  }
  const count = (pick: (r: Row) => RunResult | undefined, o: Outcome) =>
    rows.filter((r) => pick(r)?.outcome === o).length;
  const time = (pick: (r: Row) => RunResult | undefined) =>
    rows.reduce((s, r) => s + (pick(r)?.seconds ?? 0), 0);
  const totals = (label: string, pick: (r: Row) => RunResult | undefined) =>
    `${pad(label, 5)}: ${count(pick, "pass")} pass, ${count(pick, "fail")} fail, ${
      count(pick, "skip")
    } skip, ${count(pick, "timeout")} timeout, ${time(pick).toFixed(1)} s`;
  out.push("");
  out.push(
    `entries: ${rows.length}, run: ${
      rows.filter((r) => !r.notApplicable).length
    }, not applicable: ${rows.filter((r) => r.notApplicable).length}`,
  );
  out.push(totals("ours", (r) => r.ours));
  out.push(totals("QEMU", (r) => r.qemu));
  const worse = rows.filter((r) =>
    r.qemu?.outcome === "pass" && r.ours && r.ours.outcome !== "pass"
  );
  out.push(
    `QEMU passes, we do not: ${worse.length ? worse.map((r) => r.name).join(", ") : "none"}`,
  );
  const better = rows.filter((r) =>
    r.ours?.outcome === "pass" && r.qemu && r.qemu.outcome !== "pass"
  );
  out.push(
    `we pass, QEMU does not: ${better.length ? better.map((r) => r.name).join(", ") : "none"}`,
  );
  return out.join("\n");
}

function kvmDescription(): string {
  let module = "unknown";
  for (const m of ["kvm_pvm", "kvm_intel", "kvm_amd"]) {
    try {
      Deno.statSync(`/sys/module/${m}`);
      module = m;
      break;
    } catch { /* not loaded */ }
  }
  return `/dev/kvm via ${module}, host kernel ${Deno.osRelease()}`;
}

/** What `--help` prints. */
export const USAGE =
  `deno task kut [options]: kvm-unit-tests (x86) on this VMM and on QEMU, same KVM

  --filter RE       only entries whose name matches RE
  --timeout S       per entry and VMM, at most the entry's own timeout (default 45)
  --subset ci       the fixed quick subset: ${CI_SUBSET.join(", ")}
  --only ours|qemu  run one side only
  --all             include the nodefault group
  --json            print the results as JSON (progress on stderr)
  --render FILE     print the table of an earlier --json run
  --build DIR       use this kvm-unit-tests build (x86/*.flat) instead of .cache/kut
  --log DIR         where the per-run logs go (default .cache/kut/logs)
  --show            print the log's last 40 lines of every run that did not pass (stderr)
  --qemu DIR        run QEMU from a bundle made by tools/kut/qemu_bundle.ts (the sandbox has none)
  --help            this text

Exit code: 0 when we pass every entry QEMU passes, 1 otherwise, 2 on a usage error.`;

/** The CLI. Returns the exit code: 0 when we pass every entry QEMU passes. */
export async function main(argv: string[]): Promise<number> {
  const opts = {
    filter: "",
    timeout: 45,
    subset: "",
    json: false,
    all: false,
    build: "",
    only: "",
    qemu: "",
    show: false,
    log: `${DEFAULT_BUILD}/logs`,
  };
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m) throw new Error(`unknown argument ${argv[i]}`);
    const key = m[1];
    const value = () => m[2] ?? argv[++i];
    if (key === "help") {
      console.log(USAGE);
      return 0;
    } else if (key === "filter") opts.filter = value();
    else if (key === "timeout") opts.timeout = Number(value());
    else if (key === "subset") opts.subset = value();
    else if (key === "json") opts.json = true;
    else if (key === "all") opts.all = true;
    else if (key === "build") opts.build = value();
    else if (key === "only") opts.only = value();
    else if (key === "show") opts.show = true;
    else if (key === "qemu") opts.qemu = resolve(value()); // the runs' cwd is the suite
    else if (key === "log") opts.log = resolve(value()); // the runs' cwd is the suite
    else if (key === "render") {
      // Re-render a --json result as the table.
      const saved = JSON.parse(Deno.readTextFileSync(value())) as { kvm: string; rows: Row[] };
      console.log(renderTable(saved.rows, saved.kvm));
      return 0;
    } else throw new Error(`unknown option --${key}`);
  }
  if (opts.subset && opts.subset !== "ci") {
    throw new Error(`--subset ${opts.subset}: only "ci" is defined`);
  }
  const suite = opts.build
    ? await ensureBuild(opts.build, TARBALL, { build: false })
    : await ensureBuild();
  const entries = parseUnittestsCfg(Deno.readTextFileSync(`${suite}/x86/unittests.cfg`)).filter((
    e,
  ) =>
    (!opts.filter || new RegExp(opts.filter).test(e.name)) &&
    (!opts.subset || CI_SUBSET.includes(e.name))
  );
  Deno.mkdirSync(opts.log, { recursive: true });
  const progress = (s: string) => opts.json ? console.error(s) : console.log(s);
  const rows: Row[] = [];
  const hostVendor = /^vendor_id\s*:\s*(\S+)/m.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1];
  for (const e of entries) {
    const a = applicability(e, { all: opts.all, hostVendor });
    const row: Row = {
      name: e.name,
      file: e.file,
      smp: e.smp,
      memoryMiB: a.memoryMiB,
      note: a.note,
    };
    rows.push(row);
    if (a.notApplicable) {
      row.notApplicable = a.notApplicable;
      progress(`${pad(e.name, 28)} n/a: ${a.notApplicable}`);
      continue;
    }
    const timeoutS = Math.min(opts.timeout, e.timeoutS);
    const envPath = `${opts.log}/${e.name}.env`;
    Deno.writeTextFileSync(envPath, environ(e.smp, a.memoryMiB));
    if (opts.only !== "qemu") {
      row.ours = await runOurs(
        suite,
        e,
        a.memoryMiB,
        envPath,
        timeoutS,
        `${opts.log}/${e.name}.ours.log`,
      );
    }
    if (opts.only !== "ours") {
      row.qemu = await runQemu(
        suite,
        e,
        a.memoryMiB,
        envPath,
        timeoutS,
        `${opts.log}/${e.name}.qemu.log`,
        opts.qemu ? bundleCommand(opts.qemu) : undefined,
      );
    }
    const show = (r?: RunResult) =>
      r ? `${pad(r.outcome, 7)} ${pad(r.seconds.toFixed(1), 5)} s` : "-";
    progress(`${pad(e.name, 28)} ours ${show(row.ours)}  qemu ${show(row.qemu)}`);
    if (opts.show) {
      // Where the logs cannot be read afterwards (the sandbox guest's), the tails are the record.
      for (const [side, r] of [["ours", row.ours], ["qemu", row.qemu]] as const) {
        if (!r || r.outcome === "pass") continue;
        const text = Deno.readTextFileSync(`${opts.log}/${e.name}.${side}.log`);
        console.error(`--- ${e.name} ${side}:\n${text.split("\n").slice(-40).join("\n")}`);
      }
    }
  }
  const kvm = kvmDescription();
  if (opts.json) {
    console.log(JSON.stringify({ kvm, timeoutS: opts.timeout, rows }, null, 2));
  } else {
    console.log("");
    console.log(renderTable(rows, kvm));
    console.log(`\nlogs: ${opts.log}`);
  }
  const worse = rows.filter((r) =>
    r.qemu?.outcome === "pass" && r.ours && r.ours.outcome !== "pass"
  );
  return worse.length === 0 ? 0 : 1;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(`kut: ${(e as Error).message}`);
    Deno.exit(2);
  }
}
