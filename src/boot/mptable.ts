/**
 * The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI
 * learns its CPUs (one processor entry per vCPU, by APIC id), its I/O APIC and
 * how the 16 ISA interrupts reach it. Linux finds the floating pointer by
 * scanning the last KiB of conventional memory (among other places).
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";
import { IOAPIC_ADDRESS, LAPIC_ADDRESS, MPTABLE_ADDRESS } from "./address_map.ts";

export { IOAPIC_ADDRESS, LAPIC_ADDRESS, MPTABLE_ADDRESS };

const FLOATING_SIZE = 16;
const HEADER_SIZE = 44;
const PROCESSOR_SIZE = 20;
const SMALL_ENTRY_SIZE = 8;
const ISA_IRQS = 16;

const ENTRY_PROCESSOR = 0;
const ENTRY_BUS = 1;
const ENTRY_IOAPIC = 2;
const ENTRY_IO_INTERRUPT = 3;
const ENTRY_LOCAL_INTERRUPT = 4;

const INT_TYPE_INT = 0;
const INT_TYPE_NMI = 1;
const INT_TYPE_EXTINT = 3;

const CPU_ENABLED = 1;
const CPU_BOOTSTRAP = 2;

/** Bytes an MP table for `cpus` processors takes. */
export function mpTableSize(cpus: number): number {
  return FLOATING_SIZE + HEADER_SIZE + cpus * PROCESSOR_SIZE +
    (1 + 1 + ISA_IRQS + 2) * SMALL_ENTRY_SIZE;
}

function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}

function ascii(bytes: Uint8Array, at: number, text: string): void {
  for (let i = 0; i < text.length; i++) bytes[at + i] = text.charCodeAt(i);
}

/**
 * Builds an MP table for `cpus` processors with APIC ids 0..cpus-1 (id 0 the
 * bootstrap processor), an ISA bus, one I/O APIC (id `cpus`) whose pins 0-15
 * carry ISA IRQs 0-15 (KVM's default in-kernel routing), and LINT0 as ExtINT,
 * LINT1 as NMI on every local APIC. The bytes belong at `address` (the
 * floating pointer points to the table right after it).
 *
 * @example
 * ```ts
 * import { buildMpTable, MPTABLE_ADDRESS } from "@deno-kvm/kvm/vmm";
 * const table = buildMpTable(2);
 * console.log(new TextDecoder().decode(table.subarray(0, 4)), table.length); // _MP_ 260
 * ```
 */
export function buildMpTable(cpus: number, address = MPTABLE_ADDRESS): Uint8Array {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 254) {
    throw new KvmError("build MP table", Errno.EINVAL, `${cpus} CPUs: 1 to 254 fit an MP table`);
  }
  const size = mpTableSize(cpus);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  const tableAt = FLOATING_SIZE;
  const ioapicId = cpus;

  // The floating pointer structure.
  ascii(out, 0, "_MP_");
  view.setUint32(4, address + tableAt, true); // physical address of the configuration table
  out[8] = 1; // length in 16-byte units
  out[9] = 4; // specification revision 1.4
  // out[11] = 0: a configuration table is present (no default configuration).

  // The configuration table header.
  ascii(out, tableAt, "PCMP");
  out[tableAt + 6] = 4; // revision 1.4
  ascii(out, tableAt + 8, "DENO-KVM");
  ascii(out, tableAt + 16, "VIRTUAL PC  ");
  view.setUint32(tableAt + 36, LAPIC_ADDRESS, true);

  let at = tableAt + HEADER_SIZE;
  let entries = 0;
  for (let id = 0; id < cpus; id++, entries++) {
    out[at] = ENTRY_PROCESSOR;
    out[at + 1] = id; // local APIC id
    out[at + 2] = 0x14; // local APIC version (integrated)
    out[at + 3] = CPU_ENABLED | (id === 0 ? CPU_BOOTSTRAP : 0);
    view.setUint32(at + 4, 0x600, true); // CPU signature: family 6
    view.setUint32(at + 8, 0x201, true); // feature flags: FPU, APIC
    at += PROCESSOR_SIZE;
  }
  out[at] = ENTRY_BUS;
  out[at + 1] = 0; // bus id
  ascii(out, at + 2, "ISA   ");
  at += SMALL_ENTRY_SIZE;
  entries++;

  out[at] = ENTRY_IOAPIC;
  out[at + 1] = ioapicId;
  out[at + 2] = 0x11; // I/O APIC version
  out[at + 3] = 1; // enabled
  view.setUint32(at + 4, IOAPIC_ADDRESS, true);
  at += SMALL_ENTRY_SIZE;
  entries++;

  for (let irq = 0; irq < ISA_IRQS; irq++, entries++) {
    out[at] = ENTRY_IO_INTERRUPT;
    out[at + 1] = INT_TYPE_INT;
    // flags 0: polarity and trigger conform to the bus (ISA: active high, edge)
    out[at + 4] = 0; // source bus
    out[at + 5] = irq; // source bus IRQ
    out[at + 6] = ioapicId;
    out[at + 7] = irq; // I/O APIC pin
    at += SMALL_ENTRY_SIZE;
  }
  for (const [type, lint] of [[INT_TYPE_EXTINT, 0], [INT_TYPE_NMI, 1]]) {
    out[at] = ENTRY_LOCAL_INTERRUPT;
    out[at + 1] = type;
    out[at + 4] = 0; // source bus
    out[at + 5] = 0; // source IRQ
    out[at + 6] = 0xff; // every local APIC
    out[at + 7] = lint;
    at += SMALL_ENTRY_SIZE;
    entries++;
  }

  const tableLength = at - tableAt;
  view.setUint16(tableAt + 4, tableLength, true);
  view.setUint16(tableAt + 34, entries, true);
  out[tableAt + 7] = checksum(out.subarray(tableAt, at));
  out[10] = checksum(out.subarray(0, FLOATING_SIZE));
  return out;
}
