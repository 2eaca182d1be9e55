/**
 * Runs an example where KVM is: directly when /dev/kvm is usable, otherwise
 * inside the sandbox (a QEMU guest whose kernel has KVM). When the sandbox's
 * packages are missing and this runs as root with apt, it installs them and
 * says so; otherwise it prints the command to run.
 *
 * Usage: `deno run -A examples/run_example.ts examples/hello.ts [args...]`
 *
 * @module
 */

import { ensureSandboxPackages, kvmUsable, runInSandbox } from "../tests/sandbox/sandbox.ts";

const [script, ...args] = Deno.args;
if (!script) {
  console.error("usage: run_example.ts <example.ts> [args...]");
  Deno.exit(2);
}

const root = new URL("..", import.meta.url).pathname;
if (kvmUsable()) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    cwd: root,
  })
    .spawn();
  Deno.exit((await child.status).code);
}

console.error("No usable /dev/kvm here: running the example inside the sandbox (QEMU + kvm-amd).");
try {
  await ensureSandboxPackages();
} catch (error) {
  console.error(error instanceof Error ? error.message : String(error));
  Deno.exit(1);
}
// Type-check on the host, where it is much faster than inside the emulated guest.
const check = await new Deno.Command(Deno.execPath(), { args: ["check", script], cwd: root })
  .output();
if (!check.success) {
  console.error(new TextDecoder().decode(check.stderr));
  Deno.exit(1);
}
const result = await runInSandbox({
  command: ["deno", "run", "-A", "--no-check", script, ...args],
  quiet: true,
});
Deno.exit(result.code);
