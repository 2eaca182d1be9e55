// The minimal ACPI tables (src/boot/acpi.ts) read the way kvm-unit-tests'
// lib/acpi.c reads them: RSDP signature on a 16-byte boundary, RSDT entries,
// FADT's pm_tmr_blk, valid checksums. And the PM timer's counter.

import { deepStrictEqual, ok } from "node:assert/strict";
import { ACPI_PM_TIMER_PORT, ACPI_TABLES_ADDRESS, buildAcpiTables } from "../../src/boot/acpi.ts";
import { AcpiPmTimer } from "../../src/devices/acpi_pm_timer.ts";

const sum = (b: Uint8Array) => b.reduce((s, x) => (s + x) & 0xff, 0);
const text = (b: Uint8Array, at: number, n: number) =>
  new TextDecoder().decode(b.subarray(at, at + n));

Deno.test("acpi: RSDP -> RSDT -> FADT (PM timer) and MADT (a LAPIC per vCPU), checksums valid", () => {
  const t = buildAcpiTables({ cpus: 3 });
  const v = new DataView(t.buffer);
  deepStrictEqual(text(t, 0, 8), "RSD PTR ");
  deepStrictEqual(sum(t.subarray(0, 20)), 0);
  const at = (address: number) => address - ACPI_TABLES_ADDRESS;
  const rsdt = at(v.getUint32(16, true));
  deepStrictEqual(text(t, rsdt, 4), "RSDT");
  const rsdtLength = v.getUint32(rsdt + 4, true);
  deepStrictEqual(sum(t.subarray(rsdt, rsdt + rsdtLength)), 0);
  const tables = new Map<string, number>();
  for (let o = rsdt + 36; o < rsdt + rsdtLength; o += 4) {
    const p = at(v.getUint32(o, true));
    tables.set(text(t, p, 4), p);
    deepStrictEqual(sum(t.subarray(p, p + v.getUint32(p + 4, true))), 0, text(t, p, 4));
  }
  const fadt = tables.get("FACP")!;
  deepStrictEqual(v.getUint32(fadt + 76, true), ACPI_PM_TIMER_PORT);
  deepStrictEqual(v.getUint32(fadt + 36, true), 0); // no FACS: nothing can sleep
  const madt = tables.get("APIC")!;
  const lapics: number[] = [];
  for (let o = madt + 44; o < madt + v.getUint32(madt + 4, true); o += t[o + 1]) {
    if (t[o] === 0) lapics.push(t[o + 3]);
  }
  deepStrictEqual(lapics, [0, 1, 2]);
});

Deno.test("acpi: the PM timer counts up at 3.58 MHz within 24 bits", async () => {
  const timer = new AcpiPmTimer();
  const a = timer.portRead();
  await new Promise((r) => setTimeout(r, 20));
  const b = timer.portRead();
  ok(b > a && b < 1 << 24, `${a} -> ${b}`);
  ok(b - a >= 3_579_545 * 0.015, `${b - a} ticks in 20 ms`);
});
