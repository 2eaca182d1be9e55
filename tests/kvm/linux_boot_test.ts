// Boots Debian's distribution kernel (a bzImage) with 2 vCPUs and 256 MiB to a
// busybox /init that reports what it sees over the serial console and reboots:
// the bzImage loader, long-mode entry, the platform (irqchip, PIT, CPUID, MP
// table), the 16550A UART and the keyboard controller's reset, all driven by
// a real guest on real KVM. Three ways: with the kernel decompressed on the
// host and entered directly at its ELF entry point; that uncompressed kernel
// alone, as a bare ELF with no bzImage setup header; and the classic way (the
// kernel decompresses itself in the guest).
//
// Every boot is bounded. KVMs differ by orders of magnitude here (nested
// kvm-amd boots in 10-30 s; kvm_pvm emulates every kernel instruction, and a
// 1-vCPU boot had not reached /init after 3,000 s), so the first boot gets a
// bound of its own (KVM_LINUX_BOOT_TIMEOUT_S, default 240 s: 8x the sandbox's
// slowest boot) and later boots a multiple of the time it measured. A KVM
// that cannot boot Linux within it (the first boot ends in a KVM internal
// error, or times out on a KVM that runs guest code slowly: guestMips) skips
// the others with the reason; a first boot that times out on a fast KVM is a
// stalled guest and boots again. A guest-side decompressor that does not
// finish within the measured budget is skipped the same way.

import { match, ok, rejects, strictEqual } from "node:assert/strict";
import { formatProbeReport } from "../../src/boot/cpu_probe.ts";
import { buildInitramfs, hostKernelPath } from "../../examples/initramfs.ts";
import { LinuxMachine } from "../../src/boot/linux.ts";
import { bzImagePayload, cachedVmlinux } from "../../src/boot/vmlinux.ts";
import { guestMips, skipWhileRunning } from "./kvm_features.ts";
import { LINUX_BOOT_MIN_MIPS } from "../../src/vmm.ts";

const MARKER = "DENO-KVM-INIT-REACHED";

// deno-fmt-ignore
const INIT = [
  "#!/bin/busybox sh",
  "/bin/busybox mount -t proc proc /proc",     // nproc and meminfo need /proc
  `/bin/busybox echo ${MARKER}`,                // the marker the test waits for
  "/bin/busybox echo nproc=$(/bin/busybox nproc)",
  "/bin/busybox echo $(/bin/busybox grep MemTotal /proc/meminfo)",
  "/bin/busybox echo DONE",
  "/bin/busybox reboot -f",                     // the i8042 reset ends the VM
].join("\n") + "\n";

function firstExisting(paths: (string | undefined)[]): string {
  for (const p of paths) {
    if (!p) continue;
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch {
      // try the next
    }
  }
  throw new Error(`none of ${paths.filter(Boolean).join(", ")} exists`);
}

/** What one boot measured. */
interface Boot {
  /** The guest's time from the VM being ready to the init marker, ms. */
  toMarkerMs: number;
}

/** Why a boot could not happen on this KVM: the test skips with it. */
class CannotBoot extends Error {}

/** The first boot's bound, and later boots' bound once a boot was measured. */
const FIRST_BOOT_TIMEOUT_MS = Number(Deno.env.get("KVM_LINUX_BOOT_TIMEOUT_S") ?? 240) * 1000;
let measuredBootMs: number | undefined;
/** Set when this KVM showed it cannot boot Linux. */
let cannotBoot: string | undefined;

/**
 * A boot's bound: the first one's, else 4x the slowest measured boot. The
 * classic way gets 1.5x: its decompressor alone taking longer than a whole
 * boot of the host-decompressed kernel marks a KVM that emulates it (the
 * sandbox: about 5 s of decompressor for a 4-5 s boot; kvm_pvm: QEMU's own
 * boot never got past it in 200 s). Never under 120 s.
 */
function bootTimeoutMs(inDecompressor: boolean): number {
  if (measuredBootMs === undefined) return FIRST_BOOT_TIMEOUT_MS;
  return Math.max(120_000, Math.round(measuredBootMs * (inDecompressor ? 1.5 : 4)));
}

/**
 * Boots `kernel` (a bzImage, or a bare ELF) with `vmlinux` as its uncompressed kernel if given.
 * `inDecompressor`: a timeout with the vCPU still below the kernel's virtual addresses
 * (the guest's decompressor) throws CannotBoot.
 */
async function bootToInit(
  kernel: Uint8Array,
  vmlinux?: Uint8Array,
  inDecompressor = false,
): Promise<Boot> {
  const t0 = performance.now();
  const busybox = await Deno.readFile(
    firstExisting([Deno.env.get("KVM_BUSYBOX"), "/bin/busybox"]),
  );
  const initrd = await buildInitramfs({ busybox, init: INIT });
  let text = "";
  let markerAt = -1;
  const decoder = new TextDecoder();
  const verbose = Deno.env.get("KVM_LINUX_VERBOSE") === "1";
  using machine = LinuxMachine.create({
    kernel,
    vmlinux,
    initrd,
    // pci=off: there is no PCI bus, and probing for one costs thousands of exits.
    cmdline: `console=ttyS0 panic=-1 pci=off${verbose ? "" : " quiet"}`,
    memorySize: 256 * 1024 * 1024,
    cpus: 2,
    serialOutput: (byte) => {
      const chunk = decoder.decode(new Uint8Array([byte]), { stream: true });
      text += chunk;
      if (verbose) Deno.stdout.writeSync(new Uint8Array([byte]));
      if (markerAt < 0 && text.endsWith(MARKER)) markerAt = performance.now();
    },
    onUnhandled: verbose ? (what) => console.error(`[unhandled] ${what}`) : undefined,
  });
  const created = performance.now();
  if (machine.cpuProbe && machine.cpuProbe.unusable.length > 0) {
    console.log(`CPU probe: ${formatProbeReport(machine.cpuProbe).split("\n").at(-1)}`);
  }
  const timeoutMs = bootTimeoutMs(inDecompressor);
  const exit = await machine.run({ timeoutMs });
  const ended = performance.now();
  // performance.now() counts from process start.
  console.log(
    `linux boot: process start to VM ready ${Math.round(created)} ms (test setup ${
      Math.round(created - t0)
    } ms), to init marker ${markerAt < 0 ? "never" : `${Math.round(markerAt)} ms`}, ` +
      `to reboot ${Math.round(ended)} ms`,
  );
  const busiest = [...machine.exitsByPort.entries()].filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1]).slice(0, 8)
    .map(([port, n]) => `${port === 0x10000 ? "mmio" : port.toString(16)}: ${n}`);
  console.log(`exits by port: ${busiest.join(", ")}`);
  if (exit.reason === "error" && /KVM internal error/.test(exit.detail ?? "") && markerAt < 0) {
    cannotBoot = `this KVM cannot boot Linux: ${exit.detail!.split("\n")[0]}`;
    throw new CannotBoot(cannotBoot);
  }
  if (exit.reason === "timeout" && inDecompressor && markerAt < 0) {
    const rip = machine.vcpus[0].getRegs().rip;
    if (rip < 0xffff_ffff_8000_0000n) {
      throw new CannotBoot(
        `the guest's decompressor did not finish in ${timeoutMs / 1000} s on this KVM ` +
          `(1.5x the measured boot; RIP ${rip.toString(16)})`,
      );
    }
  }
  try {
    strictEqual(exit.reason, "reset", `the guest rebooted (got ${exit.reason}: ${exit.detail})`);
    ok(text.includes(MARKER), "the init script ran and printed the marker");
    match(text, /nproc=2\b/, "Linux brought up both vCPUs");
    const mem = text.match(/MemTotal:\s+(\d+) kB/);
    ok(mem, "init printed MemTotal");
    const kib = Number(mem[1]);
    ok(kib > 150 * 1024 && kib <= 256 * 1024, `MemTotal ${kib} kB is plausible for 256 MiB`);
    ok(text.includes("DONE"), "init got to the end of its script");
  } catch (e) {
    console.log(`serial console (last 3000 characters):\n${text.slice(-3000)}`);
    throw e;
  }
  const toMarkerMs = markerAt - created;
  measuredBootMs = Math.max(measuredBootMs ?? 0, toMarkerMs);
  return { toMarkerMs };
}

/**
 * Boots again (up to three boots) when a boot fails with the guest stalled,
 * crashed or out of time, logging why each time. On the sandbox's nested KVM
 * (SVM emulated by QEMU's TCG) some boots crash or stall, QEMU's own boots
 * more often: an interrupt is delivered while the guest's IF is 0 (README,
 * "Boot time"); a real defect fails every attempt.
 */
async function bootWithRetries(
  t: Deno.TestContext,
  kernel: Uint8Array,
  vmlinux?: Uint8Array,
  inDecompressor = false,
): Promise<void> {
  if (cannotBoot) return skip(t, cannotBoot);
  for (let attempt = 1;; attempt++) {
    try {
      await bootToInit(kernel, vmlinux, inDecompressor);
      return;
    } catch (e) {
      if (e instanceof CannotBoot) return skip(t, e.message);
      if (measuredBootMs === undefined && /got timeout/.test(String(e))) {
        // On a KVM that runs guest code slowly the first boot would only time out again.
        const mips = guestMips();
        // Below the library's threshold a timed-out first boot is slowness, not a stall.
        if (mips < LINUX_BOOT_MIN_MIPS) {
          cannotBoot = `Linux did not reach /init within ${FIRST_BOOT_TIMEOUT_MS / 1000} s: ` +
            `this KVM runs guest code at ${mips.toFixed(1)} million instructions/s ` +
            `(a loop; README "Booting on a software KVM")`;
          return skip(t, cannotBoot);
        }
      }
      if (attempt === 3) throw e;
      console.log(`boot ${attempt} failed (${(e as Error).message}); booting again`);
    }
  }
}

/** Deno has no runtime skip: say why (tests/run.ts counts the test as skipped), and pass. */
function skip(t: Deno.TestContext, why: string): void {
  skipWhileRunning(t, why);
}

function hostKernel(): Uint8Array {
  const kernelPath = hostKernelPath();
  ok(kernelPath, "a kernel image is installed (/boot/vmlinuz*)");
  return Deno.readFileSync(kernelPath);
}

Deno.test("linux: Debian's kernel, decompressed on the host, boots to /init with 2 vCPUs and 256 MiB, then reboots", async (t) => {
  const kernel = hostKernel();
  strictEqual(bzImagePayload(kernel).format, "xz", "Debian's kernel is xz-compressed");
  const t0 = performance.now();
  const { vmlinux, source } = cachedVmlinux(kernel);
  console.log(
    `vmlinux (${vmlinux.length} bytes) ${source} in ${Math.round(performance.now() - t0)} ms`,
  );
  await bootWithRetries(t, kernel, vmlinux);
});

Deno.test("linux: a bare ELF vmlinux (no bzImage, a synthesized setup header) boots too", async (t) => {
  // From the cache the previous test filled (or extracted now, when run alone).
  const { vmlinux, source } = cachedVmlinux(hostKernel());
  console.log(
    `vmlinux (${vmlinux.length} bytes) from the ${source === "cache" ? "cache" : "bzImage"}`,
  );
  await bootWithRetries(t, vmlinux);
});

Deno.test("linux: the same bzImage the classic way (the guest decompresses it)", async (t) => {
  await bootWithRetries(t, hostKernel(), undefined, true);
});

Deno.test("linux: a bad timeout is refused, and a machine closed without running stops its workers", async () => {
  const { KvmError } = await import("../../src/errors.ts");
  const machine = LinuxMachine.create({
    kernel: hostKernel(),
    cmdline: "console=ttyS0",
    memorySize: 256 * 1024 * 1024,
    cpus: 2,
  });
  try {
    await rejects(
      machine.run({ timeoutMs: Number.NaN }),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /timeoutMs/.test(e.message),
    );
  } finally {
    machine.close(); // the AP worker, created with the machine, ends here (the sanitizers check)
  }
});
