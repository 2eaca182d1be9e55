// The 16550A model's register behaviour as Linux's 8250 driver probes and uses
// it, driven through the port bus without KVM. (The boot test in
// tests/kvm/linux_boot_test.ts drives it with a real kernel.)

import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { Bus } from "../../src/devices/bus.ts";
import { CmosRtc, I8042 } from "../../src/devices/legacy.ts";
import { COM1_PORT as B, Uart16550 } from "../../src/devices/uart_16550.ts";

/** A UART on a port bus at `base`, and one-byte accessors as the guest's inb/outb. */
function setup(base = B) {
  const sent: number[] = [];
  const irqs: boolean[] = [];
  const uart = new Uart16550({ output: (b) => sent.push(b), irq: (l) => irqs.push(l) });
  const bus = new Bus({ space: "pio" });
  bus.insert(base, 8, uart);
  const byte = new Uint8Array(1);
  const r = (port: number) => (bus.read(port, byte), byte[0]);
  const w = (port: number, value: number) => (byte[0] = value, bus.write(port, byte));
  return { uart, bus, sent, irqs, r, w };
}

Deno.test("uart: scratch, IER and divisor latch read back; LCR.DLAB switches banks", () => {
  const { r, w } = setup();
  w(B + 7, 0xa5);
  strictEqual(r(B + 7), 0xa5);
  w(B + 1, 0xff);
  strictEqual(r(B + 1), 0x0f, "IER keeps its four defined bits");
  w(B + 3, 0x83); // DLAB on, 8N1
  w(B + 0, 0x01); // DLL: 115200 baud
  w(B + 1, 0x00); // DLM
  deepStrictEqual([r(B), r(B + 1)], [0x01, 0x00]);
  w(B + 3, 0x03);
  strictEqual(r(B + 1), 0x0f, "IER is back");
});

Deno.test("uart: FIFO enable shows in IIR bits 6-7 (a 16550A)", () => {
  const { r, w } = setup();
  strictEqual(r(B + 2), 0x01);
  w(B + 2, 0x07);
  strictEqual(r(B + 2), 0xc1);
});

Deno.test("uart: loopback wires MCR to MSR and TX to RX, without output", () => {
  const { r, w, sent } = setup();
  w(B + 4, 0x1a); // LOOP | OUT2 | RTS
  strictEqual(r(B + 6) & 0xf0, 0x90, "DCD (from OUT2) and CTS (from RTS)");
  w(B, 0x42);
  strictEqual(r(B + 5) & 0x01, 1, "data ready");
  strictEqual(r(B), 0x42);
  deepStrictEqual(sent, []);
  w(B + 4, 0x0b);
  strictEqual(r(B + 6) & 0xb0, 0xb0, "modem lines back to connected");
});

Deno.test("uart: the THR-empty interrupt is raised on enable and after each write, cleared by IIR", () => {
  const { r, w, sent, irqs } = setup();
  w(B + 1, 0x02); // enable THRI with THR empty
  deepStrictEqual(irqs, [true]);
  strictEqual(r(B + 2), 0x02, "IIR: THR empty");
  deepStrictEqual(irqs, [true, false], "reading IIR acknowledged it");
  strictEqual(r(B + 2), 0x01, "nothing pending");
  w(B, 0x68);
  deepStrictEqual(sent, [0x68]);
  deepStrictEqual(irqs, [true, false, true], "sent at once, THR empty again");
  w(B + 1, 0x00);
  deepStrictEqual(irqs, [true, false, true, false]);
  strictEqual(r(B + 5) & 0x60, 0x60, "THRE and TEMT");
});

Deno.test("uart: received bytes fill the FIFO, raise RDA, and drain in order", () => {
  const { uart, r, w, irqs } = setup();
  w(B + 2, 0xc7); // FIFO on, trigger level 14
  w(B + 1, 0x01); // RDA interrupt
  uart.receive(new TextEncoder().encode("hello, sixteen-byte fifo!"));
  deepStrictEqual(irqs, [true]);
  strictEqual(r(B + 2), 0xc4, "IIR: data available (16 >= trigger 14)");
  let got = "";
  while (r(B + 5) & 1) got += String.fromCharCode(r(B));
  strictEqual(got, "hello, sixteen-byte fifo!", "the host queue refilled the FIFO");
  deepStrictEqual(irqs, [true, false]);
});

Deno.test("uart: below the trigger level the FIFO reports a character timeout", () => {
  const { uart, r, w } = setup();
  w(B + 2, 0xc1);
  w(B + 1, 0x01);
  uart.receive(new Uint8Array([0x31]));
  strictEqual(r(B + 2), 0xcc);
});

Deno.test("legacy: i8042 self test, command byte, AUX absent, reset line", () => {
  let resets = 0;
  const kbc = new I8042(() => resets++);
  const byte = new Uint8Array(1);
  // Offsets: 0 is port 0x60 (data), 4 is port 0x64 (status / command).
  const r = (offset: number) => (kbc.read(offset, byte), byte[0]);
  const w = (offset: number, value: number) => (byte[0] = value, kbc.write(offset, byte));
  w(4, 0xaa);
  strictEqual(r(4) & 1, 1, "output buffer full");
  strictEqual(r(0), 0x55);
  w(4, 0x60);
  w(0, 0x47);
  w(4, 0x20);
  strictEqual(r(0), 0x47);
  w(4, 0xa9);
  strictEqual(r(0), 0x01, "AUX test fails: no mouse port");
  strictEqual(r(4) & 2, 0, "input buffer never full");
  w(4, 0xfe);
  strictEqual(resets, 1);
});

Deno.test("legacy: CMOS clock in BCD from the given time", () => {
  const rtc = new CmosRtc(() => new Date(Date.UTC(2026, 10, 26, 19, 58, 7)));
  const byte = new Uint8Array(1);
  // Offset 0 (port 0x70) selects the register, offset 1 (0x71) reads it.
  const read = (i: number) => (byte[0] = i, rtc.write(0, byte), rtc.read(1, byte), byte[0]);
  deepStrictEqual([read(0), read(2), read(4), read(7), read(8), read(9), read(0x32)], [
    0x07,
    0x58,
    0x19,
    0x26,
    0x11,
    0x26,
    0x20,
  ]);
  strictEqual(read(0x0d), 0x80);
});

Deno.test("uart: the same model works as COM2 (0x2f8) and on an MMIO bus: it sees offsets only", () => {
  const com2 = setup(0x2f8);
  com2.w(0x2f8, 0x41); // THR
  strictEqual(com2.r(0x2f8 + 5) & 0x60, 0x60, "LSR at base + 5");
  deepStrictEqual(com2.sent, [0x41]);
  strictEqual(com2.r(B + 5), 0xff, "nothing at COM1's ports on this bus: all-ones");

  const sent: number[] = [];
  const mmio = new Bus({ space: "mmio" });
  const base = 0xfedc_0000;
  mmio.insert(base, 8, new Uart16550({ output: (b) => sent.push(b) }));
  mmio.handleMmio(base, true, new Uint8Array([0x42]));
  const scratch = new Uint8Array([0x5a]);
  mmio.handleMmio(base + 7, true, scratch);
  const wide = new Uint8Array(4).fill(0xee);
  mmio.handleMmio(base + 7, false, wide);
  deepStrictEqual([...wide], [0x5a, 0, 0, 0], "a 32-bit read of the 8-bit SCR: zeroes above");
  deepStrictEqual(sent, [0x42]);
});
