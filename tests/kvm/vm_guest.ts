// Shared set-up for the VM-level integration tests (vm_*_test.ts): a tiny
// two-pass assembler for rel8 jumps between hand-written instruction bytes, a
// real-mode guest whose interrupt vectors point at labels, and a run helper
// that expects port writes.

import { ok } from "node:assert/strict";
import { Kvm, type Vcpu, type Vm } from "../../mod.ts";

/** A short (rel8) jump to a label: `op` is 0xeb (jmp) or a 0x7x Jcc opcode. */
export interface Jump {
  op: number;
  to: string;
}

/** `jmp label` (EB rel8). */
export const jmp = (to: string): Jump => ({ op: 0xeb, to });
/** `jne label` / `jnz label` (75 rel8). */
export const jne = (to: string): Jump => ({ op: 0x75, to });

/** Program items: instruction bytes, a label (a string), or a jump to a label. */
export type Item = number[] | string | Jump;

/** Lays out `items` at `origin`, resolving labels; rel8 jumps must reach. */
export function assemble(
  origin: number,
  items: Item[],
): { code: number[]; labels: Record<string, number> } {
  const labels: Record<string, number> = {};
  let at = origin;
  for (const item of items) {
    if (typeof item === "string") labels[item] = at;
    else at += Array.isArray(item) ? item.length : 2;
  }
  const code: number[] = [];
  for (const item of items) {
    if (typeof item === "string") continue;
    if (Array.isArray(item)) {
      code.push(...item);
      continue;
    }
    const target = labels[item.to];
    if (target === undefined) throw new Error(`no label ${item.to}`);
    const rel = target - (origin + code.length + 2);
    if (rel < -128 || rel > 127) throw new Error(`jump to ${item.to} is out of rel8 range`);
    code.push(item.op, rel & 0xff);
  }
  return { code, labels };
}

/** A VM with RAM at guest physical 0 and vCPU 0 in real mode at the program. */
export interface Guest extends Disposable {
  kvm: Kvm;
  vm: Vm;
  vcpu: Vcpu;
  labels: Record<string, number>;
}

/** Options of {@linkcode guest}. */
export interface GuestOptions {
  /** Where the program starts (default 0x1000). */
  entry?: number;
  /** Bytes of RAM at 0, in slot 0 (default 0x10000). */
  ramSize?: number;
  /** Create the in-kernel irqchip (before the vCPU). */
  irqchip?: boolean;
  /** Give DS a 4 GiB limit ("unreal mode"), so `67`-prefixed accesses reach the LAPIC. */
  unreal?: boolean;
  /** Real-mode interrupt vectors → program labels (written into the IVT at 0). */
  vectors?: Record<number, string>;
  /** Runs after the VM and its RAM exist, before the vCPU is created. */
  setup?: (vm: Vm) => void;
}

/** Assembles `items` into a fresh VM and points vCPU 0 at them in real mode. */
export function guest(items: Item[], options: GuestOptions = {}): Guest {
  const entry = options.entry ?? 0x1000;
  const ramSize = options.ramSize ?? 0x10000;
  const { code, labels } = assemble(entry, items);
  const kvm = Kvm.open();
  try {
    const vm = kvm.createVm();
    const ram = vm.allocateMemory(ramSize);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ramSize, memory: ram });
    ram.bytes.set(code, entry);
    const ivt = new DataView(ram.bytes.buffer, ram.bytes.byteOffset, 0x400);
    for (const [vector, label] of Object.entries(options.vectors ?? {})) {
      const target = labels[label];
      if (target === undefined || target > 0xffff) throw new Error(`bad vector label ${label}`);
      ivt.setUint16(Number(vector) * 4, target, true); // offset
      ivt.setUint16(Number(vector) * 4 + 2, 0, true); // segment 0
    }
    if (options.irqchip) vm.createIrqchip();
    options.setup?.(vm);
    const vcpu = vm.createVcpu(0);
    const sregs = vcpu.getSregs();
    for (const seg of [sregs.cs, sregs.ds, sregs.es, sregs.ss]) {
      seg.base = 0n;
      seg.selector = 0;
    }
    if (options.unreal) {
      sregs.ds.limit = 0xffffffff;
      sregs.ds.g = 1;
    }
    vcpu.setSregs(sregs);
    vcpu.setRegs(vcpu.getRegs().clear().assign({ rip: BigInt(entry), rflags: 2n, rsp: 0x8000n }));
    return { kvm, vm, vcpu, labels, [Symbol.dispose]: () => kvm.close() };
  } catch (e) {
    kvm.close();
    throw e;
  }
}

/**
 * Runs until the guest's next OUT and returns "out <port> <value>" (hex), or
 * the name of any other exit. Exits that are not OUT are not expected by the
 * callers, so they are returned for the assertion to show.
 */
export function nextOut(vcpu: Vcpu): string {
  const exit = vcpu.run();
  if (exit.reason === "io" && exit.direction === "out") {
    return `out ${exit.port.toString(16)} ${exit.value.toString(16)}`;
  }
  if (exit.reason === "mmio") {
    const data = [...exit.data].map((b) => b.toString(16)).join(",");
    return `mmio ${exit.isWrite ? "write" : "read"} ${exit.address.toString(16)} ${data}`;
  }
  return exit.reason;
}

/** Asserts that the guest's next exit is the OUT `expected` ("out 11 23"). */
export function expectOut(vcpu: Vcpu, expected: string, what: string): void {
  const got = nextOut(vcpu);
  ok(got === expected, `${what}: expected "${expected}", the guest did "${got}"`);
}
