/**
 * Minimal ACPI tables for a small PC without firmware: an RSDP (ACPI 1.0)
 * in the BIOS area where the spec says to search (0xe0000-0xfffff, 16-byte
 * aligned), an RSDT listing a FADT (with the PM timer's port, the ACPI
 * 3.579545 MHz counter) and a MADT (one local APIC per vCPU, the IOAPIC, the
 * PIT's interrupt override). No DSDT and no FACS: nothing here can sleep.
 * kvm-unit-tests reads the FADT's `pm_tmr_blk` (vmexit's `inl_from_pmtimer`).
 *
 * @example
 * ```ts
 * import { ACPI_TABLES_ADDRESS, buildAcpiTables } from "@deno-kvm/kvm/vmm";
 * const tables = buildAcpiTables({ cpus: 2 });
 * console.log(ACPI_TABLES_ADDRESS.toString(16), tables.length); // f0000 ...
 * ```
 *
 * @module
 */

import { IOAPIC_ADDRESS, LAPIC_ADDRESS } from "./mptable.ts";

/** Where {@linkcode buildAcpiTables} places the RSDP, followed by the tables (inside the BIOS area). */
export const ACPI_TABLES_ADDRESS = 0xf0000;
/** The PM timer's port (QEMU's PIIX4 places its PM block at 0x600, the timer at +8). */
export const ACPI_PM_TIMER_PORT = 0x608;

/** Options of {@linkcode buildAcpiTables}. */
export interface AcpiOptions {
  /** vCPUs (local APIC ids 0..cpus-1). */
  cpus: number;
  /** Guest physical address of the RSDP (default {@linkcode ACPI_TABLES_ADDRESS}), 16-byte aligned. */
  address?: number;
  /** The PM timer's port (default {@linkcode ACPI_PM_TIMER_PORT}; 0: none). */
  pmTimerPort?: number;
}

function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}

/** A table with the 36-byte common header (signature, length, revision, checksum, OEM ids). */
function table(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const t = new Uint8Array(36 + body.length);
  const v = new DataView(t.buffer);
  t.set(new TextEncoder().encode(signature), 0);
  v.setUint32(4, t.length, true);
  t[8] = revision;
  t.set(new TextEncoder().encode("DENOKV"), 10); // OEM id
  t.set(new TextEncoder().encode("DENOKVM "), 16); // OEM table id
  v.setUint32(24, 1, true); // OEM revision
  t.set(new TextEncoder().encode("DKVM"), 28); // creator id
  v.setUint32(32, 1, true); // creator revision
  t.set(body, 36);
  t[9] = checksum(t);
  return t;
}

/**
 * Builds the RSDP, RSDT, FADT and MADT as one block to copy to `address`
 * (the RSDP first; every table's checksum set). The block is under 512 bytes
 * for a few vCPUs.
 */
export function buildAcpiTables(options: AcpiOptions): Uint8Array {
  const base = options.address ?? ACPI_TABLES_ADDRESS;
  const pmTimerPort = options.pmTimerPort ?? ACPI_PM_TIMER_PORT;
  // FADT (revision 1, 116 bytes): only the PM timer and the SCI are described.
  const fadtBody = new Uint8Array(116 - 36);
  const f = new DataView(fadtBody.buffer);
  f.setUint16(46 - 36, 9, true); // sci_int
  f.setUint32(76 - 36, pmTimerPort, true); // pm_tmr_blk
  fadtBody[91 - 36] = pmTimerPort ? 4 : 0; // pm_tmr_len
  const fadt = table("FACP", 1, fadtBody);
  // MADT: local APIC address, flags (PC-AT compatible PICs), then entries.
  const entries: number[] = [];
  for (let id = 0; id < options.cpus; id++) entries.push(0, 8, id, id, 1, 0, 0, 0); // enabled LAPIC
  const io = IOAPIC_ADDRESS;
  entries.push(1, 12, 0, 0, io & 0xff, (io >> 8) & 0xff, (io >> 16) & 0xff, io >>> 24, 0, 0, 0, 0);
  entries.push(2, 10, 0, 0, 2, 0, 0, 0, 0, 0); // ISA IRQ 0 (the PIT) on GSI 2
  const madtBody = new Uint8Array(8 + entries.length);
  const m = new DataView(madtBody.buffer);
  m.setUint32(0, LAPIC_ADDRESS, true);
  m.setUint32(4, 1, true); // PCAT_COMPAT
  madtBody.set(entries, 8);
  const madt = table("APIC", 1, madtBody);
  // Layout: RSDP (20 bytes, padded to 32) | RSDT | FADT | MADT, each 16-byte aligned.
  const rsdtAt = base + 32;
  const rsdtLength = 36 + 8;
  const fadtAt = rsdtAt + Math.ceil(rsdtLength / 16) * 16;
  const madtAt = fadtAt + Math.ceil(fadt.length / 16) * 16;
  const rsdtBody = new Uint8Array(8);
  new DataView(rsdtBody.buffer).setUint32(0, fadtAt, true);
  new DataView(rsdtBody.buffer).setUint32(4, madtAt, true);
  const rsdt = table("RSDT", 1, rsdtBody);
  const rsdp = new Uint8Array(20);
  rsdp.set(new TextEncoder().encode("RSD PTR "), 0);
  rsdp.set(new TextEncoder().encode("DENOKV"), 9);
  rsdp[15] = 0; // revision 0: ACPI 1.0, RSDT only
  new DataView(rsdp.buffer).setUint32(16, rsdtAt, true);
  rsdp[8] = checksum(rsdp);
  const out = new Uint8Array(madtAt - base + madt.length);
  out.set(rsdp, 0);
  out.set(rsdt, rsdtAt - base);
  out.set(fadt, fadtAt - base);
  out.set(madt, madtAt - base);
  return out;
}
