// Boots Debian's distribution kernel (a bzImage) with 2 vCPUs and 256 MiB to a
// busybox /init that reports what it sees over the serial console and reboots:
// the bzImage loader, long-mode entry, the platform (irqchip, PIT, CPUID, MP
// table), the 16550A UART and the keyboard controller's reset, all driven by
// a real guest on real KVM. Three ways: the classic way (the kernel
// decompresses itself in the guest); with the kernel decompressed on the host
// and entered directly at its ELF entry point; and that uncompressed kernel
// alone, as a bare ELF with no bzImage setup header.

import { match, ok, rejects, strictEqual } from "node:assert/strict";
import { buildInitramfs, hostKernelPath } from "../../examples/initramfs.ts";
import { LinuxMachine } from "../../src/boot/linux.ts";
import { bzImagePayload, cachedVmlinux } from "../../src/boot/vmlinux.ts";

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

/** Boots `kernel` (a bzImage, or a bare ELF) with `vmlinux` as its uncompressed kernel if given. */
async function bootToInit(kernel: Uint8Array, vmlinux?: Uint8Array): Promise<void> {
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
  const exit = await machine.run({ timeoutMs: 120_000 });
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
}

/**
 * Boots again (up to three boots) when a boot fails with the guest stalled,
 * crashed or out of time, logging why each time. On the sandbox's nested KVM
 * (SVM emulated by QEMU's TCG) some boots crash in the guest's timer-interrupt
 * entry with its KERNEL_GS_BASE lost, QEMU's own boots more often; a real
 * defect fails every attempt.
 */
async function bootWithRetries(kernel: Uint8Array, vmlinux?: Uint8Array): Promise<void> {
  for (let attempt = 1;; attempt++) {
    try {
      return await bootToInit(kernel, vmlinux);
    } catch (e) {
      if (attempt === 3) throw e;
      console.log(`boot ${attempt} failed (${(e as Error).message}); booting again`);
    }
  }
}

function hostKernel(): Uint8Array {
  const kernelPath = hostKernelPath();
  ok(kernelPath, "a kernel image is installed (/boot/vmlinuz*)");
  return Deno.readFileSync(kernelPath);
}

Deno.test("linux: Debian's kernel boots to /init with 2 vCPUs and 256 MiB, then reboots", async () => {
  await bootWithRetries(hostKernel());
});

Deno.test("linux: the same kernel, decompressed on the host, entered at its ELF entry", async () => {
  const kernel = hostKernel();
  strictEqual(bzImagePayload(kernel).format, "xz", "Debian's kernel is xz-compressed");
  const t0 = performance.now();
  const { vmlinux, source } = cachedVmlinux(kernel);
  console.log(
    `vmlinux (${vmlinux.length} bytes) ${source} in ${Math.round(performance.now() - t0)} ms`,
  );
  await bootWithRetries(kernel, vmlinux);
});

Deno.test("linux: a bare ELF vmlinux (no bzImage, a synthesized setup header) boots too", async () => {
  // From the cache the previous test filled (or extracted now, when run alone).
  const { vmlinux, source } = cachedVmlinux(hostKernel());
  console.log(
    `vmlinux (${vmlinux.length} bytes) from the ${source === "cache" ? "cache" : "bzImage"}`,
  );
  await bootWithRetries(vmlinux);
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
