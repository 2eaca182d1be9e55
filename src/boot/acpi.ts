/**
 * Minimal ACPI tables for a small PC without firmware: an RSDP (ACPI 1.0)
 * in the BIOS area where the spec says to search (0xe0000-0xfffff, 16-byte
 * aligned), an RSDT listing a FADT and a MADT (one local APIC per vCPU, the
 * IOAPIC, the PIT's interrupt override), and the FACS the FADT points to.
 * The FADT describes QEMU's PIIX4 power-management block: PM1a event
 * registers (status, enable) at {@linkcode ACPI_PM1_EVENT_PORT}, PM1a
 * control at {@linkcode ACPI_PM1_CONTROL_PORT} (where a guest writes
 * SLP_TYP/SLP_EN to sleep), the 3.579545 MHz PM timer at
 * {@linkcode ACPI_PM_TIMER_PORT}; the FACS holds the waking vector a
 * resumed guest continues at. kvm-unit-tests reads the FADT's `pm_tmr_blk`
 * (vmexit's `inl_from_pmtimer`) and, in `s3`, the FACS and the PM1 blocks.
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
import { ACPI_TABLES_ADDRESS } from "./address_map.ts";

export { ACPI_TABLES_ADDRESS };

/** QEMU's PIIX4 power-management block, whose registers the ports below are. */
export const ACPI_PM_BASE = 0x600;
/** The PM1a event registers: status (2 bytes) then enable (2 bytes). */
export const ACPI_PM1_EVENT_PORT: number = ACPI_PM_BASE;
/** The PM1a control register (2 bytes: SCI_EN, SLP_TYP, SLP_EN). */
export const ACPI_PM1_CONTROL_PORT: number = ACPI_PM_BASE + 4;
/** The PM timer's port (QEMU's PIIX4 places it at +8 in its PM block). */
export const ACPI_PM_TIMER_PORT: number = ACPI_PM_BASE + 8;
/** The SCI's ISA interrupt (the FADT's `sci_int`; PIIX4's is 9). */
export const ACPI_SCI_IRQ = 9;
/** Size of the FACS (ACPI 2.0 and later: 64 bytes, 64-byte aligned). */
export const ACPI_FACS_SIZE = 64;
/** Offset of the 32-bit real-mode `firmware_waking_vector` inside the FACS. */
export const ACPI_FACS_WAKING_VECTOR_OFFSET = 12;

/** Options of {@linkcode buildAcpiTables}. */
export interface AcpiOptions {
  /** vCPUs (local APIC ids 0..cpus-1). */
  cpus: number;
  /** Guest physical address of the RSDP (default {@linkcode ACPI_TABLES_ADDRESS}), 16-byte aligned. */
  address?: number;
  /** The PM timer's port (default {@linkcode ACPI_PM_TIMER_PORT}; 0: none). */
  pmTimerPort?: number;
  /**
   * The PM1a event block's port (default {@linkcode ACPI_PM1_EVENT_PORT}) and
   * the control register's (default {@linkcode ACPI_PM1_CONTROL_PORT}); 0 for
   * both: none described (and no FACS, nothing can sleep).
   */
  pm1EventPort?: number;
  /** See {@linkcode pm1EventPort}. */
  pm1ControlPort?: number;
  /** Guest physical address of a DSDT placed by the caller (`buildDsdt`); the FADT points at it. */
  dsdt?: number;
}

/** Where {@linkcode buildAcpiTables} put each table (guest physical addresses). */
export interface AcpiLayout {
  /** The RSDP. */
  rsdp: number;
  /** The RSDT. */
  rsdt: number;
  /** The FADT. */
  fadt: number;
  /** The MADT. */
  madt: number;
  /** The FACS (0 when there is none). */
  facs: number;
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

/** 16-byte alignment of table addresses; FACS needs 64. */
function align(value: number, to: number): number {
  return Math.ceil(value / to) * to;
}

/**
 * Where {@linkcode buildAcpiTables} places each table for `options` (the
 * same computation, without building them): a VMM that serves the FACS's
 * waking vector reads it at `facs` + {@linkcode ACPI_FACS_WAKING_VECTOR_OFFSET}.
 */
export function acpiLayout(options: AcpiOptions): AcpiLayout {
  const base = options.address ?? ACPI_TABLES_ADDRESS;
  const hasPm1 = (options.pm1EventPort ?? ACPI_PM1_EVENT_PORT) !== 0 &&
    (options.pm1ControlPort ?? ACPI_PM1_CONTROL_PORT) !== 0;
  // Layout: RSDP (20 bytes, padded to 32) | FACS (64-byte aligned) | RSDT | FADT | MADT.
  const facs = hasPm1 ? align(base + 32, 64) : 0;
  const rsdt = hasPm1 ? facs + ACPI_FACS_SIZE : base + 32;
  const fadt = rsdt + align(RSDT_LENGTH, 16);
  const madt = fadt + align(FADT_LENGTH, 16);
  return { rsdp: base, rsdt, fadt, madt, facs };
}

const RSDT_LENGTH = 36 + 8;
const FADT_LENGTH = 116;

/** The FACS: signature, length, no hardware signature, no waking vector yet, version 1. */
function facsTable(): Uint8Array {
  const t = new Uint8Array(ACPI_FACS_SIZE);
  const v = new DataView(t.buffer);
  t.set(new TextEncoder().encode("FACS"), 0);
  v.setUint32(4, ACPI_FACS_SIZE, true);
  t[32] = 1; // version (ACPI 2.0): the 64-bit X_firmware_waking_vector at 24 exists (zero: unused)
  return t;
}

/**
 * Builds the RSDP, RSDT, FADT, MADT and FACS as one block to copy to
 * `address` (the RSDP first; every table's checksum set; positions as
 * {@linkcode acpiLayout} gives them). The block is under 512 bytes for a few
 * vCPUs.
 */
export function buildAcpiTables(options: AcpiOptions): Uint8Array {
  const base = options.address ?? ACPI_TABLES_ADDRESS;
  const pmTimerPort = options.pmTimerPort ?? ACPI_PM_TIMER_PORT;
  const layout = acpiLayout(options);
  const pm1Event = layout.facs ? options.pm1EventPort ?? ACPI_PM1_EVENT_PORT : 0;
  const pm1Control = layout.facs ? options.pm1ControlPort ?? ACPI_PM1_CONTROL_PORT : 0;
  // FADT (revision 1, 116 bytes): the FACS, the SCI, the PM1a blocks and the PM timer.
  // No SMI command port: the machine is in ACPI mode from the start (SCI_EN reads 1).
  const fadtBody = new Uint8Array(FADT_LENGTH - 36);
  const f = new DataView(fadtBody.buffer);
  f.setUint32(36 - 36, layout.facs, true); // firmware_ctrl
  f.setUint32(40 - 36, options.dsdt ?? 0, true); // dsdt
  f.setUint16(46 - 36, ACPI_SCI_IRQ, true); // sci_int
  f.setUint32(56 - 36, pm1Event, true); // pm1a_evt_blk
  f.setUint32(64 - 36, pm1Control, true); // pm1a_cnt_blk
  f.setUint32(76 - 36, pmTimerPort, true); // pm_tmr_blk
  fadtBody[88 - 36] = pm1Event ? 4 : 0; // pm1_evt_len
  fadtBody[89 - 36] = pm1Control ? 2 : 0; // pm1_cnt_len
  fadtBody[91 - 36] = pmTimerPort ? 4 : 0; // pm_tmr_len
  fadtBody[108 - 36] = 0x32; // century: the CMOS byte the RTC keeps it in
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
  const rsdtBody = new Uint8Array(8);
  new DataView(rsdtBody.buffer).setUint32(0, layout.fadt, true);
  new DataView(rsdtBody.buffer).setUint32(4, layout.madt, true);
  const rsdt = table("RSDT", 1, rsdtBody);
  const rsdp = new Uint8Array(20);
  rsdp.set(new TextEncoder().encode("RSD PTR "), 0);
  rsdp.set(new TextEncoder().encode("DENOKV"), 9);
  rsdp[15] = 0; // revision 0: ACPI 1.0, RSDT only
  new DataView(rsdp.buffer).setUint32(16, layout.rsdt, true);
  rsdp[8] = checksum(rsdp);
  const out = new Uint8Array(layout.madt - base + madt.length);
  out.set(rsdp, 0);
  if (layout.facs) out.set(facsTable(), layout.facs - base); // no checksum: the OS writes it
  out.set(rsdt, layout.rsdt - base);
  out.set(fadt, layout.fadt - base);
  out.set(madt, layout.madt - base);
  return out;
}
