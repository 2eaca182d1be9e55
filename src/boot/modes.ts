/**
 * Processor-mode setup: one call puts a vCPU in real mode, flat 32-bit
 * protected mode or 64-bit long mode, writing the GDT and (for long mode) an
 * identity-mapped page table into guest RAM.
 *
 * The GDT follows the Linux boot protocol (Documentation/arch/x86/boot.rst):
 * a flat code segment at selector `0x10` (`__BOOT_CS`), a flat data segment at
 * `0x18` (`__BOOT_DS`), and a TSS at `0x20` for the task register that
 * hardware virtualization requires to be valid.
 *
 * @example
 * ```ts
 * import { Kvm } from "@deno-kvm/kvm";
 * import { setupLongMode } from "@deno-kvm/kvm";
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * const ram = vm.allocateMemory(0x400000);
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
 * ram.bytes.set([0xf4], 0x100000); // hlt
 * const vcpu = vm.createVcpu(0);
 * const layout = setupLongMode(vm, vcpu, { entry: 0x100000, stack: 0x8000 });
 * console.log(layout.pml4Address.toString(16)); // 9000
 * ```
 *
 * @module
 */

import type { Struct } from "../abi/struct.ts";
import type { kvmSegmentFields } from "../abi/x86.ts";
import { Errno, KvmError } from "../errors.ts";
import { hex, PAGE_SIZE } from "../kvm/constants.ts";
import type { Sregs, Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import { DEFAULT_GDT_ADDRESS, DEFAULT_PAGE_TABLE_ADDRESS } from "./address_map.ts";

export { DEFAULT_GDT_ADDRESS, DEFAULT_PAGE_TABLE_ADDRESS };

/** CR0.PE: protected mode. */
export const CR0_PE = 1n << 0n;
/** CR0.ET: extension type (always 1 on modern CPUs). */
export const CR0_ET = 1n << 4n;
/** CR0.NW: not write-through (cleared by the setup helpers). */
export const CR0_NW = 1n << 29n;
/** CR0.CD: cache disable (cleared by the setup helpers). */
export const CR0_CD = 1n << 30n;
/** CR0.PG: paging. */
export const CR0_PG = 1n << 31n;
/** CR4.PAE: physical address extension, required by long mode. */
export const CR4_PAE = 1n << 5n;
/** EFER.LME: long mode enable. */
export const EFER_LME = 1n << 8n;
/** EFER.LMA: long mode active. */
export const EFER_LMA = 1n << 10n;

/** Code segment selector (`__BOOT_CS` of the Linux boot protocol). */
export const CODE_SELECTOR = 0x10;
/** Data segment selector (`__BOOT_DS` of the Linux boot protocol). */
export const DATA_SELECTOR = 0x18;
/** Task-state segment selector. */
export const TSS_SELECTOR = 0x20;

/** Access bytes and flag nibbles of the descriptors the helpers write. */
const ACCESS_CODE = 0x9b; // present, DPL 0, code/data, execute/read, accessed
const ACCESS_DATA = 0x93; // present, DPL 0, code/data, read/write, accessed
const ACCESS_TSS = 0x8b; // present, DPL 0, system, busy 32/64-bit TSS
const FLAGS_32 = 0xc; // 4 KiB granularity, 32-bit default size
const FLAGS_64 = 0xa; // 4 KiB granularity, long mode (L=1, D=0)

/**
 * Encodes one 8-byte segment descriptor (a GDT or LDT entry).
 *
 * @param base 32-bit linear base address
 * @param limit 20-bit limit (in 4 KiB units when the G flag is set)
 * @param access the access byte: P (bit 7), DPL (bits 5-6), S (bit 4), type (bits 0-3)
 * @param flags the flag nibble: G (bit 3), D/B (bit 2), L (bit 1), AVL (bit 0)
 * @returns the descriptor as a 64-bit value, to be stored little-endian
 *
 * @example
 * ```ts
 * import { gdtEntry } from "@deno-kvm/kvm/vmm";
 * // Flat 4 GiB 32-bit code segment.
 * console.log(gdtEntry(0, 0xfffff, 0x9b, 0xc).toString(16)); // cf9b000000ffff
 * ```
 */
export function gdtEntry(base: number, limit: number, access: number, flags: number): bigint {
  const b = BigInt(base >>> 0);
  const l = BigInt(limit & 0xfffff);
  return (l & 0xffffn) |
    ((b & 0xffffffn) << 16n) |
    (BigInt(access & 0xff) << 40n) |
    ((l >> 16n) << 48n) |
    (BigInt(flags & 0xf) << 52n) |
    ((b >> 24n) << 56n);
}

type Segment = Struct<typeof kvmSegmentFields>;

/** Fills a `kvm_segment` with what the CPU would cache from the descriptor. */
function loadSegment(
  seg: Segment,
  selector: number,
  base: number,
  limit: number,
  access: number,
  flags: number,
): void {
  const g = (flags >> 3) & 1;
  seg.assign({
    selector,
    base: BigInt(base),
    limit: g ? limit * PAGE_SIZE + 0xfff : limit,
    type: access & 0xf,
    s: (access >> 4) & 1,
    dpl: (access >> 5) & 3,
    present: (access >> 7) & 1,
    avl: flags & 1,
    l: (flags >> 1) & 1,
    db: (flags >> 2) & 1,
    g,
    unusable: (access >> 7) & 1 ? 0 : 1,
  });
}

/** Options of {@linkcode setupRealMode}. */
export interface RealModeOptions {
  /** Guest physical address of the first instruction, below 1 MiB. */
  entry: number;
  /** Initial SP (with SS = 0); 0 when omitted. */
  stack?: number;
}

/** What {@linkcode setupRealMode} chose. */
export interface RealModeLayout {
  /** The entry, as CS:IP. */
  cs: number;
  /** IP. */
  ip: number;
  /** SP. */
  stack: number;
}

/** Options shared by the protected- and long-mode helpers. */
export interface FlatModeOptions {
  /** Linear (= physical) address of the first instruction. */
  entry: number;
  /** Initial ESP/RSP; 0 when omitted. */
  stack?: number;
  /** Where the GDT goes in guest RAM (default {@linkcode DEFAULT_GDT_ADDRESS}). */
  gdtAddress?: number;
}

/** Options of {@linkcode setupLongMode}. */
export interface LongModeOptions extends FlatModeOptions {
  /**
   * Where the page tables go in guest RAM, page aligned (default
   * {@linkcode DEFAULT_PAGE_TABLE_ADDRESS}). They take 2 + `identityMapGiB`
   * pages with 2 MiB pages, 2 pages with 1 GiB pages.
   */
  pageTableAddress?: number;
  /** How much of the physical address space to identity-map, in GiB, 1 to 512 (default 1). */
  identityMapGiB?: number;
  /**
   * Page size of the identity map (default `"2M"`). `"1G"` needs the guest's
   * CPUID to report 1 GiB pages (`pdpe1gb`): set it from
   * `Kvm.getSupportedCpuid()` with `Vcpu.setCpuid2` first.
   */
  hugePages?: "2M" | "1G";
}

/** What {@linkcode setupProtectedMode} wrote and chose. */
export interface ProtectedModeLayout {
  /** EIP. */
  entry: number;
  /** ESP. */
  stack: number;
  /** Guest physical address of the GDT. */
  gdtAddress: number;
  /** GDT size in bytes. */
  gdtSize: number;
  /** CS. */
  codeSelector: number;
  /** DS, ES, FS, GS, SS. */
  dataSelector: number;
  /** TR. */
  tssSelector: number;
}

/** What {@linkcode setupLongMode} wrote and chose. */
export interface LongModeLayout extends ProtectedModeLayout {
  /** CR3: the PML4. */
  pml4Address: number;
  /** The page-directory-pointer table. */
  pdptAddress: number;
  /** The first page directory (2 MiB pages only; one page per GiB follows it). */
  pdAddress?: number;
  /** First byte after the page tables. */
  pageTableEnd: number;
  /** Bytes identity-mapped from address 0. */
  identityMapBytes: number;
}

function fail(op: string, errno: number, detail: string): never {
  throw new KvmError(op, errno, detail);
}

function checkAddress(op: string, what: string, value: number, limit: number): void {
  if (!Number.isSafeInteger(value) || value < 0 || value >= limit) {
    fail(op, Errno.EINVAL, `${what} ${value} is not an address below ${hex(limit)}`);
  }
}

/**
 * Puts the vCPU in 16-bit real mode at `entry`: CS:IP is chosen so that
 * CS × 16 + IP = entry, DS = ES = FS = GS = SS = 0 with 64 KiB limits, CR0.PE
 * clear, the general registers zeroed, RFLAGS = 2 (interrupts disabled).
 * Writes nothing to guest RAM.
 *
 * @example
 * ```ts
 * import { Kvm } from "@deno-kvm/kvm";
 * import { setupRealMode } from "@deno-kvm/kvm";
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * const ram = vm.allocateMemory(0x10000);
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
 * ram.bytes.set([0xf4], 0x1000); // hlt
 * const vcpu = vm.createVcpu(0);
 * setupRealMode(vcpu, { entry: 0x1000, stack: 0x8000 });
 * ```
 */
export function setupRealMode(vcpu: Vcpu, options: RealModeOptions): RealModeLayout {
  const op = "setupRealMode";
  const { entry, stack = 0 } = options;
  checkAddress(op, "entry", entry, 0x100000);
  checkAddress(op, "stack", stack, 0x10000);
  const cs = (entry >>> 4) & 0xf000;
  const ip = entry - cs * 16;
  const sregs = vcpu.getSregs();
  for (const seg of [sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss]) {
    // Accessed data (type 3) for data segments, execute/read (11) for CS, as after reset.
    loadSegment(seg, 0, 0, 0xffff, seg === sregs.cs ? 0x9b : 0x93, 0);
  }
  loadSegment(sregs.cs, cs, cs * 16, 0xffff, 0x9b, 0);
  sregs.cr0 &= ~(CR0_PE | CR0_PG);
  sregs.cr4 &= ~CR4_PAE;
  sregs.efer &= ~(EFER_LME | EFER_LMA);
  vcpu.setSregs(sregs);
  vcpu.setRegs(vcpu.getRegs().clear().assign({ rip: ip, rsp: stack, rflags: 2n }));
  return { cs, ip, stack };
}

/** Writes the GDT and loads its segments into `sregs`. */
function writeGdt(
  op: string,
  vm: Vm,
  gdtAddress: number,
  codeFlags: number,
): { sregs: (s: Sregs) => void; size: number } {
  checkAddress(op, "gdtAddress", gdtAddress, 2 ** 32);
  // Entries: 0 null, 1 null, 2 code (0x10), 3 data (0x18), 4-5 TSS (0x20, 16 bytes in long mode).
  const entries = [
    0n,
    0n,
    gdtEntry(0, 0xfffff, ACCESS_CODE, codeFlags),
    gdtEntry(0, 0xfffff, ACCESS_DATA, FLAGS_32),
    gdtEntry(0, 0x67, ACCESS_TSS, 0),
    0n,
  ];
  const size = entries.length * 8;
  const bytes = vm.guestMemory(gdtAddress, size);
  const view = new DataView(bytes.buffer, bytes.byteOffset, size);
  entries.forEach((e, i) => view.setBigUint64(i * 8, e, true));
  return {
    size,
    sregs: (sregs) => {
      loadSegment(sregs.cs, CODE_SELECTOR, 0, 0xfffff, ACCESS_CODE, codeFlags);
      for (const seg of [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss]) {
        loadSegment(seg, DATA_SELECTOR, 0, 0xfffff, ACCESS_DATA, FLAGS_32);
      }
      loadSegment(sregs.tr, TSS_SELECTOR, 0, 0x67, ACCESS_TSS, 0);
      sregs.gdt.base = BigInt(gdtAddress);
      sregs.gdt.limit = size - 1;
      // No IDT: the guest loads its own (an interrupt before that triple-faults).
      sregs.idt.base = 0n;
      sregs.idt.limit = 0;
    },
  };
}

/**
 * Puts the vCPU in flat 32-bit protected mode at `entry`: writes a GDT (null,
 * null, 4 GiB code at `0x10`, 4 GiB data at `0x18`, TSS at `0x20`) at
 * `gdtAddress`, loads CS = 0x10, DS = ES = FS = GS = SS = 0x18, TR = 0x20,
 * sets CR0.PE (paging off, caches on), an empty IDT, zeroed general
 * registers, EIP = entry, ESP = stack, EFLAGS = 2 (interrupts disabled).
 * A GDT outside guest RAM gets a KvmError with `EFAULT`.
 *
 * @example
 * ```ts
 * import { Kvm } from "@deno-kvm/kvm";
 * import { setupProtectedMode } from "@deno-kvm/kvm";
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * const ram = vm.allocateMemory(0x200000);
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
 * ram.bytes.set([0xf4], 0x100000); // hlt
 * const vcpu = vm.createVcpu(0);
 * setupProtectedMode(vm, vcpu, { entry: 0x100000, stack: 0x8000 });
 * ```
 */
export function setupProtectedMode(
  vm: Vm,
  vcpu: Vcpu,
  options: FlatModeOptions,
): ProtectedModeLayout {
  const op = "setupProtectedMode";
  const { entry, stack = 0, gdtAddress = DEFAULT_GDT_ADDRESS } = options;
  checkAddress(op, "entry", entry, 2 ** 32);
  checkAddress(op, "stack", stack, 2 ** 32);
  const gdt = writeGdt(op, vm, gdtAddress, FLAGS_32);
  const sregs = vcpu.getSregs();
  gdt.sregs(sregs);
  sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & ~(CR0_PG | CR0_CD | CR0_NW);
  sregs.cr4 &= ~CR4_PAE;
  sregs.efer &= ~(EFER_LME | EFER_LMA);
  return enterFlatMode(vcpu, sregs, entry, stack, gdtAddress, gdt.size);
}

/**
 * The last step both flat modes share: load the prepared special registers,
 * zero the general ones except RIP/RSP, and describe the layout.
 */
function enterFlatMode(
  vcpu: Vcpu,
  sregs: Sregs,
  entry: number,
  stack: number,
  gdtAddress: number,
  gdtSize: number,
): ProtectedModeLayout {
  vcpu.setSregs(sregs);
  vcpu.setRegs(vcpu.getRegs().clear().assign({ rip: entry, rsp: stack, rflags: 2n }));
  return {
    entry,
    stack,
    gdtAddress,
    gdtSize,
    codeSelector: CODE_SELECTOR,
    dataSelector: DATA_SELECTOR,
    tssSelector: TSS_SELECTOR,
  };
}

const PTE_PRESENT = 1n;
const PTE_WRITE = 2n;
const PTE_HUGE = 0x80n;
const GiB = 2 ** 30;

/**
 * Puts the vCPU in 64-bit long mode at `entry`: writes the GDT of
 * {@linkcode setupProtectedMode} with a 64-bit code segment (L = 1), and
 * page tables at `pageTableAddress` that identity-map the first
 * `identityMapGiB` GiB (PML4 → PDPT → page directories of 2 MiB pages, or
 * PML4 → PDPT of 1 GiB pages); sets CR3, CR4.PAE, EFER.LME | LMA and
 * CR0.PE | PG, an empty IDT, zeroed general registers, RIP = entry,
 * RSP = stack, RFLAGS = 2. Tables outside guest RAM get a KvmError with
 * `EFAULT`, bad sizes or alignment `EINVAL`.
 *
 * @example
 * ```ts
 * import { Kvm } from "@deno-kvm/kvm";
 * import { setupLongMode } from "@deno-kvm/kvm";
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * const ram = vm.allocateMemory(0x400000);
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
 * ram.bytes.set([0xf4], 0x200000); // hlt
 * const vcpu = vm.createVcpu(0);
 * setupLongMode(vm, vcpu, { entry: 0x200000, stack: 0x8000, identityMapGiB: 4 });
 * ```
 */
export function setupLongMode(vm: Vm, vcpu: Vcpu, options: LongModeOptions): LongModeLayout {
  const op = "setupLongMode";
  const {
    entry,
    stack = 0,
    gdtAddress = DEFAULT_GDT_ADDRESS,
    pageTableAddress = DEFAULT_PAGE_TABLE_ADDRESS,
    identityMapGiB = 1,
    hugePages = "2M",
  } = options;
  if (!Number.isInteger(identityMapGiB) || identityMapGiB < 1 || identityMapGiB > 512) {
    fail(op, Errno.EINVAL, `identityMapGiB ${identityMapGiB} is not an integer from 1 to 512`);
  }
  checkAddress(op, "entry", entry, identityMapGiB * GiB);
  checkAddress(op, "stack", stack, identityMapGiB * GiB + 1);
  if (hugePages !== "2M" && hugePages !== "1G") {
    fail(op, Errno.EINVAL, `hugePages ${hugePages} is neither "2M" nor "1G"`);
  }
  if (!Number.isSafeInteger(pageTableAddress) || pageTableAddress % PAGE_SIZE !== 0) {
    fail(op, Errno.EINVAL, `pageTableAddress ${hex(pageTableAddress)} is not page aligned`);
  }
  const pdCount = hugePages === "2M" ? identityMapGiB : 0;
  const pml4Address = pageTableAddress;
  const pdptAddress = pml4Address + PAGE_SIZE;
  const pdAddress = pdptAddress + PAGE_SIZE;
  const pageTableEnd = pdAddress + pdCount * PAGE_SIZE;
  const tables = vm.guestMemory(pml4Address, pageTableEnd - pml4Address);
  const gdt = writeGdt(op, vm, gdtAddress, FLAGS_64);

  tables.fill(0);
  const view = new DataView(tables.buffer, tables.byteOffset, tables.byteLength);
  const entry64 = (table: number, index: number, value: bigint) =>
    view.setBigUint64(table - pml4Address + index * 8, value, true);
  entry64(pml4Address, 0, BigInt(pdptAddress) | PTE_PRESENT | PTE_WRITE);
  for (let gib = 0; gib < identityMapGiB; gib++) {
    if (hugePages === "1G") {
      entry64(pdptAddress, gib, (BigInt(gib) << 30n) | PTE_PRESENT | PTE_WRITE | PTE_HUGE);
      continue;
    }
    const pd = pdAddress + gib * PAGE_SIZE;
    entry64(pdptAddress, gib, BigInt(pd) | PTE_PRESENT | PTE_WRITE);
    for (let i = 0; i < 512; i++) {
      const address = (BigInt(gib) << 30n) | (BigInt(i) << 21n);
      entry64(pd, i, address | PTE_PRESENT | PTE_WRITE | PTE_HUGE);
    }
  }

  const sregs = vcpu.getSregs();
  gdt.sregs(sregs);
  sregs.cr3 = BigInt(pml4Address);
  sregs.cr4 |= CR4_PAE;
  sregs.efer |= EFER_LME | EFER_LMA;
  sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET | CR0_PG) & ~(CR0_CD | CR0_NW);
  return {
    ...enterFlatMode(vcpu, sregs, entry, stack, gdtAddress, gdt.size),
    pml4Address,
    pdptAddress,
    ...(pdCount ? { pdAddress } : {}),
    pageTableEnd,
    identityMapBytes: identityMapGiB * GiB,
  };
}
