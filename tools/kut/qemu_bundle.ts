/**
 * A self-contained copy of this machine's QEMU for the sandbox guest, which
 * has no QEMU of its own: the `qemu-system-x86_64` binary, every shared
 * library `ldd` names (the dynamic loader included) and the firmware a
 * `-kernel` boot loads (SeaBIOS, the Multiboot and Linux option ROMs, the
 * VAPIC ROM), in one directory:
 *
 * ```
 * DIR/bin/qemu-system-x86_64   DIR/lib/*.so*   DIR/share/*.bin
 * ```
 *
 * `deno task kut --qemu DIR` runs QEMU through the bundle's loader
 * (`DIR/lib/ld-linux-x86-64.so.2 --library-path DIR/lib DIR/bin/... -L DIR/share`),
 * so the same QEMU runs on the host and in the guest, on the guest's KVM.
 *
 * ```sh
 * deno run -A tools/kut/qemu_bundle.ts .cache/kut/qemu   # build it
 * ```
 *
 * Dev tooling, not part of the published package.
 *
 * @module
 */

/** The firmware files a `-kernel` boot with `-nodefaults` opens, and where Debian keeps them. */
const FIRMWARE: [string, string[]][] = [
  ["bios-256k.bin", ["/usr/share/seabios", "/usr/share/qemu"]],
  ["kvmvapic.bin", ["/usr/share/qemu"]],
  ["linuxboot_dma.bin", ["/usr/share/qemu"]],
  ["linuxboot.bin", ["/usr/share/qemu"]],
  ["multiboot_dma.bin", ["/usr/share/qemu"]],
  ["multiboot.bin", ["/usr/share/qemu"]],
];

async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** What {@linkcode directBootCommand} boots. */
export interface DirectBoot {
  kernel: string;
  initrd: string;
  cmdline: string;
  memoryMiB: number;
  cpus: number;
  /** QEMU's `-cpu` (default `qemu64,-kvm-pv-eoi`, see {@linkcode directBootCommand}). */
  cpu?: string;
}

/**
 * The bundle's QEMU booting `boot.kernel` directly (`-kernel`) on the
 * sandbox's nested KVM with its serial console on stdout: the QEMU side of
 * the benchmarks' comparisons (add device options after it). QEMU's default
 * CPU model minus paravirtual EOI: with it, an SMP guest hangs while bringing
 * up its second CPU on that nested KVM (as this library's VMM did; see
 * DEFAULT_HIDDEN_KVM_FEATURES in src/boot/platform.ts).
 */
export function directBootCommand(dir: string, boot: DirectBoot): string[] {
  return [
    ...bundleCommand(dir),
    "-accel",
    "kvm",
    "-cpu",
    boot.cpu ?? "qemu64,-kvm-pv-eoi",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-serial",
    "stdio",
    "-no-reboot",
    "-m",
    String(boot.memoryMiB),
    "-smp",
    String(boot.cpus),
    "-kernel",
    boot.kernel,
    "-initrd",
    boot.initrd,
    "-append",
    boot.cmdline,
  ];
}

/**
 * `DENO_KVM_LIBLZMA` naming the bundle's copy of liblzma (QEMU links it), for
 * a sandbox image without one, unless the variable is set already or the
 * bundle has none: the library's VMM then decodes kernels as on a Debian host.
 */
export function carriedLiblzmaEnv(dir: string): Record<string, string> {
  const carried = `${dir}/lib/liblzma.so.5`;
  try {
    if (!Deno.env.get("DENO_KVM_LIBLZMA") && Deno.statSync(carried).isFile) {
      return { DENO_KVM_LIBLZMA: carried };
    }
  } catch {
    // Not carried in: the system's liblzma, or the TypeScript decoder.
  }
  return {};
}

/** The command line prefix that runs the bundle in `dir`'s QEMU. */
export function bundleCommand(dir: string): string[] {
  return [
    `${dir}/lib/ld-linux-x86-64.so.2`,
    "--library-path",
    `${dir}/lib`,
    `${dir}/bin/qemu-system-x86_64`,
    "-L",
    `${dir}/share`,
  ];
}

/**
 * Builds the bundle into `dir` (replacing what is there) from the
 * `qemu-system-x86_64` on PATH. Throws with the reason when a part is
 * missing.
 */
export async function buildQemuBundle(dir: string): Promise<void> {
  const binary = (await run("sh", ["-c", "command -v qemu-system-x86_64"])).trim();
  if (!binary) throw new Error("no qemu-system-x86_64 on PATH");
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  for (const sub of ["bin", "lib", "share"]) await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
  await Deno.copyFile(binary, `${dir}/bin/qemu-system-x86_64`);
  for (const line of (await run("ldd", [binary])).split("\n")) {
    // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
    const path = /=>\s*(\/\S+)/.exec(line)?.[1] ?? /^\s*(\/\S+)/.exec(line)?.[1];
    if (!path) continue;
    const name = path.slice(path.lastIndexOf("/") + 1);
    await Deno.copyFile(await Deno.realPath(path), `${dir}/lib/${name}`);
  }
  for (const [name, places] of FIRMWARE) {
    let found = false;
    for (const place of places) {
      try {
        await Deno.copyFile(await Deno.realPath(`${place}/${name}`), `${dir}/share/${name}`);
        found = true;
        break;
      } catch { /* try the next place */ }
    }
    if (!found) throw new Error(`QEMU firmware ${name} not found in ${places.join(", ")}`);
  }
}

if (import.meta.main) {
  const dir = Deno.args[0];
  if (!dir) {
    console.error("usage: qemu_bundle.ts DIR");
    Deno.exit(2);
  }
  await buildQemuBundle(dir);
  console.log(`QEMU bundle in ${dir}: ${bundleCommand(dir).join(" ")}`);
}
