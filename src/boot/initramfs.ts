/**
 * A tiny initramfs (a newc cpio archive) from a static busybox and an `/init`
 * shell script: enough for a Linux guest to reach a shell, as the `boot:linux`
 * CLI builds when it gets no `--initrd`; and where this host keeps its kernel.
 *
 * @module
 */

import { buildCpio } from "./cpio.ts";

/** An `/init` that mounts the pseudo file systems and runs a shell; `exit` reboots. */
export const SHELL_INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "Welcome: busybox on $(uname -r), $(nproc) CPU(s). 'exit' reboots."
setsid cttyhack sh
reboot -f
`;

/**
 * The host's Linux kernel image: `$KVM_LINUX_KERNEL`, else `/boot/vmlinuz`
 * (as inside the sandbox), else the newest `/boot/vmlinuz-*`; undefined when
 * there is none (install `linux-image-amd64`).
 */
export function hostKernelPath(): string | undefined {
  let fromEnv: string | undefined;
  try {
    fromEnv = Deno.env.get("KVM_LINUX_KERNEL") || undefined;
  } catch {
    // no --allow-env: look in /boot only
  }
  const candidates = [fromEnv, "/boot/vmlinuz"];
  try {
    const versioned = [...Deno.readDirSync("/boot")].map((e) => e.name)
      .filter((name) => name.startsWith("vmlinuz-")).sort().reverse();
    candidates.push(...versioned.map((name) => `/boot/${name}`));
  } catch {
    // no /boot
  }
  for (const path of candidates) {
    if (!path) continue;
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // try the next
    }
  }
  return undefined;
}

/** Options of {@linkcode buildInitramfs}. */
export interface InitramfsOptions {
  /** A statically linked busybox binary, installed as /bin/busybox. */
  busybox: Uint8Array;
  /** The `/init` script (default {@linkcode SHELL_INIT}). */
  init?: string;
}

/**
 * Builds the archive: /bin/busybox, /init (mode 0755), /dev/console (5, 1),
 * and empty /proc, /sys, /tmp.
 *
 * @example
 * ```ts
 * import { buildInitramfs } from "@deno-kvm/kvm/vmm";
 * const initrd = await buildInitramfs({
 *   busybox: await Deno.readFile("/bin/busybox"),
 *   init: "#!/bin/busybox sh\n/bin/busybox echo hello\n/bin/busybox reboot -f\n",
 * });
 * console.log(initrd.length);
 * ```
 */
export async function buildInitramfs(options: InitramfsOptions): Promise<Uint8Array> {
  const init = new TextEncoder().encode(options.init ?? SHELL_INIT);
  return await buildCpio(async (w) => {
    for (const dir of ["bin", "dev", "proc", "sys", "tmp"]) await w.dir(dir);
    await w.charDevice("dev/console", 5, 1);
    await w.file("bin/busybox", options.busybox, 0o755);
    await w.file("init", init, 0o755);
  });
}
