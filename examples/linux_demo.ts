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

import {
  buildInitramfs,
  bzImagePayload,
  cachedVmlinux,
  hostKernelPath,
  LinuxMachine,
} from "@deno-kvm/kvm/vmm";

function seconds(since: number): string {
  return ((performance.now() - since) / 1000).toFixed(1);
}

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
if (!kernelPath) {
  console.error(
    "linux_demo: no kernel at /boot/vmlinuz*: install one (sudo apt-get install linux-image-amd64)" +
      " or name it in KVM_LINUX_KERNEL",
  );
  Deno.exit(2);
}
let busybox: Uint8Array;
try {
  busybox = await Deno.readFile("/bin/busybox");
} catch {
  console.error("linux_demo: no /bin/busybox: sudo apt-get install busybox-static");
  Deno.exit(2);
}
console.log(`booting ${kernelPath} with 2 vCPUs and 256 MiB...`);
const started = performance.now();
const kernel = await Deno.readFile(kernelPath);
let found;
if (bzImagePayload(kernel).format === "xz") {
  console.log("preparing the kernel: decompressed on the host once, then cached...");
  found = cachedVmlinux(kernel);
  console.log(`kernel ready (${found.source}) after ${seconds(started)} s; starting the VM...`);
}
using machine = LinuxMachine.create({
  kernel,
  vmlinux: found?.vmlinux,
  initrd: await buildInitramfs({ busybox, init: INIT }),
  cmdline: "console=ttyS0 panic=-1 pci=off acpi=off quiet",
  memorySize: 256 * 1024 * 1024,
  cpus: 2,
  serialOutput: (byte) => Deno.stdout.writeSync(new Uint8Array([byte])),
});
const hidden = machine.cpuProbe?.unusable ?? [];
if (hidden.length) {
  console.log(`hidden from the guest (this KVM cannot run them): ${hidden.join(", ")}`);
}
console.log(`VM ready after ${seconds(started)} s; the guest's console follows.`);
const exit = await machine.run({
  timeoutMs: Number(Deno.env.get("LINUX_DEMO_TIMEOUT_S") ?? 1800) * 1000,
});
console.log(`\nthe guest ended: ${exit.reason} after ${seconds(started)} s`);
Deno.exit(exit.reason === "reset" ? 0 : 1);
