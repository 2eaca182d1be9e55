/**
 * `deno task test`: the unit tests natively (no KVM needed), then the KVM
 * integration tests on real kernel KVM: in place when `/dev/kvm` is usable,
 * otherwise inside the sandbox (a QEMU guest with kvm-amd), otherwise skipped
 * loudly. `KVM_TESTS=required` turns that skip into a failure;
 * `KVM_TESTS=skip` skips on purpose. Extra arguments filter the integration
 * test files (`deno task test tests/kvm/real_mode_test.ts`).
 *
 * Ends with one line `tests: N passed, N failed, N skipped`.
 *
 * @module
 */

import {
  ensureSandboxPackages,
  kvmUsable,
  runInSandbox,
  sandboxAvailable,
} from "./sandbox/sandbox.ts";

const root = new URL("..", import.meta.url).pathname;
const SANITIZE = ["--sanitize-ops", "--sanitize-resources", "--preload", "tests/preload.ts"];
const totals = { passed: 0, failed: 0, skipped: 0 };
const mode = Deno.env.get("KVM_TESTS") ?? "auto";

function count(output: string): { passed: number; failed: number } {
  // Deno's summary line: "ok | 3 passed | 0 failed (1s)" (or "FAILED | ...").
  const matches = [
    // deno-lint-ignore no-control-regex
    ...output.replaceAll(/\x1b\[[0-9;]*m/g, "").matchAll(
      /\| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed/g,
    ),
  ];
  const last = matches.at(-1);
  return last ? { passed: Number(last[1]), failed: Number(last[2]) } : { passed: 0, failed: 0 };
}

async function run(
  label: string,
  cmd: string[],
  env: Record<string, string> = {},
): Promise<boolean> {
  console.log(`\n== ${label}: ${cmd.join(" ")}`);
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd: root,
    env,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let output = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    output += decoder.decode(chunk, { stream: true });
    await Deno.stdout.write(chunk);
  }
  const status = await child.status;
  const { passed, failed } = count(output);
  totals.passed += passed;
  totals.failed += failed || (status.success ? 0 : 1);
  return status.success;
}

const filters = Deno.args.length ? Deno.args : ["tests/kvm/"];
let ok = await run("unit tests", [Deno.execPath(), "test", "-A", ...SANITIZE, "tests/unit/"]);

if (mode === "skip") {
  console.log("\n== KVM integration tests skipped (KVM_TESTS=skip)");
  totals.skipped++;
} else if (kvmUsable()) {
  ok = await run("KVM integration tests (native /dev/kvm)", [
    Deno.execPath(),
    "test",
    "-A",
    ...SANITIZE,
    ...filters,
  ]) && ok;
} else {
  let reason = "";
  try {
    await ensureSandboxPackages();
  } catch (e) {
    reason = e instanceof Error ? e.message : String(e);
  }
  const available = await sandboxAvailable();
  if (available.ok) {
    // Type-check on the host, where it is 20-50x faster than in the guest.
    ok = await run("type-check of the integration tests", [Deno.execPath(), "check", ...filters]) &&
      ok;
    console.log("\n== KVM integration tests inside the sandbox (no /dev/kvm here)");
    const result = await runInSandbox({
      command: ["deno", "test", "-A", "--no-check", ...SANITIZE, ...filters],
      timeoutMs: 60 * 60_000,
    });
    const { passed, failed } = count(result.output);
    totals.passed += passed;
    totals.failed += failed || (result.code === 0 ? 0 : 1);
    ok = result.code === 0 && ok;
    console.log(
      `sandbox: boot ${result.bootMs} ms, total ${result.totalMs} ms, exit ${result.code}`,
    );
  } else {
    reason ||= `${available.reason}; install with: ${available.install}`;
    const message = `KVM integration tests SKIPPED: no usable /dev/kvm and no sandbox (${reason})`;
    console.log(`\n${"!".repeat(message.length)}\n${message}\n${"!".repeat(message.length)}`);
    totals.skipped++;
    if (mode === "required") {
      console.log("KVM_TESTS=required: a skip is a failure");
      totals.failed++;
      ok = false;
    }
  }
}

console.log(`\ntests: ${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
Deno.exit(ok && totals.failed === 0 ? 0 : 1);
