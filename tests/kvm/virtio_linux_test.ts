// Debian's kernel with its root file system on a virtio disk, the devices on
// the default transport, virtio-pci with MSI-X: the initramfs loads
// virtio_pci (and virtio_mmio), virtio_blk, virtio-rng, crc32c and ext4 (the
// kernel finds the functions on PCI bus 0 behind the DSDT's root bridge, its
// /proc/interrupts shows their PCI-MSI vectors), mounts /dev/vda (an ext4
// image made with `mkfs.ext4 -d`) and switches to it; the disk's /init writes
// a note, reads 16 bytes from /dev/hwrng, writes a line to the virtio console
// (/dev/hvc0, drained on the machine's thread), pings the host over a
// virtio-net card on a tap (where the test runs as root) and powers off through ACPI (the VM
// ends with reason "poweroff"). A second boot of the same image reads the
// note back. The fixture is built by tests/kvm/virtio_linux_fixture.ts (on
// the host; the runner carries it into the sandbox as VIRTIO_LINUX_FIXTURE).
//
// A second test boots the same fixture on virtio-mmio (`virtioTransport:
// "mmio"`, with `pci=off`): the kernel finds the devices in the DSDT, none of
// its interrupts is PCI-MSI, and the disk, entropy device, console and
// network card work as above.
//
// Linux boots only where the KVM runs guest code fast enough (guestMips, as
// in linux_boot_test.ts); elsewhere the test skips with the measured rate.
// Measured in the sandbox (nested kvm-amd) on a loaded 2-core host: both
// boots pass, about 160 s each from start to ACPI power-off.

import { match, ok, strictEqual } from "node:assert/strict";
import { hostKernelPath } from "../../src/boot/initramfs.ts";
import { LinuxMachine } from "../../src/boot/linux.ts";
import { cachedVmlinux } from "../../src/boot/vmlinux.ts";
import { LINUX_BOOT_MIN_MIPS } from "../../src/vmm.ts";
import { guestMips, skipWhileRunning } from "./kvm_features.ts";
import {
  buildFixture,
  existingFixture,
  MARK,
  NOTE,
  type VirtioLinuxFixture,
} from "./virtio_linux_fixture.ts";

/** Below this, no boot is tried. */
const HOPELESS_MIPS = 2;
const BOOT_TIMEOUT_MS = Number(Deno.env.get("KVM_LINUX_BOOT_TIMEOUT_S") ?? 240) * 1000;

async function fixture(): Promise<VirtioLinuxFixture | string> {
  const carried = Deno.env.get("VIRTIO_LINUX_FIXTURE");
  if (carried) return existingFixture(carried) ?? `no fixture in ${carried}`;
  // Built before by the fixture script or the runner (the sandbox carries the project's copy).
  const cached = existingFixture(new URL("../../.cache/virtio-linux", import.meta.url).pathname);
  if (cached) return cached;
  return await buildFixture(await Deno.makeTempDir({ prefix: "virtio-linux-" }));
}

/**
 * Where this process may create a tap and give it an address (root, `ip`);
 * loads the fixture's `tun.ko` where `/dev/net/tun` is missing (the sandbox).
 */
function tapSupport(fixtureDir: string): boolean {
  if (Deno.uid() !== 0) return false;
  const exists = (p: string) => {
    try {
      Deno.statSync(p);
      return true;
    } catch {
      return false;
    }
  };
  try {
    if (!exists("/dev/net/tun") && exists(`${fixtureDir}/tun.ko`)) {
      new Deno.Command("insmod", { args: [`${fixtureDir}/tun.ko`], stderr: "null" }).outputSync();
    }
    if (!exists("/dev/net/tun")) return false;
    return new Deno.Command("ip", { args: ["link"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

function ip(...args: string[]): void {
  const r = new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).outputSync();
  if (!r.success) throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
}

/**
 * Boots once with `disk` (and a network card on the tap `tap`, whose host
 * side gets 10.203.1.1); returns the serial console's text and how the run ended.
 */
async function boot(
  kernel: Uint8Array,
  vmlinux: Uint8Array | undefined,
  initrd: Uint8Array,
  disk: string,
  tap?: string,
  /** Undefined: the machine's default (virtio-pci). */
  transport?: "mmio" | "pci",
): Promise<{ text: string; reason: string; detail?: string }> {
  let text = "";
  const decoder = new TextDecoder();
  const verbose = Deno.env.get("KVM_LINUX_VERBOSE") === "1";
  using machine = LinuxMachine.create({
    kernel,
    vmlinux,
    initrd,
    // virtio-mmio needs no PCI bus: pci=off saves the kernel's probe (with PCI it is refused).
    cmdline: `console=ttyS0 panic=-1${transport === "mmio" ? " pci=off" : ""}${
      verbose ? "" : " quiet"
    }`,
    ...(transport ? { virtioTransport: transport } : {}),
    memorySize: 256 * 1024 * 1024,
    // One vCPU: the boot costs the same, and a loaded 2-core CI host runs it sooner.
    cpus: 1,
    disks: [{ path: disk }],
    rng: true,
    // hvc0 as a second console: its output reaches serialOutput too.
    console: "virtio",
    net: tap ? [{ tap }] : undefined,
    serialOutput: (byte) => {
      text += decoder.decode(new Uint8Array([byte]), { stream: true });
      if (verbose) Deno.stdout.writeSync(new Uint8Array([byte]));
    },
  });
  if (tap) {
    // The machine created the tap (it lives while the machine does): the host's side.
    ip("addr", "add", "10.203.1.1/24", "dev", tap);
    ip("link", "set", tap, "up");
  }
  const exit = await machine.run({ timeoutMs: BOOT_TIMEOUT_MS });
  return { text, reason: exit.reason, detail: exit.detail };
}

/** What both tests boot: the host's kernel, the fixture, and a copy of its disk image to boot from. */
interface Prepared {
  mips: number;
  /** Why a timed-out boot on a KVM below LINUX_BOOT_MIN_MIPS is a skip. */
  slow: string;
  fixture: VirtioLinuxFixture;
  kernel: Uint8Array;
  vmlinux: Uint8Array | undefined;
  initrd: Uint8Array;
  /** A temporary copy of the fixture's root image; the caller removes it. */
  disk: string;
}

/**
 * Reads the kernel and the fixture and copies the disk image, or says (as a
 * skip) why this KVM or host cannot boot the guest. A KVM that emulates
 * every instruction (kvm_pvm, about 1 MIPS) would take an hour: skipped at
 * once. Between that and LINUX_BOOT_MIN_MIPS a boot is tried, and a timeout
 * skips.
 */
async function prepare(t: Deno.TestContext): Promise<Prepared | undefined> {
  const skip = (why: string) => void skipWhileRunning(t, why);
  const mips = guestMips();
  const slow = `this KVM runs guest code at ${mips.toFixed(1)} million instructions/s ` +
    `(a Linux boot needs about ${LINUX_BOOT_MIN_MIPS}; README "Booting on a software KVM")`;
  if (mips < HOPELESS_MIPS) return skip(slow);
  const kernelPath = hostKernelPath();
  if (!kernelPath) return skip("no kernel image (install linux-image-amd64)");
  const f = await fixture();
  if (typeof f === "string") return skip(`no virtio Linux fixture: ${f}`);
  const kernel = await Deno.readFile(kernelPath);
  // The host decompresses the kernel (the guest skips its decompressor).
  const { vmlinux } = cachedVmlinux(kernel);
  const initrd = await Deno.readFile(f.initrd);
  const disk = await Deno.makeTempFile({ suffix: ".ext4" });
  try {
    await Deno.copyFile(f.rootfs, disk);
  } catch (e) {
    await Deno.remove(disk);
    throw e;
  }
  return { mips, slow, fixture: f, kernel, vmlinux, initrd, disk };
}

/** A tap for the guest's card where this process may make one (named `prefix` + pid), else undefined. */
function testTap(f: VirtioLinuxFixture, prefix: string): string | undefined {
  const tap = tapSupport(f.initrd.replace(/\/[^/]*$/, ""))
    ? `${prefix}${Deno.pid % 100000}`
    : undefined;
  if (!tap) console.log("no tap (needs root and the ip command): the ping is left out");
  return tap;
}

/** How many of the guest's /proc/interrupts lines are virtio MSI-X vectors (the fixture's count). */
function msiVectors(text: string): number {
  return Number(new RegExp(`${MARK.msi} (\\d+)`).exec(text)?.[1] ?? -1);
}

/** The guest's virtio and PCI lines (interrupts, root bus, functions), for the log. */
function logPciLines(text: string): void {
  console.log(
    text.split("\n").filter((l) => /PCI-MSI.*virtio|PCI0|pci.*1af4|root bus|type 1/.test(l))
      .join("\n"),
  );
}

Deno.test("Linux on a virtio disk, virtio-pci with MSI-X by default: root on ext4 over virtio-blk, a write survives a reboot, virtio-rng answers, PCI-MSI vectors, ACPI power-off", async (t) => {
  const prepared = await prepare(t);
  if (!prepared) return;
  const { mips, slow, fixture: f, kernel, vmlinux, initrd, disk } = prepared;
  try {
    const show = (r: { text: string }) =>
      `serial console (last 4000 characters):\n${r.text.slice(-4000)}`;

    const tap = testTap(f, "dkvm");
    // The sandbox's emulated SVM now and then delivered an interrupt while the guest's IF was 0
    // (README, "The sandbox's stalls were its emulator's"; its QEMU now runs with a fix): as in
    // linux_boot_test, a boot that crashed (a panic, or a timeout on a KVM fast enough to boot)
    // is tried again (the first on a fresh copy of the image), at most three times.
    const crashed = (r: { text: string; reason: string }) =>
      r.text.includes("Kernel panic") || (r.reason === "timeout" && mips >= LINUX_BOOT_MIN_MIPS);
    // No transport given: the machine's default, virtio-pci (and no pci=off on the command line).
    let first = await boot(kernel, vmlinux, initrd, disk, tap);
    for (let attempt = 2; attempt <= 3 && crashed(first); attempt++) {
      console.log(`the guest crashed or stalled (attempt ${attempt - 1}); booting again`);
      await Deno.copyFile(f.rootfs, disk);
      first = await boot(kernel, vmlinux, initrd, disk, tap);
    }
    if (first.reason === "timeout" && mips < LINUX_BOOT_MIN_MIPS) {
      return skipWhileRunning(t, `the boot timed out after ${BOOT_TIMEOUT_MS / 1000} s: ${slow}`);
    }
    try {
      ok(first.text.includes(MARK.modules), "the initramfs loaded the modules");
      match(first.text, new RegExp(`${MARK.root} /dev/vda / ext4`), "/ is ext4 on /dev/vda");
      ok(first.text.includes(MARK.wrote), "the first boot wrote its note");
      match(
        first.text,
        new RegExp(`${MARK.rng} virtio_rng\\.\\d+ [0-9a-f]{32}`),
        "virtio-rng gave 16 bytes",
      );
      ok(first.text.includes(MARK.hvc0), "a line written to /dev/hvc0 reached the host");
      // A vector for configuration changes and one per queue: disk, rng, console (+ net).
      const msi = msiVectors(first.text);
      ok(msi >= 6, `virtio MSI-X vectors in /proc/interrupts: ${msi}`);
      logPciLines(first.text);
      if (tap) {
        match(first.text, new RegExp(`${MARK.ping} 3 packets transmitted, 3 packets received`));
      }
      ok(first.text.includes(MARK.done), "init ran to its end");
      strictEqual(
        first.reason,
        "poweroff",
        `powered off through ACPI (got ${first.reason}: ${first.detail})`,
      );
    } catch (e) {
      console.log(show(first));
      throw e;
    }

    let second = await boot(kernel, vmlinux, initrd, disk);
    for (let attempt = 2; attempt <= 3 && crashed(second); attempt++) {
      console.log(
        `the guest crashed or stalled on the second boot (attempt ${attempt - 1}); booting again`,
      );
      second = await boot(kernel, vmlinux, initrd, disk);
    }
    try {
      ok(second.text.includes(`${MARK.readBack} ${NOTE}`), "the second boot read the note back");
      strictEqual(second.reason, "poweroff");
    } catch (e) {
      console.log(show(second));
      throw e;
    }
  } finally {
    await Deno.remove(disk);
  }
});

Deno.test('Linux on virtio-mmio (virtioTransport "mmio", pci=off): the devices found in the DSDT, no PCI-MSI, disk, rng, console and network work', async (t) => {
  const prepared = await prepare(t);
  if (!prepared) return;
  const { mips, slow, fixture: f, kernel, vmlinux, initrd, disk } = prepared;
  try {
    const tap = testTap(f, "dkvp");
    // As above: a crashed or stalled boot in the sandbox is tried again, at most three times.
    const crashed = (r: { text: string; reason: string }) =>
      r.text.includes("Kernel panic") || (r.reason === "timeout" && mips >= LINUX_BOOT_MIN_MIPS);
    let run = await boot(kernel, vmlinux, initrd, disk, tap, "mmio");
    for (let attempt = 2; attempt <= 3 && crashed(run); attempt++) {
      console.log(`the guest crashed or stalled (attempt ${attempt - 1}); booting again`);
      await Deno.copyFile(f.rootfs, disk);
      run = await boot(kernel, vmlinux, initrd, disk, tap, "mmio");
    }
    if (run.reason === "timeout" && mips < LINUX_BOOT_MIN_MIPS) {
      return skipWhileRunning(t, `the boot timed out after ${BOOT_TIMEOUT_MS / 1000} s: ${slow}`);
    }
    try {
      ok(run.text.includes(MARK.modules), "the initramfs loaded the modules");
      match(run.text, new RegExp(`${MARK.root} /dev/vda / ext4`), "/ is ext4 on /dev/vda");
      ok(run.text.includes(MARK.wrote), "the boot wrote its note");
      match(
        run.text,
        new RegExp(`${MARK.rng} virtio_rng\\.\\d+ [0-9a-f]{32}`),
        "virtio-rng gave 16 bytes",
      );
      ok(run.text.includes(MARK.hvc0), "a line written to /dev/hvc0 reached the host");
      // pci=off: the devices are the DSDT's virtio-mmio windows, their interrupts IOAPIC inputs.
      strictEqual(msiVectors(run.text), 0, "no virtio MSI-X vector in /proc/interrupts");
      if (tap) {
        match(run.text, new RegExp(`${MARK.ping} 3 packets transmitted, 3 packets received`));
      }
      ok(run.text.includes(MARK.done), "init ran to its end");
      strictEqual(
        run.reason,
        "poweroff",
        `powered off through ACPI (got ${run.reason}: ${run.detail})`,
      );
    } catch (e) {
      console.log(`serial console (last 4000 characters):\n${run.text.slice(-4000)}`);
      throw e;
    }
  } finally {
    await Deno.remove(disk);
  }
});
