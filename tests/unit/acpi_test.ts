// The minimal ACPI tables (src/boot/acpi.ts) read the way kvm-unit-tests'
// lib/acpi.c reads them: RSDP signature on a 16-byte boundary, RSDT entries,
// FADT's pm_tmr_blk, valid checksums, the FACS (s3.c writes its waking
// vector) and the PM1 blocks. And the PM timer's counter, the PM1 registers
// (src/devices/acpi_pm1.ts) and the RTC alarm arithmetic of the S3 wake.

import { deepStrictEqual, ok } from "node:assert/strict";
import {
  ACPI_FACS_SIZE,
  ACPI_FACS_WAKING_VECTOR_OFFSET,
  ACPI_PM1_CONTROL_PORT,
  ACPI_PM1_EVENT_PORT,
  ACPI_PM_TIMER_PORT,
  ACPI_SCI_IRQ,
  ACPI_TABLES_ADDRESS,
  acpiLayout,
  buildAcpiTables,
} from "../../src/boot/acpi.ts";
import { rtcAlarmDelayMs } from "../../src/boot/firmware.ts";
import { AcpiPm1, Pm1Event } from "../../src/devices/acpi_pm1.ts";
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
  // FACS: where lib/acpi.c finds it (the FADT's firmware_ctrl), 64-byte aligned, in the block.
  const facs = v.getUint32(fadt + 36, true);
  deepStrictEqual(facs % 64, 0);
  deepStrictEqual(facs, acpiLayout({ cpus: 3 }).facs);
  deepStrictEqual(text(t, at(facs), 4), "FACS");
  deepStrictEqual(v.getUint32(at(facs) + 4, true), ACPI_FACS_SIZE);
  deepStrictEqual(v.getUint32(at(facs) + ACPI_FACS_WAKING_VECTOR_OFFSET, true), 0);
  deepStrictEqual(v.getUint16(fadt + 46, true), ACPI_SCI_IRQ);
  deepStrictEqual(v.getUint32(fadt + 56, true), ACPI_PM1_EVENT_PORT); // pm1a_evt_blk
  deepStrictEqual(v.getUint32(fadt + 64, true), ACPI_PM1_CONTROL_PORT); // pm1a_cnt_blk
  deepStrictEqual([t[fadt + 88], t[fadt + 89], t[fadt + 91]], [4, 2, 4]); // evt, cnt, tmr lengths
  const madt = tables.get("APIC")!;
  const lapics: number[] = [];
  for (let o = madt + 44; o < madt + v.getUint32(madt + 4, true); o += t[o + 1]) {
    if (t[o] === 0) lapics.push(t[o + 3]);
  }
  deepStrictEqual(lapics, [0, 1, 2]);
});

Deno.test("acpi: the PM timer counts up at 3.58 MHz within 24 bits", async () => {
  const timer = new AcpiPmTimer();
  const data = new Uint8Array(4);
  const inl = () => (timer.read(0, data), new DataView(data.buffer).getUint32(0, true));
  const a = inl();
  await new Promise((r) => setTimeout(r, 20));
  const b = inl();
  ok(b > a && b < 1 << 24, `${a} -> ${b}`);
  ok(b - a >= 3_579_545 * 0.015, `${b - a} ticks in 20 ms`);
});

Deno.test("acpi: without PM1 blocks there is no FACS (nothing can sleep)", () => {
  const options = { cpus: 1, pm1EventPort: 0, pm1ControlPort: 0 };
  const t = buildAcpiTables(options);
  const layout = acpiLayout(options);
  deepStrictEqual(layout.facs, 0);
  const fadt = layout.fadt - ACPI_TABLES_ADDRESS;
  const v = new DataView(t.buffer);
  deepStrictEqual(text(t, fadt, 4), "FACP");
  deepStrictEqual([v.getUint32(fadt + 36, true), v.getUint32(fadt + 64, true)], [0, 0]);
  deepStrictEqual(sum(t.subarray(fadt, fadt + v.getUint32(fadt + 4, true))), 0);
});

const bytes = (...b: number[]) => new Uint8Array(b);

Deno.test("acpi_pm1: status is write-1-to-clear, enable drives the SCI, SCI_EN reads 1", () => {
  const sci: boolean[] = [];
  const pm = new AcpiPm1({ onSleep: () => {}, sci: (level) => sci.push(level) });
  const word = (offset: number) => {
    const d = new Uint8Array(2);
    pm.read(offset, d);
    return d[0] | d[1] << 8;
  };
  deepStrictEqual(word(4) & 1, 1);
  pm.raise(Pm1Event.RTC);
  deepStrictEqual(word(0), Pm1Event.RTC);
  deepStrictEqual(sci, []); // not enabled: no SCI
  pm.write(2, bytes(0x00, 0x04)); // RTC_EN
  deepStrictEqual(pm.enabled(Pm1Event.RTC), true);
  deepStrictEqual(sci, [true]);
  pm.write(0, bytes(0x00, 0x04)); // clear RTC_STS
  deepStrictEqual([word(0), sci], [0, [true, false]]);
});

Deno.test("acpi_pm1: SLP_EN with SLP_TYP 1/2/0 asks for S3/S4/S5, 3-7 for nothing; wake sets WAK_STS", () => {
  const asked: string[] = [];
  const pm = new AcpiPm1({ onSleep: (state, typ) => asked.push(`${state}:${typ}`) });
  pm.write(4, bytes(0x01, 0x24)); // 16-bit write: SLP_TYP 1 | SLP_EN (s3.c's outw 0x2400)
  pm.write(5, bytes(0x28)); // byte write of the high half: SLP_TYP 2 | SLP_EN
  pm.write(4, bytes(0x01, 0x20)); // SLP_TYP 0 | SLP_EN
  pm.write(4, bytes(0x01, 0x2c)); // SLP_TYP 3: not a state
  pm.write(4, bytes(0x01, 0x04)); // SLP_TYP 1 without SLP_EN
  deepStrictEqual(asked, ["S3:1", "S4:2", "S5:0"]);
  deepStrictEqual(pm.control & (1 << 13), 0); // SLP_EN reads 0
  pm.wake(Pm1Event.RTC);
  deepStrictEqual(pm.status, Pm1Event.WAKE | Pm1Event.RTC);
  deepStrictEqual(pm.control & (7 << 10), 0);
});

Deno.test("rtcAlarmDelayMs: don't-care fields, BCD and binary values, impossible alarms", () => {
  const now = new Date(Date.UTC(2026, 10, 30, 23, 59, 58, 400));
  const any = 0xc0;
  deepStrictEqual(rtcAlarmDelayMs(now, { seconds: any, minutes: any, hours: any }), 600);
  // 00:00:05 the next day, BCD.
  deepStrictEqual(rtcAlarmDelayMs(now, { seconds: 0x05, minutes: any, hours: 0x00 }), 6600);
  deepStrictEqual(rtcAlarmDelayMs(now, { seconds: 59, minutes: 59, hours: 23 }, true), 600);
  // 23:59:58 itself has begun: the next match is a day later.
  deepStrictEqual(
    rtcAlarmDelayMs(now, { seconds: 0x58, minutes: 0x59, hours: 0x23 }),
    86_400_000 - 400,
  );
  deepStrictEqual(rtcAlarmDelayMs(now, { seconds: 0x61, minutes: any, hours: any }), -1);
});
