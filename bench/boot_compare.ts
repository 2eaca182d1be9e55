/**
 * Boot-time comparison: this library's VMM (`examples/boot_linux.ts`, the
 * boot CLI) against QEMU with `-accel kvm` and direct `-kernel` boot, same
 * kernel, initramfs, command line, memory and vCPUs. Each is a fresh process;
 * the figures are from spawning it to the init marker on the serial console,
 * and to the process's exit after the guest's reboot.
 *
 * The ways, interleaved in each round (issue 17: the first boot of a kernel
 * against QEMU, and a later one):
 * - `deno-kvm first boot`: an empty kernel cache (a new `DENO_KVM_CACHE` each
 *   round), so the bzImage's kernel is decompressed on the host (liblzma,
 *   while the VMM probes the KVM) and cached;
 * - `deno-kvm later boot`: the cache warm, the kernel read back;
 * - `qemu bzImage`: QEMU with the same bzImage (the guest decompresses).
 * With `KVM_BOOT_BENCH_ALL=1` also `deno-kvm --guest-decompress` (the guest
 * decompresses) and `qemu vmlinux (PVH)` (QEMU with the uncompressed kernel).
 *
 * The VMM runs with `--trace`: the median time at which each phase ended is
 * printed after the table (where the seconds go), and the ratios to QEMU of
 * the medians and of each round.
 *
 * Needs /dev/kvm, so it runs in the sandbox with QEMU carried in (a copy
 * made by `--prepare-qemu` into the git-ignored `.cache/qemu-sandbox`):
 *
 * ```
 * deno run -A bench/boot_compare.ts --prepare-qemu
 * deno run -A tools/sandbox/sandbox.ts --include .cache/qemu-sandbox -- deno run -A --no-check bench/boot_compare.ts
 * ```
 *
 * `KVM_BOOT_BENCH_RUNS` (default 3) sets the rounds; each process is killed after
 * `KVM_BOOT_BENCH_KILL_S` (default 90) seconds. `KVM_BOOT_BENCH_BASELINE=DIR`
 * adds the first and later boot of another checkout of this repository (a
 * `git worktree` of an older commit with its shim built, carried into the
 * sandbox with `--include`), run from DIR with a cache of its own: before and
 * after figures from the same run.
 * A script, not a `deno bench` file (it times whole processes), hence not named `*_bench.ts`.
 *
 * @module
 */

import { buildInitramfs } from "../examples/initramfs.ts";
import { hostKernelPath } from "../src/boot/initramfs.ts";
import { bundleCommand, carriedLiblzmaEnv, directBootCommand } from "../tools/kut/qemu_bundle.ts";
import { cachedVmlinux } from "../src/vmm.ts";

const MARKER = "BOOT-BENCH-INIT";
/** After the marker: the guest kernel's own clock (`/proc/uptime`), for the kernel's share. */
const UPTIME = "BOOT-BENCH-UPTIME";
const INIT = `#!/bin/busybox sh
/bin/busybox echo ${MARKER}
/bin/busybox mount -t proc proc /proc
/bin/busybox echo ${UPTIME} $(/bin/busybox cat /proc/uptime)
/bin/busybox reboot -f
`;
const CMDLINE = "console=ttyS0 panic=-1 pci=off quiet";
const QEMU_DIR = new URL("../.cache/qemu-sandbox/", import.meta.url).pathname;
/** The same directory as `tools/kut/qemu_bundle.ts` names it (no trailing slash). */
const QEMU_BUNDLE = QEMU_DIR.replace(/\/$/, "");
/** Seconds after which a boot counts as hung and is killed. */
const KILL_S = Number(Deno.env.get("KVM_BOOT_BENCH_KILL_S") ?? 90);

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
  /** Spawn to the init marker on stdout, ms (-1: never). */
  marker: number;
  /** Spawn to the first byte on stdout, ms (-1: never). */
  firstByte: number;
  /** Spawn to the process's exit, ms. */
  exit: number;
  /**
   * The guest's `/proc/uptime` just after the marker, ms (-1: none): the time
   * since the kernel's clock started early in its start-up (after any
   * decompressor: setup_arch's kvmclock), a bound on the guest kernel's own
   * share of `marker`, whichever VMM runs it.
   */
  uptime: number;
  code: number;
  /** `--trace` phases: what ended (durations left out), at ms since the CLI's clock started. */
  phases: [string, number][];
  /** The `--trace` lines as printed. */
  trace: string[];
  /**
   * Spawn to the CLI's clock origin (`performance.timeOrigin`, which its
   * `--trace` prints), ms: the process's start before its runtime's clock
   * starts. Undefined for other programs and older CLIs.
   */
  origin?: number;
}

async function time(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
  cwd?: string,
  expectMarker = true,
): Promise<Timing> {
  const t0 = performance.now();
  const spawnedAt = performance.timeOrigin + t0; // ms after the epoch
  const child = new Deno.Command(cmd, {
    args,
    env,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // A hung guest must not hang the benchmark.
  const timer = setTimeout(() => child.kill("SIGKILL"), KILL_S * 1000);
  let marker = -1;
  let firstByte = -1;
  let text = "";
  const decoder = new TextDecoder();
  const stderr = new Response(child.stderr).text();
  for await (const chunk of child.stdout) {
    if (firstByte < 0) firstByte = performance.now() - t0;
    text += decoder.decode(chunk, { stream: true });
    if (marker < 0 && text.includes(MARKER)) marker = performance.now() - t0;
  }
  const status = await child.status;
  clearTimeout(timer);
  const exit = performance.now() - t0;
  const errors = await stderr;
  if (marker < 0 && expectMarker) {
    console.error(`${cmd}: no marker\n${text.slice(-2000)}\n${errors}`);
  }
  const up = new RegExp(`${UPTIME} (\\d+\\.\\d+)`).exec(text);
  const uptime = up ? Number(up[1]) * 1000 : -1;
  // boot_linux --trace: "boot_linux: 1234 ms what ended"
  const lines = [...errors.matchAll(/^boot_linux: (\d+) ms (.*)$/gm)];
  const phases = lines.map((
    m,
  ): [string, number] => [m[2].replace(/\(\d+ ms[^)]*\)|\d+ ms/g, "").trim(), +m[1]]);
  const trace = lines.map((m) => `${m[1]} ${m[2]}`);
  const clock = /^boot_linux: clock origin (\d+(?:\.\d+)?) ms after the epoch$/m.exec(errors);
  const origin = clock ? Number(clock[1]) - spawnedAt : undefined;
  return { marker, firstByte, exit, uptime, code: status.code, phases, trace, origin };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** The median time of each `--trace` phase over the boots that reached the marker. */
function phaseMedians(ts: Timing[]): string {
  const names: string[] = [];
  for (const t of ts) for (const [name] of t.phases) if (!names.includes(name)) names.push(name);
  return names.map((name) => {
    const at = ts.map((t) => t.phases.find(([n]) => n === name)?.[1]).filter((x) =>
      x !== undefined
    );
    return `    ${String(Math.round(median(at as number[]))).padStart(6)} ms  ${name}` +
      (at.length < ts.length ? ` (${at.length} of ${ts.length})` : "");
  }).join("\n");
}

/**
 * Where the limit lies (issue 17): for each boot, the guest kernel's own time
 * (its `/proc/uptime` after the marker) and what came before the kernel's
 * clock started (process start, the VMM's set-up, firmware, decompressor:
 * the marker's time less the uptime); Deno's start-up; and the best ratio
 * any Deno VMM could reach: an empty `deno run` plus the kernel's time in
 * this VMM, over QEMU's whole boot (by the medians, and round by round).
 */
function evidence(results: Record<string, Timing[]>, startups: Record<string, Timing[]>): void {
  console.log(
    "\nwhere the time goes (medians, ms): to marker = before the kernel's clock + uptime",
  );
  for (const [name, ts] of Object.entries(results)) {
    const ok = ts.filter((t) => t.marker >= 0 && t.uptime >= 0);
    if (ok.length === 0) continue;
    const m = median(ok.map((t) => t.marker));
    const u = median(ok.map((t) => t.uptime));
    const before = median(ok.map((t) => t.marker - t.uptime));
    console.log(
      `${name.padEnd(28)} marker ${Math.round(m)}  before the kernel's clock ${
        Math.round(before)
      }  guest uptime ${Math.round(u)} (${ok.map((t) => Math.round(t.uptime)).join(", ")})`,
    );
  }
  for (const [name, ts] of Object.entries(startups)) {
    const ok = ts.filter((t) => t.code === 0);
    if (ok.length === 0) continue;
    const origins = ok.flatMap((t) => t.origin === undefined ? [] : [t.origin]);
    console.log(
      `${name.padEnd(28)} exit ${Math.round(median(ok.map((t) => t.exit)))} (${
        ts.map((t) => Math.round(t.exit)).join(", ")
      })` +
        (origins.length > 0
          ? `; spawn to its clock origin ${Math.round(median(origins))} (${
            origins.map(Math.round).join(", ")
          })`
          : ""),
    );
  }
  const qemu = results["qemu bzImage"] ?? [];
  const deno = startups["deno run (empty module)"] ?? [];
  for (const way of ["deno-kvm later boot", "deno-kvm first boot"]) {
    const ours = results[way] ?? [];
    // The guest's whole time in our VMM: from its bootstrap vCPU's start (when the AP workers
    // were ready, on the CLI's clock, placed on the spawn's clock by the origin it prints) to the
    // marker; for a bzImage boot it includes the kernel's decompressor (guest time before the
    // kernel's clock).
    const guest = (t: Timing) => {
      const start = t.phases.find(([n]) => n === "AP workers ready")?.[1] ??
        t.phases.find(([n]) => n === "machine created")?.[1];
      return start === undefined || t.marker < 0 || t.origin === undefined
        ? undefined
        : t.marker - (t.origin + start);
    };
    const origins = ours.flatMap((t) => t.origin === undefined ? [] : [t.origin]);
    if (origins.length > 0) {
      console.log(
        `${way}: spawn to the CLI's clock origin (the runtime's start before any module) ${
          Math.round(median(origins))
        } ms (${origins.map(Math.round).join(", ")})`,
      );
    }
    const floor = (i: number) => {
      const q = qemu[i], o = ours[i], d = deno[i];
      const g = o && guest(o);
      if (!q || g === undefined || !d || q.marker < 0 || d.code !== 0) return undefined;
      return (d.exit + g) / q.marker;
    };
    const guests = ours.map(guest).filter((g): g is number => g !== undefined);
    const rounds = ours.map((_, i) => floor(i));
    const ok = rounds.filter((r): r is number => r !== undefined);
    if (ok.length === 0) continue;
    const pre = ours.filter((t) => guest(t) !== undefined && t.uptime >= 0)
      .map((t) => guest(t)! - t.uptime);
    console.log(
      `${way}: the guest's time in our VMM (bootstrap vCPU started to marker) ${
        Math.round(median(guests))
      } ms (${guests.map(Math.round).join(", ")}), of which before the kernel's clock ${
        pre.length ? Math.round(median(pre)) : "-"
      } (the decompressor, for a bzImage)`,
    );
    console.log(
      `best reachable, ${way}: (empty deno run + that guest time) / QEMU's marker = ` +
        `${median(ok).toFixed(2)} (median of rounds; by round ${
          rounds.map((r) => r === undefined ? "-" : r.toFixed(2)).join(", ")
        })`,
    );
  }
}

async function main(): Promise<void> {
  if (Deno.args.includes("--prepare-qemu")) return await prepareQemu();
  const runs = Number(Deno.env.get("KVM_BOOT_BENCH_RUNS") ?? 3);
  const all = Deno.env.get("KVM_BOOT_BENCH_ALL") === "1";
  const cpus = 2;
  const kernel = hostKernelPath() ?? "/boot/vmlinuz";
  const initrd = await Deno.makeTempFile({ suffix: ".cpio" });
  await Deno.writeFile(
    initrd,
    await buildInitramfs({ busybox: await Deno.readFile("/bin/busybox"), init: INIT }),
  );
  const baseline = Deno.env.get("KVM_BOOT_BENCH_BASELINE");
  const baselineRoot = baseline ? await Deno.realPath(baseline) : undefined;
  const cli = (root?: string) =>
    root ? `${root}/examples/boot_linux.ts` : new URL("../examples/boot_linux.ts", import.meta.url)
      .pathname;
  const ours = (...extra: string[]) => oursFrom(undefined, ...extra);
  const oursFrom = (root: string | undefined, ...extra: string[]) => [
    "run",
    "-A",
    "--no-check",
    cli(root),
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
    "--trace",
    ...extra,
  ];
  // Without the loader (the way's command): the bundle's arguments after it.
  const qemu = (kernelFile: string) =>
    directBootCommand(QEMU_BUNDLE, {
      kernel: kernelFile,
      initrd,
      cmdline: CMDLINE,
      memoryMiB: 256,
      cpus,
    }).slice(1);
  const show = (name: string, t: Timing) =>
    console.log(
      `${name}: marker ${Math.round(t.marker)} ms, first byte ${Math.round(t.firstByte)} ms, ` +
        `exit ${Math.round(t.exit)} ms, code ${t.code}`,
    );
  const caches: string[] = [];
  const freshCache = async () => {
    caches.push(await Deno.makeTempDir({ prefix: "boot-bench-cache-" }));
    return caches[caches.length - 1];
  };
  // Ours run with liblzma where the sandbox lacks one: the copy carried in beside QEMU, which
  // links the same library (a Debian host has it anyway: dpkg needs it).
  const lzmaEnv = carriedLiblzmaEnv(QEMU_BUNDLE);
  const qemuPath = bundleCommand(QEMU_BUNDLE)[0];
  const warm = await freshCache();
  const filling = await time(Deno.execPath(), ours(), { ...lzmaEnv, DENO_KVM_CACHE: warm });
  show("deno-kvm, first boot filling the warm cache (not counted)", filling);
  const vmlinuxFile = await Deno.makeTempFile({ suffix: ".elf" });
  if (all) {
    // QEMU's PVH boot gets the same uncompressed kernel, read back from that cache.
    const { vmlinux, source } = cachedVmlinux(await Deno.readFile(kernel), {
      directory: `${warm}/kernels`,
    });
    if (source !== "cache") console.error("boot_compare: the first boot did not fill the cache");
    await Deno.writeFile(vmlinuxFile, vmlinux);
  }
  // The baseline's warm cache, filled by its own first boot (its entries may differ in format).
  const baselineWarm = baselineRoot ? await freshCache() : "";
  if (baselineRoot) {
    const t = await time(
      Deno.execPath(),
      oursFrom(baselineRoot),
      { ...lzmaEnv, DENO_KVM_CACHE: baselineWarm },
      baselineRoot,
    );
    show("baseline, first boot filling its warm cache (not counted)", t);
  }
  /** name, command, arguments, environment (made just before each boot), working directory. */
  type Way = [string, string, string[], () => Promise<Record<string, string>>, string?];
  const none = () => Promise.resolve({});
  const ways: Way[] = [
    [
      "deno-kvm first boot",
      Deno.execPath(),
      ours(),
      async () => ({ ...lzmaEnv, DENO_KVM_CACHE: await freshCache() }),
    ],
    [
      "deno-kvm later boot",
      Deno.execPath(),
      ours(),
      () => Promise.resolve({ ...lzmaEnv, DENO_KVM_CACHE: warm }),
    ],
    ["qemu bzImage", qemuPath, qemu(kernel), none],
  ];
  if (baselineRoot) {
    ways.unshift(
      [
        "baseline first boot",
        Deno.execPath(),
        oursFrom(baselineRoot),
        async () => ({ ...lzmaEnv, DENO_KVM_CACHE: await freshCache() }),
        baselineRoot,
      ],
      [
        "baseline later boot",
        Deno.execPath(),
        oursFrom(baselineRoot),
        () => Promise.resolve({ ...lzmaEnv, DENO_KVM_CACHE: baselineWarm }),
        baselineRoot,
      ],
    );
  }
  if (all) {
    ways.push(
      ["deno-kvm --guest-decompress", Deno.execPath(), ours("--guest-decompress"), none],
      ["qemu vmlinux (PVH)", qemuPath, qemu(vmlinuxFile), none],
    );
  }
  // Deno's own start-up, in the same rounds: an empty module (the runtime alone, what any Deno
  // VMM pays), and this CLI's `--version` (the runtime and the CLI's static module graph).
  const empty = await Deno.makeTempFile({ suffix: ".ts" });
  // Nearly empty: it prints its clock's origin as the CLI's --trace does (where the runtime's
  // own start ends, on the spawn's clock).
  await Deno.writeTextFile(
    empty,
    "console.error(`boot_linux: clock origin ${performance.timeOrigin} ms after the epoch`);\n",
  );
  const startups: [string, string[]][] = [
    ["deno run (empty module)", ["run", "-A", "--no-check", empty]],
    ["deno run boot CLI --version", ["run", "-A", "--no-check", cli(), "--version"]],
  ];
  const results: Record<string, Timing[]> = Object.fromEntries(ways.map(([n]) => [n, []]));
  const startupResults: Record<string, Timing[]> = Object.fromEntries(
    startups.map(([n]) => [n, []]),
  );
  for (let i = 0; i < runs; i++) {
    console.log(`round ${i + 1}: load average ${Deno.readTextFileSync("/proc/loadavg").trim()}`);
    for (const [name, cmd, args, env, cwd] of ways) {
      const t = await time(cmd, args, await env(), cwd);
      show(`round ${i + 1}, ${name}`, t);
      if (t.uptime >= 0) console.log(`  guest /proc/uptime after the marker: ${t.uptime} ms`);
      if (t.trace.length > 0) console.log(`  trace: ${t.trace.join(" | ")}`);
      results[name].push(t);
    }
    for (const [name, args] of startups) {
      const t = await time(Deno.execPath(), args, {}, undefined, false);
      console.log(`round ${i + 1}, ${name}: exit ${Math.round(t.exit)} ms, code ${t.code}`);
      startupResults[name].push(t);
    }
  }
  const booted = (name: string) => results[name].filter((t) => t.marker >= 0 && t.code === 0);
  console.log(
    "\nway                          booted  to init marker (median; each, ms)  to exit (median)",
  );
  for (const [name, ts] of Object.entries(results)) {
    const ok = booted(name);
    console.log(
      `${name.padEnd(28)} ${ok.length}/${ts.length}` +
        (ok.length === 0
          ? ""
          : `     ${Math.round(median(ok.map((t) => t.marker)))} (${
            ts.map((t) => t.marker >= 0 ? Math.round(t.marker) : "hung").join(", ")
          })  ${Math.round(median(ok.map((t) => t.exit)))}`),
    );
  }
  const reference = booted("qemu bzImage");
  if (reference.length > 0) {
    const qemuMedian = median(reference.map((t) => t.marker));
    for (const name of ways.map(([n]) => n).filter((n) => !n.startsWith("qemu"))) {
      const ok = booted(name);
      if (ok.length === 0) continue;
      // Round by round: each boot of ours against QEMU's boot of the same round.
      const perRound = results[name].map((t, i) => {
        const q = results["qemu bzImage"][i];
        return t.marker >= 0 && q.marker >= 0 ? (t.marker / q.marker).toFixed(2) : "-";
      });
      console.log(
        `${name} / qemu bzImage: ${(median(ok.map((t) => t.marker)) / qemuMedian).toFixed(2)} ` +
          `(medians); by round ${perRound.join(", ")}`,
      );
    }
  }
  for (const name of ways.map(([n]) => n).filter((n) => !n.startsWith("qemu"))) {
    const ok = booted(name);
    if (ok.length === 0) continue;
    console.log(`\n${name}: --trace, median time since the CLI started at which each phase ended`);
    console.log(phaseMedians(ok));
    console.log(
      `    ${String(Math.round(median(ok.map((t) => t.marker)))).padStart(6)} ms  ` +
        "init marker (since spawn)",
    );
  }
  evidence(results, startupResults);
  console.log("\nfirst boot's trace, round 1:");
  for (const [name, at] of results["deno-kvm first boot"][0]?.phases ?? []) {
    console.log(`    ${String(at).padStart(6)} ms  ${name}`);
  }
  await Deno.remove(initrd);
  await Deno.remove(empty);
  await Deno.remove(vmlinuxFile);
  for (const dir of caches) await Deno.remove(dir, { recursive: true });
}

if (import.meta.main) await main();
