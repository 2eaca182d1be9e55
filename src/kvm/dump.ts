/**
 * The text of `Vcpu.dump()`, in the spirit of libkvm's `kvm_dump_vcpu`:
 * general registers, segments, descriptor tables, control registers, EFER,
 * APIC base, a few system MSRs and the pending events.
 *
 * @module
 */

import type { MsrEntry } from "../abi/msr.ts";
import type { Struct } from "../abi/struct.ts";
import type { kvmVcpuEventsFields } from "../abi/vcpu_state.ts";
import type { kvmRegsFields, kvmSegmentFields, kvmSregsFields } from "../abi/x86.ts";
import type { InternalErrorExit } from "./exit.ts";
import type { Vcpu } from "./vcpu.ts";
import type { Vm } from "./vm.ts";
import { describeX86, type X86Mode } from "./x86_decode.ts";

/** Names of the MSRs the dump shows. */
export const DUMP_MSRS: Readonly<Record<number, string>> = {
  0x10: "TSC",
  0x174: "SYSENTER_CS",
  0x175: "SYSENTER_ESP",
  0x176: "SYSENTER_EIP",
  0xc0000081: "STAR",
  0xc0000082: "LSTAR",
  0xc0000083: "CSTAR",
  0xc0000084: "SFMASK",
  0xc0000100: "FS_BASE",
  0xc0000101: "GS_BASE",
  0xc0000102: "KERNEL_GS_BASE",
};

const MP_STATES = [
  "runnable",
  "uninitialized",
  "init received",
  "halted",
  "sipi received",
  "stopped",
  "check stop",
  "operating",
  "load",
  "ap reset hold",
  "suspended",
];

const h = (v: number | bigint, width = 16) => v.toString(16).padStart(width, "0");

function segment(name: string, s: Struct<typeof kvmSegmentFields>): string {
  return `${name.padEnd(3)} ${h(s.selector, 4)} base ${h(s.base)} limit ${h(s.limit, 8)} ` +
    `type ${s.type.toString(16)} p ${s.present} dpl ${s.dpl} db ${s.db} s ${s.s} l ${s.l} ` +
    `g ${s.g} avl ${s.avl}${s.unusable ? " unusable" : ""}`;
}

/** What the dump is made of. */
export interface DumpParts {
  /** "vCPU 0". */
  label: string;
  /** General registers. */
  regs: Struct<typeof kvmRegsFields>;
  /** Special registers. */
  sregs: Struct<typeof kvmSregsFields>;
  /** Pending events. */
  events: Struct<typeof kvmVcpuEventsFields>;
  /** `KVM_MP_STATE_*`. */
  mpState: number;
  /** The MSRs of {@linkcode DUMP_MSRS} the kernel could read. */
  msrs: MsrEntry[];
  /** The instruction at RIP, when known (see {@linkcode instructionAtRip}). */
  instruction?: string;
}

/** Formats a vCPU dump. */
export function formatDump(p: DumpParts): string {
  const { regs: r, sregs: s, events: e } = p;
  const lines = [`${p.label}:`];
  const row = (names: (keyof typeof r)[]) =>
    names.map((n) => `${String(n).toUpperCase().padEnd(3)} ${h(r[n] as bigint)}`).join("  ");
  lines.push(row(["rax", "rbx", "rcx", "rdx"]));
  lines.push(row(["rsi", "rdi", "rsp", "rbp"]));
  lines.push(row(["r8", "r9", "r10", "r11"]));
  lines.push(row(["r12", "r13", "r14", "r15"]));
  lines.push(`RIP ${h(r.rip)}  RFLAGS ${h(r.rflags, 8)}`);
  if (p.instruction) lines.push(`instruction at RIP: ${p.instruction}`);
  for (const name of ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const) {
    lines.push(segment(name.toUpperCase(), s[name]));
  }
  lines.push(`GDT base ${h(s.gdt.base)} limit ${h(s.gdt.limit, 4)}`);
  lines.push(`IDT base ${h(s.idt.base)} limit ${h(s.idt.limit, 4)}`);
  lines.push(`CR0 ${h(s.cr0)}  CR2 ${h(s.cr2)}  CR3 ${h(s.cr3)}`);
  lines.push(`CR4 ${h(s.cr4)}  CR8 ${h(s.cr8)}  EFER ${h(s.efer)}`);
  lines.push(`APIC_BASE ${h(s.apicBase)}`);
  const bitmap = [...s.interruptBitmap].map((w) => h(w)).join(" ");
  lines.push(`interrupt bitmap ${bitmap}`);
  for (const m of p.msrs) lines.push(`MSR ${DUMP_MSRS[m.index] ?? h(m.index, 8)} ${h(m.data)}`);
  lines.push(
    `exception: injected ${e.exceptionInjected} pending ${e.exceptionPending} nr ${e.exceptionNr}` +
      (e.exceptionHasErrorCode ? ` error ${h(e.exceptionErrorCode, 8)}` : ""),
  );
  lines.push(
    `interrupt: injected ${e.interruptInjected} nr ${e.interruptNr} soft ${e.interruptSoft} ` +
      `shadow ${e.interruptShadow}`,
  );
  lines.push(`nmi: injected ${e.nmiInjected} pending ${e.nmiPending} masked ${e.nmiMasked}`);
  lines.push(`smi: smm ${e.smiSmm} pending ${e.smiPending}  sipi vector ${e.sipiVector}`);
  lines.push(`mp state: ${MP_STATES[p.mpState] ?? p.mpState}`);
  return lines.join("\n");
}

/**
 * The instruction at the vCPU's RIP, read from guest memory (RIP translated
 * through the vCPU's page tables with `KVM_TRANSLATE`, decoded for the code
 * segment's mode), e.g. `xrstor64 (48 0f ae 2f)`; a sentence saying why
 * when it cannot be read.
 */
export function instructionAtRip(vm: Vm, vcpu: Vcpu): string {
  try {
    const rip = vcpu.getRegs().rip;
    const sregs = vcpu.getSregs();
    const mode: X86Mode = sregs.cs.l ? 64 : sregs.cs.db ? 32 : 16;
    const linear = sregs.cs.l ? rip : sregs.cs.base + rip;
    const t = vcpu.translate(linear);
    if (!t.valid) return `not readable: rip ${h(rip)} is not mapped`;
    const bytes = vm.readGuest(Number(t.physicalAddress), 15);
    return describeX86(bytes, mode);
  } catch (e) {
    return `not readable: ${(e as Error).message}`;
  }
}

/**
 * One line for a `KVM_EXIT_INTERNAL_ERROR`: `emulation failure on lock
 * cmpxchg16b (f0 48 0f c7 4d 20)`. The instruction comes from the exit's
 * bytes when KVM gave them, else from guest memory at RIP
 * ({@linkcode instructionAtRip}).
 */
export function describeInternalError(exit: InternalErrorExit, vm: Vm, vcpu: Vcpu): string {
  const name = exit.suberror === 1 ? "emulation failure" : `suberror ${exit.suberror}`;
  if (exit.instruction) return `${name} on ${exit.instruction}`;
  return `${name}, instruction at RIP: ${instructionAtRip(vm, vcpu)}`;
}
