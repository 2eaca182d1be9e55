// QEMU's pc-testdev as the VMM models it (src/devices/pc_testdev.ts): the IRQ
// lines at 0x2000 + n (kvm-unit-tests' realmode and ioapic drive ISA IRQs
// with them), the scratch register at 0xe0 and the MMIO memory (lam).

import { deepStrictEqual } from "node:assert/strict";
import {
  PC_TESTDEV_IOMEM_SIZE,
  PC_TESTDEV_IRQ_LINES,
  PcTestdevIomem,
  PcTestdevIrq,
  PcTestdevPort,
} from "../../src/devices/pc_testdev.ts";

Deno.test("pc_testdev: a write to line n sets IRQ n to the value's truth, any size", () => {
  const calls: [number, boolean][] = [];
  const dev = new PcTestdevIrq((irq, level) => calls.push([irq, level]));
  dev.write(11, new Uint8Array([1, 0, 0, 0])); // realmode: outl 1, 0x200b
  dev.write(11, new Uint8Array([0, 0, 0, 0]));
  dev.write(14, new Uint8Array([0, 2]));
  dev.write(0, new Uint8Array([0]));
  dev.write(PC_TESTDEV_IRQ_LINES, new Uint8Array([1])); // past the last line: ignored
  deepStrictEqual(calls, [[11, true], [11, false], [14, true], [0, false]]);
  const data = new Uint8Array([9, 9]);
  dev.read(3, data);
  deepStrictEqual([...data], [0, 0]);
});

Deno.test("pc_testdev: the 0xe0 register reads back what was written, per byte lane", () => {
  const dev = new PcTestdevPort();
  dev.write(0, new Uint8Array([0x99, 0x99])); // emulator: outw 0x9999
  const b = new Uint8Array(1);
  dev.read(1, b);
  deepStrictEqual(b[0], 0x99);
  dev.write(0, new Uint8Array([0x78, 0x56, 0x34, 0x12]));
  dev.write(2, new Uint8Array([0xcd]));
  const d = new Uint8Array(4);
  dev.read(0, d);
  deepStrictEqual([...d], [0x78, 0x56, 0xcd, 0x12]);
  const past = new Uint8Array(2);
  dev.read(3, past);
  deepStrictEqual([...past], [0x12, 0]);
});

Deno.test("pc_testdev: the MMIO memory at 0xff000000 reads back what was written", () => {
  const mem = new PcTestdevIomem();
  const q = new Uint8Array(8);
  mem.read(0x100, q);
  deepStrictEqual([...q], [0, 0, 0, 0, 0, 0, 0, 0]);
  mem.write(0x100, new Uint8Array([0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01])); // lam's mov
  mem.read(0x100, q);
  deepStrictEqual([...q], [0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01]);
  const edge = new Uint8Array(4);
  mem.write(PC_TESTDEV_IOMEM_SIZE - 2, new Uint8Array([1, 2, 3, 4])); // past the end: dropped
  mem.read(PC_TESTDEV_IOMEM_SIZE - 2, edge);
  deepStrictEqual([...edge], [1, 2, 0, 0]);
});
