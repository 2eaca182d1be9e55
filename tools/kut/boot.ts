/**
 * Boots one Multiboot kernel on this project's VMM, the way `x86/run` boots a
 * kvm-unit-tests program on QEMU, and exits like QEMU with `isa-debug-exit`:
 * the status the guest wrote (`code << 1 | 1`, low 8 bits), 124 on the
 * timeout, 2 when the machine stopped otherwise (the reason on stderr).
 *
 * ```sh
 * deno run -A tools/kut/boot.ts --kernel x86/msr.flat --initrd env --append "x86/msr.flat" \
 *   --smp 1 --memory 256 --timeout 30
 * ```
 *
 * Dev tooling, not part of the published package.
 *
 * @module
 */

import { MultibootMachine } from "../../src/vmm.ts";

/** Runs the CLI; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  const flags: Record<string, string> = { smp: "1", memory: "256", timeout: "0" };
  for (let i = 0; i < args.length; i++) {
    const m = /^--(kernel|initrd|append|smp|memory|timeout)(?:=(.*))?$/.exec(args[i]);
    if (!m) {
      console.error(`boot.ts: unknown argument ${args[i]}`);
      return 2;
    }
    flags[m[1]] = m[2] ?? args[++i] ?? "";
  }
  if (!flags.kernel) {
    console.error(
      "usage: boot.ts --kernel FILE [--initrd ENV] [--append ARGS] [--smp N] [--memory MiB] [--timeout S]",
    );
    return 2;
  }
  const kernel = Deno.readFileSync(flags.kernel);
  const modules = flags.initrd
    ? [{ data: Deno.readFileSync(flags.initrd), cmdline: flags.initrd }]
    : [];
  // QEMU's Multiboot loader passes "<kernel file> <append>" as the command line.
  const cmdline = flags.append ? `${flags.kernel} ${flags.append}` : flags.kernel;
  const buffered: number[] = [];
  const flush = () => {
    if (buffered.length) Deno.stdout.writeSync(new Uint8Array(buffered.splice(0)));
  };
  using machine = MultibootMachine.create({
    kernel,
    cmdline,
    modules,
    memorySize: Number(flags.memory) * 1024 * 1024,
    cpus: Number(flags.smp),
    serialOutput: (b) => {
      buffered.push(b);
      if (b === 10 || buffered.length >= 4096) flush();
    },
  });
  const timeoutS = Number(flags.timeout);
  const exit = await machine.run(timeoutS > 0 ? { timeoutMs: timeoutS * 1000 } : {});
  flush();
  switch (exit.reason) {
    case "debugExit":
      return exit.status! & 0xff;
    case "timeout":
      console.error(`boot.ts: timeout after ${timeoutS} s`);
      return 124;
    default:
      console.error(
        `boot.ts: ${exit.reason} (vCPU ${exit.vcpu})${exit.detail ? `\n${exit.detail}` : ""}`,
      );
      return 2;
  }
}

if (import.meta.main) {
  // An error is exit 2, never Deno's 1 for an uncaught one (1 is the guest's pass).
  let code = 2;
  try {
    code = await main(Deno.args);
  } catch (e) {
    console.error(`boot.ts: ${(e as Error).stack ?? e}`);
  }
  Deno.exit(code);
}
