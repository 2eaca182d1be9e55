/**
 * Resident memory of the VMM beyond guest RAM (issue 14): this library's boot
 * CLI (`examples/boot_linux.ts`) against QEMU (`-accel kvm -kernel`), the same
 * kernel, initramfs, command line, 256 MiB and 2 vCPUs, in one run.
 *
 * Each guest's `/init` prints a marker and then sleeps, so both processes are
 * measured in the same state: Linux booted, every vCPU brought up, the guest
 * idle. Once the marker has been seen (and a settling pause), the process's
 * `/proc/PID/smaps` is read: its whole resident set (Rss, and Pss), and the
 * resident pages of the mapping that is guest RAM, found as the anonymous
 * mapping whose size is the guest's memory (up to 4 MiB of alignment more);
 * the VMM's own memory is the difference. The mappings taken for guest RAM
 * are printed, so the choice can be checked.
 *
 * Needs /dev/kvm and Linux reaching `/init`, so it runs in the sandbox with
 * QEMU carried in (made by `deno run -A bench/boot_compare.ts --prepare-qemu`):
 *
 * ```
 * deno run -A tools/sandbox/sandbox.ts --include .cache/qemu-sandbox -- deno run -A --no-check bench/memory_compare.ts
 * ```
 *
 * `KVM_MEMORY_BENCH_RUNS` (default 2) sets the rounds, interleaved; each boot
 * is killed after `KVM_MEMORY_BENCH_KILL_S` (default 600) seconds. A script,
 * not a `deno bench` file (it measures whole processes).
 *
 * @module
 */

import { buildInitramfs } from "../examples/initramfs.ts";
import { hostKernelPath } from "../src/boot/initramfs.ts";
import { carriedLiblzmaEnv, directBootCommand } from "../tools/kut/qemu_bundle.ts";

const MARKER = "MEMORY-BENCH-INIT";
const SETTLE_S = 5;
const INIT = `#!/bin/busybox sh\n/bin/busybox echo ${MARKER}\n/bin/busybox sleep 120\n` +
  "/bin/busybox reboot -f\n";
const CMDLINE = "console=ttyS0 panic=-1 pci=off quiet";
const QEMU_DIR = new URL("../.cache/qemu-sandbox", import.meta.url).pathname;
const KILL_S = Number(Deno.env.get("KVM_MEMORY_BENCH_KILL_S") ?? 600);
const MEMORY_MIB = 256;
const CPUS = 2;

/** One process's memory, in KiB, from `/proc/PID/smaps`. */
interface Footprint {
  rss: number;
  pss: number;
  guestRss: number;
  /** The mappings counted as guest RAM: "start-end size KiB, Rss KiB". */
  guestMappings: string[];
  /** Anonymous mappings of 32 MiB or more, other than guest RAM, with 1 MiB or more resident. */
  large: string[];
  /** Rss by kind of mapping (a file's name, or anonymous by size), largest first. */
  groups: [string, number][];
  threads: number;
}

/** Reads `/proc/PID/smaps` and splits the resident set into guest RAM and the rest. */
function footprint(pid: number): Footprint {
  const smaps = Deno.readTextFileSync(`/proc/${pid}/smaps`);
  let rss = 0;
  let pss = 0;
  let guestRss = 0;
  const guestMappings: string[] = [];
  const groups = new Map<string, number>();
  const large: string[] = [];
  const guestBytes = MEMORY_MIB * 1024 * 1024;
  // A mapping's header line, then its "Key: value kB" lines.
  for (const block of smaps.split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    const header = block.slice(0, block.indexOf("\n"));
    const [range, , , , inode, path] = header.split(/\s+/);
    const [start, end] = range.split("-").map((h) => parseInt(h, 16));
    const field = (key: string) =>
      Number(block.match(new RegExp(`^${key}:\\s+(\\d+) kB`, "m"))?.[1] ?? 0);
    const blockRss = field("Rss");
    rss += blockRss;
    pss += field("Pss");
    const size = end - start;
    const anonymous = inode === "0" && (path === undefined || path === "");
    let group = path ? path.replace(/.*\//, "") : "";
    if (anonymous && size >= guestBytes && size <= guestBytes + 4 * 1024 * 1024) {
      guestRss += blockRss;
      guestMappings.push(`${range} ${size >> 10} KiB, Rss ${blockRss} KiB`);
      group = "guest RAM";
    } else if (anonymous) {
      group = size >= 32 << 20
        ? "anonymous, 32 MiB or more"
        : size >= 4 << 20
        ? "anonymous, 4-32 MiB"
        : size >= 1 << 20
        ? "anonymous, 1-4 MiB"
        : "anonymous, under 1 MiB";
    }
    groups.set(group, (groups.get(group) ?? 0) + blockRss);
    if (group === "anonymous, 32 MiB or more" && blockRss >= 1024) {
      large.push(`${range} ${size >> 10} KiB, Rss ${blockRss} KiB`);
    }
  }
  const threads = [...Deno.readDirSync(`/proc/${pid}/task`)].length;
  const sorted = [...groups].sort((a, b) => b[1] - a[1]);
  return { rss, pss, guestRss, guestMappings, large, groups: sorted, threads };
}

/** Boots one way, measures it once the guest is idle in `/init`, then kills it. */
async function measure(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<Footprint | undefined> {
  const child = new Deno.Command(cmd, {
    args,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), KILL_S * 1000);
  const stderr = new Response(child.stderr).text();
  const decoder = new TextDecoder();
  let text = "";
  let result: Footprint | undefined;
  const t0 = performance.now();
  for await (const chunk of child.stdout) {
    text += decoder.decode(chunk, { stream: true });
    if (result === undefined && text.includes(MARKER)) {
      console.log(`  marker after ${Math.round(performance.now() - t0)} ms`);
      await new Promise((r) => setTimeout(r, SETTLE_S * 1000));
      result = footprint(child.pid);
      child.kill("SIGKILL");
    }
  }
  await child.status;
  clearTimeout(timer);
  const errors = await stderr;
  if (result === undefined) console.error(`${cmd}: no marker\n${text.slice(-2000)}\n${errors}`);
  return result;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

async function main(): Promise<void> {
  const runs = Number(Deno.env.get("KVM_MEMORY_BENCH_RUNS") ?? 2);
  const kernel = hostKernelPath() ?? "/boot/vmlinuz";
  const initrd = await Deno.makeTempFile({ suffix: ".cpio" });
  await Deno.writeFile(
    initrd,
    await buildInitramfs({ busybox: await Deno.readFile("/bin/busybox"), init: INIT }),
  );
  const cache = await Deno.makeTempDir({ prefix: "memory-bench-cache-" });
  const env: Record<string, string> = { ...carriedLiblzmaEnv(QEMU_DIR), DENO_KVM_CACHE: cache };
  const ours = [
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
    `${MEMORY_MIB}M`,
    "--cpus",
    String(CPUS),
  ];
  const [qemuLoader, ...qemu] = directBootCommand(QEMU_DIR, {
    kernel,
    initrd,
    cmdline: CMDLINE,
    memoryMiB: MEMORY_MIB,
    cpus: CPUS,
  });
  // The floor under any Deno VMM: the runtime alone, idle, and with one Worker (the boot
  // CLI runs each AP on a Worker), each printing the marker when ready.
  const bare = await Deno.makeTempFile({ suffix: ".js" });
  await Deno.writeTextFile(
    bare,
    `if (Deno.args[0] === "worker") {
      const w = new Worker("data:text/javascript,postMessage(1)", { type: "module" });
      await new Promise((r) => { w.onmessage = r; });
    }
    console.log("${MARKER}");
    setTimeout(() => {}, 600000);`,
  );
  const ways: [string, string, string[]][] = [
    ["deno-kvm", Deno.execPath(), ours],
    ["qemu", qemuLoader, qemu],
    ["bare deno", Deno.execPath(), ["run", "-A", bare]],
    ["bare deno + 1 Worker", Deno.execPath(), ["run", "-A", bare, "worker"]],
  ];
  const results: Record<string, Footprint[]> = Object.fromEntries(ways.map(([n]) => [n, []]));
  // The first boot fills the kernel cache (the decode's buffers may stay resident): measured,
  // printed, not counted; the rounds measure later boots, as a user's usual one.
  console.log("deno-kvm, first boot filling the cache (not counted)");
  const first = await measure(Deno.execPath(), ours, env);
  if (first) {
    console.log(`  Rss ${first.rss} KiB, beyond guest RAM ${first.rss - first.guestRss} KiB`);
  }
  for (let round = 1; round <= runs; round++) {
    for (const [name, cmd, args] of ways) {
      console.log(
        `round ${round}, ${name} (load ${Deno.readTextFileSync("/proc/loadavg").trim()})`,
      );
      const f = await measure(cmd, args, name === "deno-kvm" ? env : {});
      if (f === undefined) continue;
      results[name].push(f);
      console.log(
        `  Rss ${f.rss} KiB, Pss ${f.pss} KiB, guest RAM resident ${f.guestRss} KiB, ` +
          `beyond guest RAM ${f.rss - f.guestRss} KiB, ${f.threads} threads`,
      );
      for (const m of f.guestMappings) console.log(`  guest RAM mapping: ${m}`);
      for (const m of f.large) console.log(`  large anonymous mapping: ${m}`);
      console.log(
        `  Rss by mapping: ${f.groups.slice(0, 8).map(([g, kib]) => `${g} ${kib}`).join(", ")}`,
      );
      if (f.guestMappings.length !== 1) {
        console.log(`  (expected one guest RAM mapping, found ${f.guestMappings.length})`);
      }
    }
  }
  const beyond = (name: string) => results[name].map((f) => f.rss - f.guestRss);
  console.log("\nway        measured  beyond guest RAM, KiB (median; each)  Rss (median)");
  for (const name of Object.keys(results)) {
    const b = beyond(name);
    if (b.length === 0) {
      console.log(`${name.padEnd(10)} 0/${runs}`);
      continue;
    }
    console.log(
      `${name.padEnd(10)} ${b.length}/${runs}       ${median(b)} (${b.join(", ")})` +
        `  ${median(results[name].map((f) => f.rss))}`,
    );
  }
  if (beyond("deno-kvm").length > 0 && beyond("qemu").length > 0) {
    console.log(
      `deno-kvm / qemu, beyond guest RAM: ${
        (median(beyond("deno-kvm")) / median(beyond("qemu"))).toFixed(2)
      }`,
    );
  }
  await Deno.remove(initrd);
  await Deno.remove(bare);
  await Deno.remove(cache, { recursive: true });
}

if (import.meta.main) await main();
