/**
 * Boots the machine's Linux kernel (`/boot/vmlinuz*`) with 2 vCPUs and
 * 256 MiB to a tiny busybox initramfs built on the fly, whose `/init` says
 * hello, shows what the guest sees, and reboots. The serial console is
 * printed as it comes.
 *
 * Run: `deno task example:linux` (inside the sandbox when this machine has no
 * /dev/kvm). For an interactive guest, use `deno task boot:linux`.
 *
 * @module
 */

import { LinuxMachine } from "../mod.ts";
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
using machine = LinuxMachine.create({
  kernel: await Deno.readFile(kernelPath),
  initrd: await buildInitramfs({ busybox: await Deno.readFile("/bin/busybox"), init: INIT }),
  cmdline: "console=ttyS0 panic=-1 pci=off acpi=off quiet",
  memorySize: 256 * 1024 * 1024,
  cpus: 2,
  serialOutput: (byte) => Deno.stdout.writeSync(new Uint8Array([byte])),
});
const exit = await machine.run({ timeoutMs: 300_000 });
console.log(
  `\nthe guest ended: ${exit.reason} after ${((performance.now() - started) / 1000).toFixed(1)} s`,
);
Deno.exit(exit.reason === "reset" ? 0 : 1);
