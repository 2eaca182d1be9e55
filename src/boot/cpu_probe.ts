/**
 * Which CPU features this KVM can really run in a guest kernel, found by
 * trying them: small probe guests execute one instruction each (`lock
 * cmpxchg16b`, `xsetbv` + `xsave64` + `xrstor64`, `popcnt`, `rdrand`...) at
 * CPL 0, and a feature whose instruction ends in a KVM internal error (an
 * emulation failure), a fault or a timeout is taken out of the guest's CPUID
 * by {@linkcode hideUnusableFeatures}.
 *
 * Why: a KVM backend that emulates kernel code (the shadow-paging,
 * instruction-emulating `kvm_pvm` this project meets) lists features in
 * `KVM_GET_SUPPORTED_CPUID` that its instruction emulator cannot execute.
 * Linux picks its code paths from CPUID (`cmpxchg16b` in SLUB, XSAVE for the
 * FPU state, POPCNT in `hweight`), so it stops on the first one. On hardware
 * VMX/SVM the probes run natively and nothing is hidden. The decision comes
 * from what the KVM does, never from its name.
 *
 * Every probe is bounded: `KVM_RUN` on such a backend may never return (a
 * triple fault gives no `KVM_EXIT_SHUTDOWN`), so the probe vCPU runs under
 * `Vcpu.setWatchdog`, and exceptions land in an IDT whose stubs report the
 * vector on a port instead of faulting again.
 *
 * @module
 */

import type { CpuidEntry } from "../abi/cpuid.ts";
import { Errno, KvmError } from "../errors.ts";
import type { Kvm } from "../kvm/kvm.ts";
import type { Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import { describeInternalError } from "../kvm/dump.ts";
import { setupLongMode } from "./modes.ts";

/** A CPUID register bit: leaf, subleaf (`index`), register and bit number. */
export interface CpuidBit {
  /** The leaf (EAX in). */
  leaf: number;
  /** The subleaf (ECX in); 0 for leaves without subleaves. */
  index: number;
  /** The output register. */
  reg: "eax" | "ebx" | "ecx" | "edx";
  /** Bit number, 0 to 31. */
  bit: number;
}

/** How one probe ended. */
export type ProbeOutcome =
  /** The instruction ran and the guest reported success. */
  | "ok"
  /** `KVM_EXIT_INTERNAL_ERROR` (suberror 1: emulation failure, or another). */
  | "internalError"
  /** The guest took an exception (its vector is in `detail`). */
  | "fault"
  /** `KVM_RUN` did not come back with an answer before the deadline. */
  | "timeout"
  /** Another exit, or an ioctl failed. */
  | "error"
  /** Not run: the supported CPUID lacks the feature (or one it needs failed). */
  | "skipped";

/** The result of one probe. */
export interface ProbeResult {
  /** The feature's name (`cx16`, `xsave`, ...). */
  feature: string;
  /** The instructions the probe ran, as assembly. */
  instructions: string;
  /** How it ended. */
  outcome: ProbeOutcome;
  /** What happened, for anything but `ok`: the instruction KVM stopped on, the vector... */
  detail?: string;
  /** How long the probe's `KVM_RUN`s took, in ms. */
  ms: number;
}

/** What {@linkcode probeCpu} found about one KVM. */
export interface CpuProbeReport {
  /** One entry per probe, in the order they ran. */
  results: ProbeResult[];
  /** The features whose probe did not end `ok` (and were offered): hide them. */
  unusable: string[];
  /**
   * The CPUID bits to clear: those of the unusable features and of the
   * features that depend on them (AVX on XSAVE, ...).
   */
  hiddenBits: CpuidBit[];
  /** Whether the leaves hiding works through (0xD for XSAVE) are to be zeroed. */
  zeroLeaves: number[];
  /**
   * Hidden bits the guest still saw set with them cleared in its CPUID: this
   * KVM forces them on (kvm_pvm ORs the host's own features into leaf 1 ECX
   * and leaf 7 EBX). Only the guest can be told, on its command line:
   * see {@linkcode linuxClearCpuid}.
   */
  stuckBits: CpuidBit[];
  /** Total probing time in ms (VM set-up included). */
  ms: number;
}

/** Options of {@linkcode probeCpu}. */
export interface CpuProbeOptions {
  /** Deadline of each probe's run in ms (default 2000). */
  timeoutMs?: number;
  /** Probe again even when this Kvm has a cached report. */
  fresh?: boolean;
}

const b = (leaf: number, reg: CpuidBit["reg"], bit: number, index = 0): CpuidBit => ({
  leaf,
  index,
  reg,
  bit,
});

/** The AVX family: everything that needs XSAVE-managed YMM/ZMM state (hidden with AVX). */
const AVX_FAMILY: readonly CpuidBit[] = [
  b(1, "ecx", 28), // AVX
  b(1, "ecx", 12), // FMA
  b(1, "ecx", 29), // F16C
  b(7, "ebx", 5), // AVX2
  ...[16, 17, 21, 26, 27, 28, 30, 31].map((n) => b(7, "ebx", n)), // AVX-512 F DQ IFMA PF ER CD BW VL
  ...[1, 6, 9, 10, 11, 12, 14].map((n) => b(7, "ecx", n)), // VBMI VBMI2 VAES VPCLMULQDQ VNNI BITALG VPOPCNTDQ
  ...[2, 3, 8, 22, 23, 24, 25].map((n) => b(7, "edx", n)), // 4VNNIW 4FMAPS VP2INTERSECT AMX FP16
  b(7, "eax", 4, 1), // AVX-VNNI
  b(7, "eax", 5, 1), // AVX512_BF16
  b(0x80000001, "ecx", 11), // XOP
  b(0x80000001, "ecx", 16), // FMA4
];

/** XSAVE itself and everything whose state it manages. */
const XSAVE_FAMILY: readonly CpuidBit[] = [
  b(1, "ecx", 26), // XSAVE
  b(1, "ecx", 27), // OSXSAVE
  ...AVX_FAMILY,
  b(7, "ebx", 14), // MPX
  b(7, "ecx", 3), // PKU
  b(7, "ecx", 4), // OSPKE
  b(0xd, "eax", 0, 1), // XSAVEOPT
  b(0xd, "eax", 1, 1), // XSAVEC
  b(0xd, "eax", 3, 1), // XSAVES
];

/** One probe: the feature, the bits that offer it, the machine code and what it needs. */
interface Probe {
  feature: string;
  /** The bits hidden when the probe fails (the first one decides whether to run it). */
  bits: readonly CpuidBit[];
  asm: string;
  code: readonly number[];
  /** Features that must have passed first. */
  needs?: string[];
}

// Each probe runs at CPL 0 in long mode with RDI = a zeroed, 64-byte aligned page, then
// falls into `out 0xf0, al; hlt` (success). Encodings from GNU as.
// deno-fmt-ignore
const PROBES: readonly Probe[] = [
  { feature: "cx16", bits: [b(1, "ecx", 13)],
    asm: "xor eax,eax; xor edx,edx; xor ebx,ebx; xor ecx,ecx; lock cmpxchg16b [rdi]",
    code: [0x31, 0xc0, 0x31, 0xd2, 0x31, 0xdb, 0x31, 0xc9, 0xf0, 0x48, 0x0f, 0xc7, 0x0f] },
  { feature: "xsave", bits: XSAVE_FAMILY,
    asm: "xor ecx,ecx; mov eax,3; xor edx,edx; xsetbv; xsave64 [rdi]; xrstor64 [rdi]",
    code: [0x31, 0xc9, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x31, 0xd2, 0x0f, 0x01, 0xd1,
      0x48, 0x0f, 0xae, 0x27, 0x48, 0x0f, 0xae, 0x2f] },
  { feature: "xsaveopt", bits: [b(0xd, "eax", 0, 1)], needs: ["xsave"],
    asm: "mov eax,3; xor edx,edx; xsaveopt64 [rdi]",
    code: [0xb8, 0x03, 0x00, 0x00, 0x00, 0x31, 0xd2, 0x48, 0x0f, 0xae, 0x37] },
  { feature: "xsavec", bits: [b(0xd, "eax", 1, 1)], needs: ["xsave"],
    asm: "mov eax,3; xor edx,edx; xsavec64 [rdi]",
    code: [0xb8, 0x03, 0x00, 0x00, 0x00, 0x31, 0xd2, 0x48, 0x0f, 0xc7, 0x27] },
  { feature: "xsaves", bits: [b(0xd, "eax", 3, 1)], needs: ["xsave"],
    asm: "mov eax,3; xor edx,edx; xsaves64 [rdi]; xrstors64 [rdi]",
    code: [0xb8, 0x03, 0x00, 0x00, 0x00, 0x31, 0xd2, 0x48, 0x0f, 0xc7, 0x2f,
      0x48, 0x0f, 0xc7, 0x1f] },
  { feature: "avx", bits: AVX_FAMILY, needs: ["xsave"],
    asm: "xor ecx,ecx; mov eax,7; xor edx,edx; xsetbv; vxorps ymm0,ymm0,ymm0",
    code: [0x31, 0xc9, 0xb8, 0x07, 0x00, 0x00, 0x00, 0x31, 0xd2, 0x0f, 0x01, 0xd1,
      0xc5, 0xfc, 0x57, 0xc0] },
  { feature: "avx2", bits: [b(7, "ebx", 5)], needs: ["avx"],
    asm: "vpxor ymm0,ymm0,ymm1", code: [0xc5, 0xfd, 0xef, 0xc1] },
  { feature: "popcnt", bits: [b(1, "ecx", 23)],
    asm: "popcnt rax,rbx", code: [0xf3, 0x48, 0x0f, 0xb8, 0xc3] },
  { feature: "movbe", bits: [b(1, "ecx", 22)],
    asm: "movbe rax,[rdi]", code: [0x48, 0x0f, 0x38, 0xf0, 0x07] },
  { feature: "rdrand", bits: [b(1, "ecx", 30)],
    asm: "rdrand rax", code: [0x48, 0x0f, 0xc7, 0xf0] },
  { feature: "rdseed", bits: [b(7, "ebx", 18)],
    asm: "rdseed rax", code: [0x48, 0x0f, 0xc7, 0xf8] },
  { feature: "fsgsbase", bits: [b(7, "ebx", 0)],
    asm: "rdgsbase rax; wrgsbase rax",
    code: [0xf3, 0x48, 0x0f, 0xae, 0xc8, 0xf3, 0x48, 0x0f, 0xae, 0xd8] },
  { feature: "pcid", bits: [b(1, "ecx", 17), b(7, "ebx", 10)],
    asm: "mov rax,cr4; bts rax,17; mov cr4,rax; mov rbx,cr3; mov rcx,rbx; or rcx,1; " +
      "mov cr3,rcx; mov cr3,rbx; btr rax,17; mov cr4,rax",
    code: [0x0f, 0x20, 0xe0, 0x48, 0x0f, 0xba, 0xe8, 0x11, 0x0f, 0x22, 0xe0, 0x0f, 0x20, 0xdb,
      0x48, 0x89, 0xd9, 0x48, 0x83, 0xc9, 0x01, 0x0f, 0x22, 0xd9, 0x0f, 0x22, 0xdb,
      0x48, 0x0f, 0xba, 0xf0, 0x11, 0x0f, 0x22, 0xe0] },
  { feature: "invpcid", bits: [b(7, "ebx", 10)],
    asm: "mov eax,2; invpcid rax,[rdi]",
    code: [0xb8, 0x02, 0x00, 0x00, 0x00, 0x66, 0x0f, 0x38, 0x82, 0x07] },
  { feature: "rdtscp", bits: [b(0x80000001, "edx", 27)],
    asm: "rdtscp", code: [0x0f, 0x01, 0xf9] },
  { feature: "rdpid", bits: [b(7, "ecx", 22)],
    asm: "rdpid rax", code: [0xf3, 0x0f, 0xc7, 0xf8] },
  { feature: "smap", bits: [b(7, "ebx", 20)],
    asm: "stac; clac", code: [0x0f, 0x01, 0xcb, 0x0f, 0x01, 0xca] },
  { feature: "clflushopt", bits: [b(7, "ebx", 23)],
    asm: "clflushopt [rdi]", code: [0x66, 0x0f, 0xae, 0x3f] },
  { feature: "clwb", bits: [b(7, "ebx", 24)],
    asm: "clwb [rdi]", code: [0x66, 0x0f, 0xae, 0x37] },
  { feature: "sse4.2", bits: [b(1, "ecx", 20)],
    asm: "crc32 eax,bl", code: [0xf2, 0x0f, 0x38, 0xf0, 0xc3] },
  { feature: "sse4.1", bits: [b(1, "ecx", 19)],
    asm: "ptest xmm0,xmm0", code: [0x66, 0x0f, 0x38, 0x17, 0xc0] },
  { feature: "ssse3", bits: [b(1, "ecx", 9)],
    asm: "pshufb xmm0,xmm1", code: [0x66, 0x0f, 0x38, 0x00, 0xc1] },
  { feature: "pclmulqdq", bits: [b(1, "ecx", 1)],
    asm: "pclmulqdq xmm0,xmm1,0", code: [0x66, 0x0f, 0x3a, 0x44, 0xc1, 0x00] },
  { feature: "aes", bits: [b(1, "ecx", 25)],
    asm: "aesenc xmm0,xmm1", code: [0x66, 0x0f, 0x38, 0xdc, 0xc1] },
];

// Guest layout: GDT at 0x500 and page tables at 0x9000 (setupLongMode's defaults).
const IDT = 0x1000;
const STUBS = 0x2000;
const DATA = 0x4000;
const CODE = 0x10000;
const STACK = 0x8000;
const RAM = 0x20_0000;
/** Port the probe writes when its instruction ran. */
const PORT_DONE = 0xf0;
/** Port an exception stub writes its vector to. */
const PORT_FAULT = 0xf1;
/** Port a probe reports 32-bit values on. */
const PORT_VALUE = 0xf2;
const DONE = [0xe6, PORT_DONE, 0xf4]; // out 0xf0, al; hlt

const CR4_OSFXSR = 1n << 9n;
const CR4_OSXMMEXCPT = 1n << 10n;
const CR4_FSGSBASE = 1n << 16n;
const CR4_OSXSAVE = 1n << 18n;
const CR0_MP = 1n << 1n;
const CR0_EM = 1n << 2n;
const CR0_TS = 1n << 3n;

const cache = new WeakMap<Kvm, CpuProbeReport>();

/**
 * Makes `report` what {@linkcode probeCpu} returns for `kvm` from now on (unless
 * asked `fresh`): a report of this host read back from a cache
 * (`host_probe.ts`), so a machine built on `kvm` does not probe again.
 */
export function rememberCpuProbe(kvm: Kvm, report: CpuProbeReport): void {
  cache.set(kvm, report);
}

/**
 * What the probes are, as text: their programs, the bits they decide and the
 * leaves read. A stored report is of these probes only (part of the key in
 * `host_probe.ts`): a change to any probe makes every stored report stale.
 */
export function probeFingerprint(): string {
  return JSON.stringify({ probes: PROBES, leaves: FEATURE_LEAVES, cpuid: cpuidProbe(1, 0).code });
}

function has(entries: readonly CpuidEntry[], bit: CpuidBit): boolean {
  const e = entries.find((x) => x.function === bit.leaf && x.index === bit.index);
  return e !== undefined && ((e[bit.reg] >>> bit.bit) & 1) === 1;
}

/** Writes the IDT (32 interrupt gates) and one `mov al, vector; out 0xf1, al; hlt` stub each. */
function writeIdt(vm: Vm): void {
  const idt = new DataView(new ArrayBuffer(32 * 16));
  const stubs = new Uint8Array(32 * 8);
  for (let v = 0; v < 32; v++) {
    const at = STUBS + v * 8;
    stubs.set([0xb0, v, 0xe6, PORT_FAULT, 0xf4], v * 8);
    idt.setUint16(v * 16, at & 0xffff, true);
    idt.setUint16(v * 16 + 2, 0x10, true); // the code selector of setupLongMode's GDT
    idt.setUint16(v * 16 + 4, 0x8e00, true); // present, DPL 0, 64-bit interrupt gate
    idt.setUint16(v * 16 + 6, at >>> 16, true);
  }
  vm.writeGuest(IDT, new Uint8Array(idt.buffer));
  vm.writeGuest(STUBS, stubs);
}

/**
 * Runs every probe once on a VM of its own (one vCPU, no irqchip, 2 MiB) and
 * reports which features this KVM cannot execute. Synchronous; each probe's
 * `KVM_RUN` is bounded by `timeoutMs`. Cached per `Kvm` object.
 */
export function probeCpu(kvm: Kvm, options: CpuProbeOptions = {}): CpuProbeReport {
  const cached = cache.get(kvm);
  if (cached && !options.fresh) return cached;
  const timeoutMs = options.timeoutMs ?? 2000;
  const t0 = performance.now();
  const supported = [...kvm.getSupportedCpuid()];
  // What a guest really sees can differ from the table KVM_SET_CPUID2 gave: probe what it sees
  // (when even CPUID cannot run in a probe guest, the supported table is all there is).
  const seen = trySeenCpuid(kvm, supported, timeoutMs) ?? [];
  const offered = supported.map((e) => ({ ...e }));
  for (const e of offered) {
    const s = seen.find((x) => x.function === e.function && x.index === e.index);
    if (s) (e.eax |= s.eax, e.ebx |= s.ebx, e.ecx |= s.ecx, e.edx |= s.edx);
    for (const r of ["eax", "ebx", "ecx", "edx"] as const) e[r] >>>= 0;
  }
  const results: ProbeResult[] = [];
  const passed = new Set<string>();
  let machine: ProbeVm | undefined;
  try {
    for (const probe of PROBES) {
      if (!has(offered, probe.bits[0])) {
        results.push(skip(probe, "not offered"));
        continue;
      }
      const missing = probe.needs?.find((f) => !passed.has(f));
      if (missing) {
        results.push(skip(probe, `needs ${missing}`));
        continue;
      }
      machine ??= new ProbeVm(kvm, offered);
      const result = machine.run(probe, timeoutMs);
      results.push(result);
      if (result.outcome === "ok") passed.add(probe.feature);
      else if (result.outcome === "timeout" || result.outcome === "error") {
        // The vCPU may be wedged: the next probe gets a fresh VM.
        machine.close();
        machine = undefined;
      }
    }
  } finally {
    machine?.close();
  }
  const failed = results.filter((r) => r.outcome !== "ok" && r.outcome !== "skipped");
  const unusable = failed.map((r) => r.feature);
  const hiddenBits: CpuidBit[] = [];
  for (const feature of unusable) {
    hiddenBits.push(...PROBES.find((p) => p.feature === feature)!.bits);
  }
  const zeroLeaves = unusable.includes("xsave") ? [0xd] : [];
  // Do the cleared bits stay cleared? Ask a guest given the hidden table.
  let stuckBits: CpuidBit[] = [];
  if (hiddenBits.length > 0) {
    const hidden = hideUnusableFeatures(supported.map((e) => ({ ...e })), {
      hiddenBits,
      zeroLeaves,
    });
    const after = trySeenCpuid(kvm, hidden, timeoutMs);
    if (after) stuckBits = hiddenBits.filter((bit) => bit.leaf !== 0xd && has(after, bit));
  }
  const report: CpuProbeReport = {
    results,
    unusable,
    hiddenBits,
    zeroLeaves,
    stuckBits,
    ms: performance.now() - t0,
  };
  cache.set(kvm, report);
  return report;
}

/** The leaves whose feature bits the probes look at. */
const FEATURE_LEAVES: readonly [number, number][] = [[1, 0], [7, 0], [7, 1], [0x80000001, 0]];

/** Runs CPUID for {@linkcode FEATURE_LEAVES} in a guest given `table`: what the guest sees. */
function seenCpuid(kvm: Kvm, table: CpuidEntry[], timeoutMs: number): CpuidEntry[] {
  const machine = new ProbeVm(kvm, table);
  try {
    const seen: CpuidEntry[] = [];
    for (const [leaf, index] of FEATURE_LEAVES) {
      const words: number[] = [];
      const r = machine.run(cpuidProbe(leaf, index), timeoutMs, words);
      if (r.outcome !== "ok" || words.length !== 4) {
        throw new KvmError(
          "probe CPUID",
          Errno.EIO,
          `CPUID ${leaf.toString(16)}.${index} in a probe guest: ${r.outcome} ${r.detail ?? ""}`,
        );
      }
      const [eax, ebx, ecx, edx] = words;
      seen.push({ function: leaf, index, flags: 0, eax, ebx, ecx, edx });
    }
    return seen;
  } finally {
    machine.close();
  }
}

function trySeenCpuid(
  kvm: Kvm,
  table: CpuidEntry[],
  timeoutMs: number,
): CpuidEntry[] | undefined {
  try {
    return seenCpuid(kvm, table, timeoutMs);
  } catch (e) {
    if (e instanceof KvmError) return undefined;
    throw e;
  }
}

/** `mov eax, leaf; mov ecx, index; cpuid`, then EAX, EBX, ECX, EDX out on port 0xf2. */
function cpuidProbe(leaf: number, index: number): Probe {
  const le = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
  return {
    feature: `cpuid ${leaf.toString(16)}.${index}`,
    bits: [],
    asm: "mov eax,leaf; mov ecx,index; cpuid; mov esi,edx; mov edx,0xf2; " +
      "out dx,eax; mov eax,ebx; out dx,eax; mov eax,ecx; out dx,eax; mov eax,esi; out dx,eax",
    // deno-fmt-ignore
    code: [0xb8, ...le(leaf), 0xb9, ...le(index), 0x0f, 0xa2, 0x89, 0xd6, 0xba, PORT_VALUE, 0, 0, 0,
      0xef, 0x89, 0xd8, 0xef, 0x89, 0xc8, 0xef, 0x89, 0xf0, 0xef],
  };
}

function skip(probe: Probe, why: string): ProbeResult {
  return {
    feature: probe.feature,
    instructions: probe.asm,
    outcome: "skipped",
    detail: why,
    ms: 0,
  };
}

/** One probe VM: long mode, an IDT that reports exceptions, the probes' code and data. */
class ProbeVm {
  readonly #vm: Vm;
  readonly #vcpu: Vcpu;

  constructor(kvm: Kvm, cpuid: CpuidEntry[]) {
    const vm = this.#vm = kvm.createVm();
    try {
      const ram = vm.allocateMemory(RAM, { hugePages: false });
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: RAM, memory: ram });
      writeIdt(vm);
      const vcpu = this.#vcpu = vm.createVcpu(0);
      vcpu.setCpuid2(cpuid);
      setupLongMode(vm, vcpu, { entry: CODE, stack: STACK });
      const sregs = vcpu.getSregs();
      sregs.idt.base = BigInt(IDT);
      sregs.idt.limit = 32 * 16 - 1;
      sregs.cr0 = (sregs.cr0 | CR0_MP) & ~(CR0_EM | CR0_TS);
      sregs.cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT;
      // CR4 bits KVM refuses unless the guest's CPUID has the feature.
      if (has(cpuid, b(1, "ecx", 26))) sregs.cr4 |= CR4_OSXSAVE;
      if (has(cpuid, b(7, "ebx", 0))) sregs.cr4 |= CR4_FSGSBASE;
      vcpu.setSregs(sregs);
    } catch (e) {
      vm.close();
      throw e;
    }
  }

  /** Runs one probe; 32-bit values the guest writes to port 0xf2 go to `values`. */
  run(probe: Probe, timeoutMs: number, values?: number[]): ProbeResult {
    const vm = this.#vm;
    const vcpu = this.#vcpu;
    const result: ProbeResult = {
      feature: probe.feature,
      instructions: probe.asm,
      outcome: "error",
      ms: 0,
    };
    vm.writeGuest(CODE, [...probe.code, ...DONE]);
    vm.guestMemory(DATA, 0x1000).fill(0);
    vcpu.setRegs(
      vcpu.getRegs().assign({
        rip: BigInt(CODE),
        rsp: BigInt(STACK),
        rdi: BigInt(DATA),
        rflags: 2n,
        rax: 0n,
        rbx: 0n,
        rcx: 0n,
        rdx: 0n,
      }),
    );
    const t0 = performance.now();
    vcpu.setWatchdog(timeoutMs);
    try {
      for (let exits = 0; exits < 1000; exits++) {
        const exit = vcpu.run();
        if (exit.reason === "io" && exit.direction === "out" && exit.port === PORT_DONE) {
          result.outcome = "ok";
          break;
        }
        if (exit.reason === "io" && exit.direction === "out" && exit.port === PORT_VALUE) {
          values?.push(exit.value >>> 0);
          continue;
        }
        if (exit.reason === "io" && exit.direction === "out" && exit.port === PORT_FAULT) {
          result.outcome = "fault";
          result.detail = `exception ${exit.value}${VECTORS[exit.value] ?? ""}`;
          break;
        }
        if (exit.reason === "internalError") {
          result.outcome = "internalError";
          result.detail = describeInternalError(exit, vm, vcpu);
          break;
        }
        if (exit.reason === "interrupted") continue;
        result.detail = `unexpected exit ${exit.reason}`;
        break;
      }
    } catch (e) {
      if (e instanceof KvmError && e.errno === Errno.ETIMEDOUT) {
        result.outcome = "timeout";
        result.detail = `no answer in ${timeoutMs} ms`;
      } else {
        result.detail = (e as Error).message;
      }
    } finally {
      result.ms = performance.now() - t0;
      try {
        vcpu.setWatchdog(null);
      } catch { /* closed: nothing armed */ }
    }
    return result;
  }

  close(): void {
    this.#vm.close();
  }
}

const VECTORS: Readonly<Record<number, string>> = {
  0: " (#DE)",
  6: " (#UD)",
  7: " (#NM)",
  8: " (#DF)",
  13: " (#GP)",
  14: " (#PF)",
  19: " (#XM)",
};

/**
 * Clears the CPUID bits of `report.hiddenBits` in `entries` (in place) and
 * zeroes the leaves of `report.zeroLeaves` (all their subleaves). Returns
 * `entries`.
 */
export function hideUnusableFeatures(
  entries: CpuidEntry[],
  report: Pick<CpuProbeReport, "hiddenBits" | "zeroLeaves">,
): CpuidEntry[] {
  for (const e of entries) {
    if (report.zeroLeaves.includes(e.function)) {
      e.eax =
        e.ebx =
        e.ecx =
        e.edx =
          0;
      continue;
    }
    for (const bit of report.hiddenBits) {
      if (bit.leaf === e.function && bit.index === e.index) {
        e[bit.reg] = (e[bit.reg] & ~(1 << bit.bit)) >>> 0;
      }
    }
  }
  return entries;
}

/** One line per probe: `cx16: internalError (emulation failure on lock cmpxchg16b ...)`. */
export function formatProbeReport(report: CpuProbeReport): string {
  const lines = report.results.map((r) =>
    `${r.feature.padEnd(10)} ${r.outcome}${r.detail ? ` (${r.detail})` : ""}` +
    (r.outcome === "skipped" ? "" : ` ${r.ms.toFixed(1)} ms`)
  );
  lines.push(
    `hidden: ${report.unusable.length ? report.unusable.join(", ") : "nothing"} (probing took ${
      report.ms.toFixed(0)
    } ms)`,
  );
  return lines.join("\n");
}

/**
 * Linux's feature words (`arch/x86/include/asm/cpufeatures.h`): which CPUID
 * register each 32-bit word of `X86_FEATURE_*` numbers mirrors.
 */
const LINUX_FEATURE_WORDS: readonly [number, number, CpuidBit["reg"], number][] = [
  [1, 0, "edx", 0],
  [0x80000001, 0, "edx", 1],
  [1, 0, "ecx", 4],
  [0x80000001, 0, "ecx", 6],
  [7, 0, "ebx", 9],
  [0xd, 1, "eax", 10],
  [7, 1, "eax", 12],
  [7, 0, "ecx", 16],
  [7, 0, "edx", 18],
];

/**
 * The `clearcpuid=` kernel parameter that turns off, inside Linux, the
 * unusable features this KVM would not let the CPUID hide
 * (`report.stuckBits`): one `X86_FEATURE_*` number per failed probe's main
 * bit (Linux clears what depends on it, AVX with XSAVE, itself).
 * `undefined` when nothing is stuck.
 */
export function linuxClearCpuid(report: CpuProbeReport): string | undefined {
  const numbers: number[] = [];
  for (const feature of report.unusable) {
    const main = PROBES.find((p) => p.feature === feature)!.bits[0];
    if (!report.stuckBits.some((s) => sameBit(s, main))) continue;
    const word = LINUX_FEATURE_WORDS.find(([leaf, index, reg]) =>
      leaf === main.leaf && index === main.index && reg === main.reg
    );
    if (word) numbers.push(word[3] * 32 + main.bit);
  }
  return numbers.length ? `clearcpuid=${numbers.join(",")}` : undefined;
}

function sameBit(a: CpuidBit, b: CpuidBit): boolean {
  return a.leaf === b.leaf && a.index === b.index && a.reg === b.reg && a.bit === b.bit;
}
