/**
 * The CPU probe (`cpu_probe.ts`) and the guest speed probe (`guest_speed.ts`)
 * of this host's KVM, remembered per user: both answers depend only on the
 * KVM (its module, parameters and host CPU) and on the probes themselves, yet
 * cost seconds of emulated guest code on a nested or emulated host (1.5-9 s
 * in the sandbox, `bench/RESULTS.md`, issue 17) before every boot.
 *
 * A record is keyed by the SHA-256 of everything that decides the answers:
 * the probe programs, `KVM_GET_API_VERSION`, the supported CPUID table, the
 * kernel release and build, the boot's id (`/proc/sys/kernel/random/boot_id`:
 * a rebooted host, with perhaps new microcode or another module, probes
 * again), and each loaded `kvm*` module with its parameters (a module reloaded
 * with `nested=0` or another backend is another key). A record is trusted as
 * the kernel cache's entries are: the directory and file must be the current
 * user's and not writable by group or others; a record that does not parse,
 * is of another key or shape is probed again and replaced.
 *
 * Answers that a loaded host can change are not kept: a probe that timed out,
 * and a guest speed of 0 (the loop did not finish).
 *
 * @module
 */

import {
  ensureCacheDir,
  sha256Hex,
  sha256HexAsync,
  untrustedReason,
  userCacheDir,
  writeExclusive,
} from "../cache_dir.ts";
import type { CpuidEntry } from "../abi/cpuid.ts";
import type { Kvm } from "../kvm/kvm.ts";
import {
  type CpuidBit,
  type CpuProbeReport,
  probeCpu,
  probeFingerprint,
  type ProbeResult,
  rememberCpuProbe,
} from "./cpu_probe.ts";
import { type GuestSpeed, LINUX_BOOT_MIN_MIPS, measureGuestSpeed } from "./guest_speed.ts";

/** What {@linkcode probeHost} found, and where from. */
export interface HostProbe {
  /** The CPU probe's report (also remembered for this `Kvm`: `probeCpu(kvm)` returns it). */
  cpu: CpuProbeReport;
  /** The guest speed, and whether booting Linux is practical here. */
  speed: GuestSpeed & { practical: boolean };
  /** `"cache"` when read back, `"probed"` when measured by this call. */
  source: "cache" | "probed";
  /** The record's file (absent when no cache directory could be used). */
  path?: string;
  /** Why the cache was not used or written, when it was not. */
  cacheProblem?: string;
}

/** Options of {@linkcode probeHost}. */
export interface HostProbeOptions {
  /** Where to keep records (default: `probes/` in the per-user deno-kvm cache). */
  directory?: string;
  /** Probe again and replace the record. */
  fresh?: boolean;
}

const FORMAT = "deno-kvm host probe 1";

function readOr(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

/** The loaded `kvm*` modules and their parameters, sorted: `name param=value...`. */
function kvmModules(): string[] {
  const modules: string[] = [];
  try {
    for (const e of Deno.readDirSync("/sys/module")) {
      if (!e.name.startsWith("kvm")) continue;
      const dir = `/sys/module/${e.name}/parameters`;
      const params: string[] = [];
      try {
        for (const p of Deno.readDirSync(dir)) {
          params.push(`${p.name}=${readOr(`${dir}/${p.name}`).trim()}`);
        }
      } catch {
        // A module without parameters.
      }
      modules.push(`${e.name} ${params.sort().join(" ")}`);
    }
  } catch {
    // No /sys: the CPUID table and the kernel still key the record.
  }
  return modules.sort();
}

/**
 * `entry` without the fields that name the host CPU the caller runs on (KVM
 * fills them from the CPU that answered the ioctl, so they change from one
 * process to the next, as seen in the sandbox): leaf 1's initial APIC id, the
 * x2APIC id of leaves 0xB and 0x1F, and AMD's extended APIC, core and node
 * ids (leaf 0x8000001E). No probe depends on them.
 */
function withoutCpuNumber(entry: CpuidEntry): CpuidEntry {
  const e = { ...entry };
  if (e.function === 1) e.ebx &= 0x00ff_ffff;
  else if (e.function === 0xb || e.function === 0x1f) e.edx = 0;
  else if (e.function === 0x8000_001e) e.eax = e.ebx = e.ecx = 0;
  return e;
}

/** The SHA-256 of everything that decides the probes' answers on this host (see the module doc). */
export function hostProbeKey(kvm: Kvm): string {
  return sha256Hex(keyText(kvm));
}

/**
 * {@linkcode hostProbeKey} hashed by WebCrypto: the same key without loading
 * `node:crypto` (Node's compatibility layer costs 40-60 ms natively and most
 * of a second in the sandbox's emulator, and a first boot needs it for
 * nothing else before its guest runs; `bench/RESULTS.md`, issue 17).
 */
export async function hostProbeKeyAsync(kvm: Kvm): Promise<string> {
  return await sha256HexAsync(keyText(kvm));
}

/** What the key hashes (see the module doc). */
function keyText(kvm: Kvm): Uint8Array {
  const cpuid = kvm.getSupportedCpuid().map(withoutCpuNumber)
    .map((e) => [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx].join(","))
    .sort();
  const text = JSON.stringify({
    format: FORMAT,
    probes: probeFingerprint(),
    api: kvm.apiVersion(),
    cpuid,
    release: readOr("/proc/sys/kernel/osrelease"),
    version: readOr("/proc/sys/kernel/version"),
    boot: readOr("/proc/sys/kernel/random/boot_id"),
    modules: kvmModules(),
  });
  return new TextEncoder().encode(text);
}

const isNumber = (x: unknown): x is number => typeof x === "number" && Number.isFinite(x);
const isString = (x: unknown): x is string => typeof x === "string";
const REGS = ["eax", "ebx", "ecx", "edx"];

function isBit(x: unknown): x is CpuidBit {
  const b = x as CpuidBit;
  return typeof x === "object" && x !== null && isNumber(b.leaf) && isNumber(b.index) &&
    REGS.includes(b.reg) && isNumber(b.bit) && b.bit >= 0 && b.bit < 32;
}

function isResult(x: unknown): x is ProbeResult {
  const r = x as ProbeResult;
  return typeof x === "object" && x !== null && isString(r.feature) &&
    isString(r.instructions) && isString(r.outcome) && isNumber(r.ms) &&
    (r.detail === undefined || isString(r.detail));
}

/** The record's report and speed when `record` is a well-formed record of `key`. */
function parseRecord(
  text: string,
  key: string,
): { cpu: CpuProbeReport; speed: GuestSpeed } | undefined {
  let record;
  try {
    record = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof record !== "object" || record === null || record.key !== key) return undefined;
  const { cpu, speed } = record;
  if (typeof cpu !== "object" || cpu === null || typeof speed !== "object" || speed === null) {
    return undefined;
  }
  const ok = Array.isArray(cpu.results) && cpu.results.every(isResult) &&
    Array.isArray(cpu.unusable) && cpu.unusable.every(isString) &&
    Array.isArray(cpu.hiddenBits) && cpu.hiddenBits.every(isBit) &&
    Array.isArray(cpu.zeroLeaves) && cpu.zeroLeaves.every(isNumber) &&
    Array.isArray(cpu.stuckBits) && cpu.stuckBits.every(isBit) && isNumber(cpu.ms) &&
    isNumber(speed.mips) && speed.mips > 0 && isNumber(speed.ms);
  return ok ? { cpu, speed: { mips: speed.mips, ms: speed.ms } } : undefined;
}

/** The record directory to use, or why none can be. */
function recordDirectory(options: HostProbeOptions): { dir?: string; cacheProblem?: string } {
  const base = userCacheDir();
  const dir = options.directory ?? (base ? `${base}/probes` : undefined);
  if (!dir) return {};
  try {
    const cacheProblem = ensureCacheDir(dir);
    return cacheProblem ? { cacheProblem } : { dir };
  } catch (e) {
    return { cacheProblem: `cannot create ${dir}: ${e instanceof Error ? e.message : String(e)}` };
  }
}

/**
 * The CPU probe and the guest speed of `kvm`'s host, read back from the
 * per-user cache when a record of this host's key is there (see the module
 * doc), else measured (`probeCpu`, `measureGuestSpeed`) and recorded. On a
 * hit the report is remembered for `kvm`, so `LinuxMachine.create({ kvm })`
 * does not probe again. A cache that cannot be used is not an error.
 */
export function probeHost(kvm: Kvm, options: HostProbeOptions = {}): HostProbe {
  return probeHostWithKey(kvm, hostProbeKey(kvm), options);
}

/** {@linkcode probeHost} with its key hashed by WebCrypto ({@linkcode hostProbeKeyAsync}). */
export async function probeHostAsync(kvm: Kvm, options: HostProbeOptions = {}): Promise<HostProbe> {
  return probeHostWithKey(kvm, await hostProbeKeyAsync(kvm), options);
}

function probeHostWithKey(kvm: Kvm, key: string, options: HostProbeOptions): HostProbe {
  const { dir, cacheProblem } = recordDirectory(options);
  const path = dir ? `${dir}/host-${key}.json` : undefined;
  const practical = (speed: GuestSpeed) => ({
    ...speed,
    practical: speed.mips >= LINUX_BOOT_MIN_MIPS,
  });
  if (path && !options.fresh && !untrustedReason(path, "file")) {
    const found = parseRecord(readOr(path), key);
    if (found) {
      rememberCpuProbe(kvm, found.cpu);
      return { cpu: found.cpu, speed: practical(found.speed), source: "cache", path };
    }
  }
  const speed = measureGuestSpeed({ kvm });
  const cpu = probeCpu(kvm, { fresh: options.fresh });
  const probed = { cpu, speed: practical(speed), source: "probed" as const };
  if (!path || !dir) return { ...probed, ...(cacheProblem ? { cacheProblem } : {}) };
  // A loaded host can make these come out differently next time: not kept.
  if (speed.mips === 0 || cpu.results.some((r) => r.outcome === "timeout")) return probed;
  let temporary: string | undefined;
  try {
    const record = new TextEncoder().encode(JSON.stringify({ key, cpu, speed }));
    temporary = writeExclusive(dir, record, ".host-", ".tmp");
    Deno.renameSync(temporary, path);
  } catch (e) {
    if (temporary) Deno.remove(temporary).catch(() => {});
    return {
      ...probed,
      cacheProblem: `cannot write ${path}: ${e instanceof Error ? e.message : String(e)}`,
    };
  }
  return { ...probed, path };
}
