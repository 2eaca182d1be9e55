// What tests/kvm/virtio_linux_test.ts boots with the host's kernel: an initramfs
// that loads the virtio (virtio-mmio and virtio-pci) and ext4 modules from the kernel's own modules
// directory and switches to the root on /dev/vda, and an ext4 root image
// made with `mkfs.ext4 -d` from a busybox tree. Built on a host that has the
// modules and e2fsprogs; the sandbox guest has neither, so the test runner
// builds it on the host and carries the directory in
// (`VIRTIO_LINUX_FIXTURE`).
//
// `deno run -A tests/kvm/virtio_linux_fixture.ts [DIR]` builds it alone.

import { buildCpio } from "../../src/boot/cpio.ts";
import { hostKernelPath } from "../../src/boot/initramfs.ts";
import { moduleLoadOrder } from "../../tools/sandbox/host.ts";
import { readModule } from "../../tools/sandbox/initramfs.ts";

/** Marks printed by the guest, in order. */
export const MARK = {
  modules: "VIRTIO-FIXTURE-MODULES-LOADED",
  root: "VIRTIO-FIXTURE-ROOT-ON-DISK",
  wrote: "VIRTIO-FIXTURE-WROTE",
  readBack: "VIRTIO-FIXTURE-READ-BACK:",
  rng: "VIRTIO-FIXTURE-RNG:",
  hvc0: "VIRTIO-FIXTURE-HVC0",
  ping: "VIRTIO-FIXTURE-PING:",
  msi: "VIRTIO-FIXTURE-MSI:",
  done: "VIRTIO-FIXTURE-DONE",
} as const;

/** The note the first boot writes and the second reads back. */
export const NOTE = "written-on-virtio-blk-by-boot-1";

/** Modules to load, each after its dependencies (modules.dep), the crc32c softdep included. */
const TARGETS = [
  "virtio_mmio",
  "virtio_pci",
  "virtio_blk",
  "virtio-rng",
  "virtio_console",
  "virtio_net",
  "crc32c_generic",
  "ext4",
];

// deno-fmt-ignore
const INITRAMFS_INIT = [
  "#!/bin/busybox sh",
  "/bin/busybox --install -s /bin",
  "mount -t proc proc /proc",
  "mount -t devtmpfs devtmpfs /dev",
  "for m in /modules/*.ko; do insmod $m || echo \"insmod $m failed\"; done",
  `echo ${MARK.modules}`,
  "i=0; while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done", // probing is async
  "mkdir -p /newroot",
  "mount -t ext4 /dev/vda /newroot || { echo MOUNT-FAILED; cat /proc/partitions; dmesg | grep -iE 'pci|virtio|acpi|msi' | tail -80; poweroff -f; }",
  "umount /proc; umount /dev",
  "exec switch_root /newroot /init",
].join("\n") + "\n";

// deno-fmt-ignore
const ROOT_INIT = [
  "#!/bin/busybox sh",
  "/bin/busybox --install -s /bin",
  "mount -t proc proc /proc",
  "mount -t sysfs sysfs /sys",
  "mount -t devtmpfs devtmpfs /dev",
  `echo ${MARK.root} $(grep ' / ' /proc/mounts)`,
  "if [ -f /data/note ]; then",
  `  echo "${MARK.readBack} $(cat /data/note)"`,
  "else",
  `  mkdir -p /data && echo ${NOTE} > /data/note && sync && echo ${MARK.wrote}`,
  "fi",
  `echo "${MARK.rng} $(cat /sys/class/misc/hw_random/rng_current) $(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' ')"`,
  "i=0; while [ ! -c /dev/hvc0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done",
  `echo ${MARK.hvc0} > /dev/hvc0`,
  // With a network card (eth0): the host's side of the tap is 10.203.1.1.
  "if [ -e /sys/class/net/eth0 ]; then",
  "  ip addr add 10.203.1.2/24 dev eth0 && ip link set eth0 up",
  `  echo "${MARK.ping} $(ping -c 3 -W 5 10.203.1.1 | grep 'packet loss')"`,
  "fi",
  // virtio-pci's interrupts: how many of /proc/interrupts' lines are virtio MSI-X vectors.
  `echo "${MARK.msi} $(grep -c 'PCI-MSI.*virtio' /proc/interrupts)"`,
  "grep virtio /proc/interrupts",
  // With virtio-pci: how the kernel found the root bridge and the functions (nothing with pci=off).
  "dmesg | grep -E 'PCI0|PCI host bridge|root bus resource|Using configuration type|1af4:10' | head -20",
  "mount -o remount,ro / ; sync",
  `echo ${MARK.done}`,
  "poweroff -f",
].join("\n") + "\n";

/** The fixture's files. */
export interface VirtioLinuxFixture {
  /** The initramfs (modules + init). */
  initrd: string;
  /** The pristine root image; boot a copy. */
  rootfs: string;
}

function firstBusybox(): string {
  for (const p of [Deno.env.get("KVM_BUSYBOX"), "/bin/busybox", "/usr/bin/busybox"]) {
    if (p && Deno.statSync(p).isFile) return p;
  }
  throw new Error("no busybox");
}

/** The fixture in `dir` when it was built there (or carried in), else undefined. */
export function existingFixture(dir: string): VirtioLinuxFixture | undefined {
  const f = { initrd: `${dir}/initrd.cpio`, rootfs: `${dir}/rootfs.ext4` };
  try {
    for (const p of Object.values(f)) Deno.statSync(p);
    return f;
  } catch {
    return undefined;
  }
}

/**
 * Builds the fixture into `dir`, or returns why it cannot be built here
 * (no kernel, no modules directory, no mkfs.ext4).
 */
export async function buildFixture(dir: string): Promise<VirtioLinuxFixture | string> {
  const kernel = hostKernelPath();
  if (!kernel) return "no kernel image (install linux-image-amd64)";
  const version = (await Deno.realPath(kernel)).split("/").pop()!.replace(/^vmlinuz-/, "");
  const modulesDir = `/lib/modules/${version}`;
  let dep: string;
  try {
    dep = await Deno.readTextFile(`${modulesDir}/modules.dep`);
  } catch {
    return `no ${modulesDir}/modules.dep for the kernel ${kernel}`;
  }
  const order: string[] = [];
  for (const t of TARGETS) {
    const o = moduleLoadOrder(dep, t);
    if (!o) return `${modulesDir} has no ${t} module`;
    for (const p of o) if (!order.includes(p)) order.push(p);
  }
  const busybox = await Deno.readFile(firstBusybox());
  await Deno.mkdir(dir, { recursive: true });
  const initrd = await buildCpio(async (w) => {
    for (const d of ["bin", "dev", "proc", "sys", "modules", "newroot"]) await w.dir(d);
    await w.charDevice("dev/console", 5, 1);
    await w.file("bin/busybox", busybox, 0o755);
    await w.file("init", new TextEncoder().encode(INITRAMFS_INIT), 0o755);
    for (const [i, p] of order.entries()) {
      const name = `${String(i).padStart(2, "0")}-${
        p.split("/").pop()!.replace(/\.ko(\.\w+)?$/, "")
      }.ko`;
      await w.file(`modules/${name}`, await readModule(`${modulesDir}/${p}`), 0o644);
    }
  });
  // The root tree for mkfs.ext4 -d.
  const tree = await Deno.makeTempDir({ prefix: "virtio-rootfs-" });
  try {
    for (const d of ["bin", "dev", "proc", "sys", "tmp"]) await Deno.mkdir(`${tree}/${d}`);
    await Deno.writeFile(`${tree}/bin/busybox`, busybox, { mode: 0o755 });
    await Deno.writeTextFile(`${tree}/init`, ROOT_INIT, { mode: 0o755 });
    await Deno.chmod(`${tree}/init`, 0o755);
    await Deno.chmod(`${tree}/bin/busybox`, 0o755);
    const image = `${dir}/rootfs.ext4`;
    await Deno.remove(image).catch(() => {});
    let mkfs;
    try {
      mkfs = await new Deno.Command("mkfs.ext4", {
        args: ["-q", "-F", "-L", "root", "-d", tree, image, "16M"],
        stdout: "piped",
        stderr: "piped",
      }).output();
    } catch {
      return "mkfs.ext4 is not installed (e2fsprogs)";
    }
    if (!mkfs.success) return `mkfs.ext4 failed: ${new TextDecoder().decode(mkfs.stderr)}`;
  } finally {
    await Deno.remove(tree, { recursive: true });
  }
  await Deno.writeFile(`${dir}/initrd.cpio`, initrd);
  // For the host side of the network test where /dev/net/tun needs its module (the sandbox).
  const tun = moduleLoadOrder(dep, "tun");
  if (tun) await Deno.writeFile(`${dir}/tun.ko`, await readModule(`${modulesDir}/${tun.at(-1)}`));
  await Deno.writeTextFile(`${dir}/kernel-version`, `${version}\n`);
  return existingFixture(dir)!;
}

if (import.meta.main) {
  const dir = Deno.args[0] ?? ".cache/virtio-linux";
  const f = await buildFixture(dir);
  console.log(typeof f === "string" ? `cannot build: ${f}` : f);
}
