/**
 * `deno task test`: the unit tests natively (no KVM needed), then the KVM
 * integration tests on real kernel KVM, on one or both targets:
 *
 * - `native`: this machine's `/dev/kvm`, whatever KVM backs it;
 * - `sandbox`: a QEMU guest whose kernel loads `kvm-amd` (nested SVM).
 *
 * `KVM_TARGET=native|sandbox|both` chooses; the default is `native` when
 * `/dev/kvm` is usable, else `sandbox`. `KVM_TESTS=required` turns a missing
 * target into a failure, and, when two targets ran, requires every test
 * skipped on one of them to pass on the other (a KVM may lack a feature; the
 * suite as a whole may not), except the few tests that no KVM of this project
 * offers (`UNAVAILABLE_EVERYWHERE`, each with its reason). `KVM_TESTS=skip`
 * skips the KVM tests on purpose. Extra arguments filter the integration test
 * files (`deno task test tests/kvm/real_mode_test.ts`).
 *
 * A test that skips prints `SKIP <test name> :: <reason>` when it registers,
 * or while it runs and then returns (see tests/kvm/kvm_features.ts: it then
 * counts as skipped, not passed); the runner reports those reasons per
 * target. Natively each test file runs in its own process under a time bound,
 * so a stuck file fails and the suite goes on.
 *
 * Ends with one line `tests: N passed, N failed, N skipped`, after a line of
 * counts per target.
 *
 * @module
 */

import {
  ensureSandboxPackages,
  kvmUsable,
  runInSandbox,
  sandboxAvailable,
} from "../tools/sandbox/sandbox.ts";
import { ensureBuild } from "../tools/kut/kut.ts";
import { buildFixture as buildVirtioFixture } from "./kvm/virtio_linux_fixture.ts";

const root = new URL("..", import.meta.url).pathname;
const SANITIZE = ["--sanitize-ops", "--sanitize-resources", "--preload", "tests/preload.ts"];
const mode = Deno.env.get("KVM_TESTS") ?? "auto";
/** A test file that runs longer than this natively is killed and counted as failed. */
const NATIVE_FILE_TIMEOUT_MS = Number(Deno.env.get("KVM_TEST_FILE_TIMEOUT_MS") ?? 15 * 60_000);
/** The whole sandbox run. */
const SANDBOX_TIMEOUT_MS = 60 * 60_000;

/**
 * Tests that no KVM this project meets can run, with why. Under
 * `KVM_TESTS=required` they may be skipped on every target; anything else
 * skipped everywhere fails the run.
 */
const UNAVAILABLE_EVERYWHERE: Record<string, string> = {
  "hardware breakpoint (DR0 exec) and watchpoint (DR1 write) fire at the right address":
    "needs hardware VMX/SVM: kvm_pvm lacks KVM_CAP_GUEST_DEBUG_HW_BPS, and the sandbox's " +
    "emulated SVM never loads DR0-7 into its nested guest",
  "software breakpoint: int3 exits with exception 3 at the int3":
    "needs hardware VMX/SVM: kvm_pvm never returns from KVM_RUN on the #BP intercept, and " +
    "the sandbox's emulated SVM does not honour it",
};

type Status = "ok" | "FAILED" | "ignored";

/** What one target did. */
interface TargetResult {
  name: string;
  /** Implementation line, e.g. "kvm_pvm, host 6.18.44". */
  kvm?: string;
  tests: Map<string, Status>;
  skipReasons: Map<string, string>;
  /** Failures not tied to a test: a crashed or timed-out file, a target that could not run. */
  errors: string[];
}

// deno-lint-ignore no-control-regex
const stripAnsi = (s: string) => s.replaceAll(/\x1b\[[0-9;]*m/g, "");

/** Reads Deno's pretty reporter output: `name ... ok (5ms)` lines and `SKIP name :: reason`. */
function parse(output: string, into: TargetResult): void {
  for (const raw of stripAnsi(output).split(/\r?\n/)) {
    const skip = raw.match(/^SKIP (.+?) :: (.*)$/);
    if (skip) {
      into.skipReasons.set(skip[1], skip[2]);
      continue;
    }
    const m = raw.match(/^(\S.*?) \.\.\. (ok|FAILED|ignored)(?: \(|$)/);
    // The sandbox's console may repeat a test's name ("name ...name ... ok").
    if (m) into.tests.set(m[1].split(" ...").at(-1)!, m[2] as Status);
    const kvm = raw.match(/^KVM under test: (.*)$/);
    if (kvm) into.kvm = kvm[1];
  }
  // A test that found out only while running that its need is missing says
  // SKIP and returns: it counts as skipped, not passed.
  for (const name of into.skipReasons.keys()) {
    if (into.tests.get(name) === "ok") into.tests.set(name, "ignored");
  }
}

async function spawn(
  label: string,
  cmd: string[],
  timeoutMs = 0,
): Promise<{ output: string; code: number; timedOut: boolean }> {
  console.log(`\n== ${label}: ${cmd.join(" ")}`);
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd: root,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = timeoutMs > 0
    ? setTimeout(() => {
      timedOut = true;
      console.log(`\n!! ${label}: still running after ${timeoutMs / 1000} s: killed`);
      child.kill("SIGKILL");
    }, timeoutMs)
    : undefined;
  let output = "";
  const decoder = new TextDecoder();
  const pump = async (stream: ReadableStream<Uint8Array>, write: (b: Uint8Array) => unknown) => {
    for await (const chunk of stream) {
      output += decoder.decode(chunk, { stream: true });
      await write(chunk);
    }
  };
  await Promise.all([
    pump(child.stdout, (b) => Deno.stdout.write(b)),
    pump(child.stderr, (b) => Deno.stderr.write(b)),
  ]);
  const status = await child.status;
  clearTimeout(timer);
  return { output, code: status.code, timedOut };
}

function newTarget(name: string): TargetResult {
  return { name, tests: new Map(), skipReasons: new Map(), errors: [] };
}

/** Deno's summary says a file failed but no test line did (a load error, a crash). */
function checkExit(
  target: TargetResult,
  label: string,
  run: { code: number; timedOut: boolean },
  before: number,
) {
  if (run.timedOut) target.errors.push(`${label}: timed out`);
  else if (run.code !== 0) {
    const failedTests = [...target.tests.values()].filter((s) => s === "FAILED").length;
    if (failedTests === before) target.errors.push(`${label}: exit code ${run.code}`);
  }
}

async function integrationFiles(filters: string[]): Promise<string[]> {
  const files: string[] = [];
  for (const filter of filters) {
    const path = `${root}${filter}`;
    const stat = await Deno.stat(path);
    if (stat.isFile) files.push(filter);
    else {
      for await (const entry of Deno.readDir(path)) {
        if (entry.isFile && entry.name.endsWith("_test.ts")) {
          files.push(`${filter.replace(/\/$/, "")}/${entry.name}`);
        }
      }
    }
  }
  return files.sort();
}

async function runNative(files: string[]): Promise<TargetResult> {
  const target = newTarget("native");
  for (const file of files) {
    const failedBefore = [...target.tests.values()].filter((s) => s === "FAILED").length;
    const run = await spawn(
      `native /dev/kvm: ${file}`,
      [Deno.execPath(), "test", "-A", ...SANITIZE, file],
      NATIVE_FILE_TIMEOUT_MS,
    );
    parse(run.output, target);
    checkExit(target, file, run, failedBefore);
  }
  return target;
}

async function runSandbox(files: string[]): Promise<TargetResult> {
  const target = newTarget("sandbox");
  let reason = "";
  try {
    await ensureSandboxPackages();
  } catch (e) {
    reason = e instanceof Error ? e.message : String(e);
  }
  const available = await sandboxAvailable();
  if (!available.ok) {
    target.errors.push(
      `no sandbox: ${reason || `${available.reason}; install with: ${available.install}`}`,
    );
    return target;
  }
  // Type-check on the host, where it is 20-50x faster than in the guest.
  const check = await spawn("type-check of the integration tests", [
    Deno.execPath(),
    "check",
    ...files,
  ]);
  if (check.code !== 0) target.errors.push("type-check failed");
  console.log("\n== KVM integration tests inside the sandbox (QEMU guest with nested kvm-amd)");
  const kut = await kvmUnitTestsForSandbox();
  const virtio = await virtioLinuxForSandbox(files);
  const result = await runInSandbox({
    command: ["deno", "test", "-A", "--no-check", ...SANITIZE, ...files],
    timeoutMs: SANDBOX_TIMEOUT_MS,
    extraPaths: [...kut.extraPaths ?? [], ...virtio.extraPaths ?? []],
    env: { ...kut.env, ...virtio.env },
  });
  parse(result.output, target);
  checkExit(target, "sandbox run", { code: result.code, timedOut: result.code === 124 }, 0);
  console.log(`sandbox: boot ${result.bootMs} ms, total ${result.totalMs} ms, exit ${result.code}`);
  return target;
}

/**
 * The sandbox guest has no compiler: the kvm-unit-tests programs that
 * tests/kvm/kut_test.ts runs are built on the host and carried in.
 */
async function kvmUnitTestsForSandbox(): Promise<
  { extraPaths?: string[]; env?: Record<string, string> }
> {
  try {
    const suite = await ensureBuild();
    const rel = suite.startsWith(root) ? suite.slice(root.length) : undefined;
    if (!rel) return {};
    const programs = ["msr", "smptest", "setjmp", "vmexit", "realmode", "s3"]
      .map((p) => `${rel}/x86/${p}.flat`);
    return { extraPaths: programs, env: { KUT_BUILD: `/project/${rel}` } };
  } catch (e) {
    console.log(`kvm-unit-tests not built for the sandbox: ${(e as Error).message}`);
    return {};
  }
}

/**
 * The sandbox guest has neither the kernel's modules nor mkfs.ext4: the
 * fixture of tests/kvm/virtio_linux_test.ts (initramfs with the virtio and
 * ext4 modules, an ext4 root image) is built on the host and carried in.
 */
async function virtioLinuxForSandbox(
  files: string[],
): Promise<{ extraPaths?: string[]; env?: Record<string, string> }> {
  if (!files.some((f) => f.includes("virtio_linux_test"))) return {};
  const dir = ".cache/virtio-linux";
  const built = await buildVirtioFixture(`${root}${dir}`);
  if (typeof built === "string") {
    console.log(`virtio Linux fixture not built for the sandbox: ${built}`);
    return {};
  }
  return {
    extraPaths: [`${dir}/initrd.cpio`, `${dir}/rootfs.ext4`, `${dir}/tun.ko`],
    env: { VIRTIO_LINUX_FIXTURE: `/project/${dir}` },
  };
}

function chosenTargets(): ("native" | "sandbox")[] {
  const wanted = Deno.env.get("KVM_TARGET") ?? "auto";
  switch (wanted) {
    case "native":
    case "sandbox":
      return [wanted];
    case "both":
      return ["native", "sandbox"];
    case "auto":
      return [kvmUsable() ? "native" : "sandbox"];
    default:
      console.error(`KVM_TARGET=${wanted}: expected native, sandbox or both`);
      Deno.exit(2);
  }
}

// ---- main ----

const filters = Deno.args.length ? Deno.args : ["tests/kvm/"];
const unit = newTarget("unit");
{
  const run = await spawn("unit tests", [
    Deno.execPath(),
    "test",
    "-A",
    ...SANITIZE,
    "tests/unit/",
  ]);
  parse(run.output, unit);
  checkExit(unit, "unit tests", run, 0);
}

const targets: TargetResult[] = [];
let skippedTargets = 0;
const problems: string[] = [];
if (mode === "skip") {
  console.log("\n== KVM integration tests skipped (KVM_TESTS=skip)");
  skippedTargets++;
} else {
  const files = await integrationFiles(filters);
  for (const name of chosenTargets()) {
    if (name === "native" && !kvmUsable()) {
      const message = "native target: /dev/kvm is missing or not usable";
      console.log(`\n!!!! KVM integration tests SKIPPED on the ${message}`);
      skippedTargets++;
      if (mode === "required") problems.push(`${message} (KVM_TESTS=required)`);
      continue;
    }
    const target = name === "native" ? await runNative(files) : await runSandbox(files);
    if (name === "sandbox" && target.errors.some((e) => e.startsWith("no sandbox"))) {
      console.log(`\n!!!! KVM integration tests SKIPPED in the sandbox: ${target.errors[0]}`);
      skippedTargets++;
      if (mode === "required") problems.push(`${target.errors[0]} (KVM_TESTS=required)`);
      continue;
    }
    targets.push(target);
  }
}

// A test skipped on one target must pass on another (KVM_TESTS=required).
const skippedEverywhere: string[] = [];
if (targets.length > 0) {
  const names = new Set(targets.flatMap((t) => [...t.tests.keys()]));
  for (const name of [...names].sort()) {
    const statuses = targets.map((t) => t.tests.get(name));
    if (statuses.includes("ok") || statuses.includes("FAILED")) continue;
    const why = targets.map((t) =>
      `${t.name}: ${t.skipReasons.get(name) ?? (t.tests.has(name) ? "ignored" : "not run")}`
    ).join("; ");
    if (name in UNAVAILABLE_EVERYWHERE) {
      console.log(
        `\nskipped on every target (no KVM here offers it: ${UNAVAILABLE_EVERYWHERE[name]})`,
      );
      console.log(`  ${name} (${why})`);
    } else {
      skippedEverywhere.push(`${name} (${why})`);
    }
  }
}
if (skippedEverywhere.length > 0) {
  console.log(`\nskipped on every target that ran:\n  ${skippedEverywhere.join("\n  ")}`);
  // With one KVM there is no other to pass on: the skips and their reasons are the report.
  if (mode === "required" && targets.length > 1) {
    problems.push(
      `${skippedEverywhere.length} test(s) skipped on every target (KVM_TESTS=required)`,
    );
  }
}

const totals = { passed: 0, failed: 0, skipped: skippedTargets };
const lines: string[] = [];
for (const t of [unit, ...targets]) {
  const count = (s: Status) => [...t.tests.values()].filter((v) => v === s).length;
  const [passed, failed, skipped] = [
    count("ok"),
    count("FAILED") + t.errors.length,
    count("ignored"),
  ];
  totals.passed += passed;
  totals.failed += failed;
  totals.skipped += skipped;
  lines.push(
    `  ${t.name}${
      t.kvm && t !== unit ? ` (${t.kvm})` : ""
    }: ${passed} passed, ${failed} failed, ${skipped} skipped`,
  );
  for (const e of t.errors) lines.push(`    error: ${e}`);
  for (const [name, s] of t.tests) if (s === "FAILED") lines.push(`    FAILED: ${name}`);
  for (const [name, reason] of t.skipReasons) {
    if (t.tests.get(name) === "ignored") lines.push(`    skipped: ${name}: ${reason}`);
  }
}
totals.failed += problems.length;
console.log(`\nper target:\n${lines.join("\n")}`);
for (const p of problems) console.log(`  problem: ${p}`);
console.log(`\ntests: ${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
Deno.exit(totals.failed === 0 ? 0 : 1);
