/**
 * Boots the machine's Linux kernel (`/boot/vmlinuz*`) with 2 vCPUs and
 * 256 MiB to a tiny busybox initramfs built on the fly, whose `/init` says
 * hello, shows what the guest sees, and reboots. The serial console is
 * printed as it comes. An xz bzImage is decompressed on the host (cached) and
 * entered directly, as `boot:linux` does. On a KVM that emulates kernel code
 * (kvm_pvm) the boot takes minutes: the run is bounded by
 * `LINUX_DEMO_TIMEOUT_S` (default 1800 s).
 *
 * Run: `deno task example:linux` (inside the sandbox when this machine has no
 * /dev/kvm). For an interactive guest, use `deno task boot:linux`.
 *
 * @module
 */

import { bzImagePayload, cachedVmlinux, LinuxMachine } from "../mod.ts";
import { buildInitramfs, hostKernelPath } from "./initramfs.ts";

// deno-fmt-ignore
const INIT = [
  "#!/bin/busybox sh",
  "/bin/busybox mount -t proc proc /proc",
  "/bin/busybox echo",
  "/bin/busybox echo \"Hello from Linux $(/bin/busybox uname -r), booted by a TypeScript VMM\"",
  "/bin/busybox echo \"CPUs: $(/bin/busybox nproc)\"",
  "/bin/busybox grep -E 'MemTotal|model name' /proc/meminfo /proc/cpuinfo",
  "/bin/busybox reboot -f",
].join("\n") + "\n";

const kernelPath = hostKernelPath();
if (!kernelPath) throw new Error("no kernel found at /boot/vmlinuz*: install linux-image-amd64");
console.log(`booting ${kernelPath} with 2 vCPUs and 256 MiB...`);
const started = performance.now();
const kernel = await Deno.readFile(kernelPath);
const found = bzImagePayload(kernel).format === "xz" ? cachedVmlinux(kernel) : undefined;
using machine = LinuxMachine.create({
  kernel,
  vmlinux: found?.vmlinux,
  initrd: await buildInitramfs({ busybox: await Deno.readFile("/bin/busybox"), init: INIT }),
  cmdline: "console=ttyS0 panic=-1 pci=off acpi=off quiet",
  memorySize: 256 * 1024 * 1024,
  cpus: 2,
  serialOutput: (byte) => Deno.stdout.writeSync(new Uint8Array([byte])),
});
const hidden = machine.cpuProbe?.unusable ?? [];
if (hidden.length) {
  console.log(`hidden from the guest (this KVM cannot run them): ${hidden.join(", ")}`);
}
const exit = await machine.run({
  timeoutMs: Number(Deno.env.get("LINUX_DEMO_TIMEOUT_S") ?? 1800) * 1000,
});
console.log(
  `\nthe guest ended: ${exit.reason} after ${((performance.now() - started) / 1000).toFixed(1)} s`,
);
Deno.exit(exit.reason === "reset" ? 0 : 1);
