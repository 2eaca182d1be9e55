/**
 * Boot-time comparison: this library's VMM (`examples/boot_linux.ts`) against
 * QEMU with `-accel kvm` and direct `-kernel` boot, same kernel, initramfs,
 * command line, memory and vCPUs. Each is a fresh process; the figures are
 * from spawning it to the init marker on the serial console, and to the
 * process's exit after the guest's reboot.
 *
 * Four ways, alternating in each round:
 * - `deno-kvm`: the bzImage, its kernel decompressed on the host and cached
 *   (the CLI's default; the first boot, which extracts, is reported apart);
 * - `deno-kvm --guest-decompress`: the bzImage, decompressed by the guest;
 * - `qemu bzImage`: QEMU with the same bzImage (the guest decompresses);
 * - `qemu vmlinux (PVH)`: QEMU with the same uncompressed kernel, through its
 *   PVH entry, which also skips the decompressor.
 *
 * Needs /dev/kvm, so it runs in the sandbox with QEMU carried in (a copy
 * made by `--prepare-qemu` into the git-ignored `.cache/qemu-sandbox`):
 *
 * ```
 * deno run -A bench/boot_compare.ts --prepare-qemu
 * deno run -A tools/sandbox/sandbox.ts --include .cache/qemu-sandbox -- deno run -A --no-check bench/boot_compare.ts
 * ```
 *
 * `KVM_BOOT_BENCH_RUNS` (default 3) sets the rounds; each process is killed after 90 s.
 * A script, not a `deno bench` file (it times whole processes), hence not named `*_bench.ts`.
 *
 * @module
 */

import { buildInitramfs } from "../examples/initramfs.ts";
import { cachedVmlinux } from "../src/vmm.ts";

const MARKER = "BOOT-BENCH-INIT";
const INIT = `#!/bin/busybox sh\n/bin/busybox echo ${MARKER}\n/bin/busybox reboot -f\n`;
const CMDLINE = "console=ttyS0 panic=-1 pci=off quiet";
const QEMU_DIR = new URL("../.cache/qemu-sandbox/", import.meta.url).pathname;

async function prepareQemu(): Promise<void> {
  const run = (cmd: string, args: string[]) =>
    new Deno.Command(cmd, { args, stdout: "piped" }).outputSync();
  const qemu = "/usr/bin/qemu-system-x86_64";
  await Deno.remove(QEMU_DIR, { recursive: true }).catch(() => {});
  for (const d of ["bin", "lib", "share"]) await Deno.mkdir(`${QEMU_DIR}${d}`, { recursive: true });
  await Deno.copyFile(qemu, `${QEMU_DIR}bin/qemu-system-x86_64`);
  const ldd = new TextDecoder().decode(run("ldd", [qemu]).stdout);
  for (const m of ldd.matchAll(/(?:=> )?(\/\S+\.so[.\d]*) \(/g)) {
    await Deno.copyFile(await Deno.realPath(m[1]), `${QEMU_DIR}lib/${m[1].split("/").pop()}`);
  }
  for (
    const f of [
      "/usr/share/seabios/bios-256k.bin",
      "/usr/share/qemu/linuxboot_dma.bin",
      "/usr/share/qemu/kvmvapic.bin",
      "/usr/share/qemu/pvh.bin",
    ]
  ) await Deno.copyFile(await Deno.realPath(f), `${QEMU_DIR}share/${f.split("/").pop()}`);
  console.log(`QEMU copied to ${QEMU_DIR}`);
}

interface Timing {
  marker: number;
  exit: number;
  code: number;
}

async function time(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<Timing> {
  const t0 = performance.now();
  const child = new Deno.Command(cmd, {
    args,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // A hung guest must not hang the benchmark.
  const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
  let marker = -1;
  let text = "";
  const decoder = new TextDecoder();
  const stderr = new Response(child.stderr).text();
  for await (const chunk of child.stdout) {
    text += decoder.decode(chunk, { stream: true });
    if (marker < 0 && text.includes(MARKER)) marker = performance.now() - t0;
  }
  const status = await child.status;
  clearTimeout(timer);
  const exit = performance.now() - t0;
  if (marker < 0) console.error(`${cmd}: no marker\n${text.slice(-2000)}\n${await stderr}`);
  return { marker, exit, code: status.code };
}

async function main(): Promise<void> {
  if (Deno.args.includes("--prepare-qemu")) return await prepareQemu();
  const runs = Number(Deno.env.get("KVM_BOOT_BENCH_RUNS") ?? 3);
  const cpus = 2;
  const kernel = Deno.env.get("KVM_LINUX_KERNEL") ?? "/boot/vmlinuz";
  const initrd = await Deno.makeTempFile({ suffix: ".cpio" });
  await Deno.writeFile(
    initrd,
    await buildInitramfs({ busybox: await Deno.readFile("/bin/busybox"), init: INIT }),
  );
  const ours = (...extra: string[]) => [
    "run",
    "-A",
    "--no-check",
    new URL("../examples/boot_linux.ts", import.meta.url).pathname,
    "--kernel",
    kernel,
    "--initrd",
    initrd,
    "--cmdline",
    CMDLINE,
    "--memory",
    "256M",
    "--cpus",
    String(cpus),
    ...extra,
  ];
  const qemu = (kernelFile: string) => [
    "--library-path",
    `${QEMU_DIR}lib`,
    `${QEMU_DIR}bin/qemu-system-x86_64`,
    "-L",
    `${QEMU_DIR}share`,
    "-accel",
    "kvm",
    // QEMU's default CPU model, minus paravirtual EOI: with it, an SMP guest hangs while
    // bringing up its second CPU on the nested KVM of the sandbox (as this library's VMM did;
    // see DEFAULT_HIDDEN_KVM_FEATURES in src/boot/platform.ts).
    "-cpu",
    "qemu64,-kvm-pv-eoi",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-serial",
    "stdio",
    "-no-reboot",
    "-m",
    "256",
    "-smp",
    String(cpus),
    "-kernel",
    kernelFile,
    "-initrd",
    initrd,
    "-append",
    CMDLINE,
  ];
  const show = (name: string, t: Timing) =>
    console.log(
      `${name}: marker ${Math.round(t.marker)} ms, exit ${Math.round(t.exit)} ms, code ${t.code}`,
    );
  const cache = await Deno.makeTempDir();
  const cold = await time(Deno.execPath(), ours(), { DENO_KVM_CACHE: cache });
  show("deno-kvm, first boot of this kernel (host decompression, cold cache)", cold);
  // QEMU's PVH boot gets the same uncompressed kernel, read back from that cache.
  const vmlinuxFile = await Deno.makeTempFile({ suffix: ".elf" });
  const { vmlinux, source } = cachedVmlinux(await Deno.readFile(kernel), {
    directory: `${cache}/kernels`,
  });
  if (source !== "cache") console.error("boot_compare: the first boot did not fill the cache");
  await Deno.writeFile(vmlinuxFile, vmlinux);
  const ways: [string, string, string[], Record<string, string>][] = [
    ["deno-kvm", Deno.execPath(), ours(), { DENO_KVM_CACHE: cache }],
    ["deno-kvm --guest-decompress", Deno.execPath(), ours("--guest-decompress"), {}],
    ["qemu bzImage", `${QEMU_DIR}lib/ld-linux-x86-64.so.2`, qemu(kernel), {}],
    ["qemu vmlinux (PVH)", `${QEMU_DIR}lib/ld-linux-x86-64.so.2`, qemu(vmlinuxFile), {}],
  ];
  const results: Record<string, Timing[]> = Object.fromEntries(ways.map(([n]) => [n, []]));
  for (let i = 0; i < runs; i++) {
    for (const [name, cmd, args, env] of ways) {
      const t = await time(cmd, args, env);
      show(name, t);
      results[name].push(t);
    }
  }
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1];
  for (const [name, ts] of Object.entries(results)) {
    const ok = ts.filter((t) => t.marker >= 0 && t.code === 0);
    const failed = ts.length - ok.length;
    console.log(
      `${name.padEnd(28)} ${ok.length}/${ts.length} booted` +
        (ok.length === 0
          ? ""
          : `; to init marker: median ${Math.round(median(ok.map((t) => t.marker)))} ms (${
            ok.map((t) => Math.round(t.marker)).join(", ")
          }); to exit after reboot: median ${Math.round(median(ok.map((t) => t.exit)))} ms`) +
        (failed ? `; ${failed} hung or failed (killed after 90 s)` : ""),
    );
  }
  await Deno.remove(initrd);
  await Deno.remove(vmlinuxFile);
  await Deno.remove(cache, { recursive: true });
}

if (import.meta.main) await main();
