/**
 * Runs an example where KVM is, and says where: on this machine's /dev/kvm
 * when it is usable, otherwise inside the sandbox (a QEMU guest whose kernel
 * has KVM). `KVM_TARGET=sandbox` or `KVM_TARGET=native` decides instead.
 *
 * With `--linux` the example boots Linux: it needs a kernel and a static
 * busybox, and a KVM that runs guest code fast enough. A software KVM
 * (`kvm_pvm`: about 1 million guest instructions per second, where a boot
 * takes an hour) is measured (`linuxBootPractical`) and the example runs in
 * the sandbox instead, saying so.
 *
 * Missing packages are installed with apt-get when this runs as root (saying
 * so); otherwise the message names the command to run.
 *
 * Usage: `deno run -A examples/run_example.ts [--linux] examples/hello.ts [args...]`
 *
 * @module
 */

import { hostKernelPath, linuxBootPractical } from "@deno-kvm/kvm/vmm";
import { aptInstall, which } from "../tools/sandbox/host.ts";
import { ensureSandboxPackages, kvmUsable, runInSandbox } from "../tools/sandbox/sandbox.ts";

const argv = [...Deno.args];
const linux = argv[0] === "--linux";
if (linux) argv.shift();
const [script, ...args] = argv;
if (!script) {
  console.error("usage: run_example.ts [--linux] <example.ts> [args...]");
  Deno.exit(2);
}
const target = Deno.env.get("KVM_TARGET") || undefined;
if (target !== undefined && target !== "native" && target !== "sandbox") {
  console.error(`run_example: KVM_TARGET=${target}: use native or sandbox (or leave it unset)`);
  Deno.exit(2);
}

const root = new URL("..", import.meta.url).pathname;

/** Where the example runs, and why (printed). */
function choose(): "native" | "sandbox" {
  if (target === "sandbox") {
    console.error("run_example: KVM_TARGET=sandbox: running the example in the sandbox");
    return "sandbox";
  }
  const usable = kvmUsable();
  if (target === "native" || (usable && !linux)) {
    if (!usable) console.error("run_example: KVM_TARGET=native but /dev/kvm is not usable here");
    return "native";
  }
  if (!usable) {
    console.error(
      "run_example: no usable /dev/kvm here: running the example in the sandbox " +
        "(a QEMU guest whose kernel loads kvm-amd)",
    );
    return "sandbox";
  }
  const speed = linuxBootPractical();
  if (speed.practical) return "native";
  console.error(
    `run_example: this machine's KVM runs guest code at ${speed.mips.toFixed(1)} million ` +
      "instructions/s (a software KVM such as kvm_pvm): booting Linux on it takes most of an " +
      "hour. Running the example in the sandbox instead, where it takes a few minutes " +
      "(KVM_TARGET=native forces this machine's KVM).",
  );
  return "sandbox";
}

/** A Linux example natively needs a kernel and a static busybox on this machine. */
async function ensureLinuxFiles(): Promise<void> {
  const missing: string[] = [];
  if (!hostKernelPath()) missing.push("linux-image-amd64");
  try {
    const busybox = await Deno.readFile("/bin/busybox");
    // A dynamic busybox names its interpreter; a static one does not.
    if (new TextDecoder().decode(busybox.subarray(0, 4096)).includes("ld-linux")) {
      missing.push("busybox-static");
    }
  } catch {
    missing.push("busybox-static");
  }
  if (missing.length === 0) return;
  await aptInstall(missing, "run_example: no Linux kernel or static busybox to boot");
}

/** The shim is compiled on first use: natively that needs `cc` unless it is built already. */
async function ensureCompiler(): Promise<void> {
  const built = await Deno.stat(`${root}native/build/libkvm_shim.so`).then(() => true, () => false);
  if (built || await which("cc")) return;
  await aptInstall(
    ["gcc", "libc6-dev"],
    "run_example: no C compiler (cc) to build the native shim",
  );
}

try {
  if (target !== "sandbox" && kvmUsable()) await ensureCompiler();
  const where = choose();
  if (where === "native") {
    if (linux) await ensureLinuxFiles();
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, ...args],
      cwd: root,
    })
      .spawn();
    Deno.exit((await child.status).code);
  }
  await ensureSandboxPackages();
  // Type-check on the host, where it is much faster than inside the emulated guest.
  const check = await new Deno.Command(Deno.execPath(), { args: ["check", script], cwd: root })
    .output();
  if (!check.success) {
    console.error(new TextDecoder().decode(check.stderr));
    Deno.exit(1);
  }
  console.error("run_example: starting the sandbox (booting its guest takes a minute or two)");
  const result = await runInSandbox({
    command: ["deno", "run", "-A", "--no-check", script, ...args],
    quiet: true,
  });
  Deno.exit(result.code);
} catch (error) {
  console.error(error instanceof Error ? error.message : String(error));
  Deno.exit(1);
}
