// The 16550A model's register behaviour as Linux's 8250 driver probes and uses
// it, driven through the I/O bus without KVM. (The boot test in
// tests/kvm/linux_boot_test.ts drives it with a real kernel.)

import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { IoBus } from "../../src/devices/io_bus.ts";
import { CmosRtc, I8042 } from "../../src/devices/legacy.ts";
import { COM1_PORT as B, Uart16550 } from "../../src/devices/uart_16550.ts";

function setup() {
  const sent: number[] = [];
  const irqs: boolean[] = [];
  const uart = new Uart16550({ output: (b) => sent.push(b), irq: (l) => irqs.push(l) });
  const bus = new IoBus();
  bus.register(B, 8, uart);
  return { uart, bus, sent, irqs };
}

Deno.test("uart: scratch, IER and divisor latch read back; LCR.DLAB switches banks", () => {
  const { bus } = setup();
  bus.write(B + 7, 1, 0xa5);
  strictEqual(bus.read(B + 7, 1), 0xa5);
  bus.write(B + 1, 1, 0xff);
  strictEqual(bus.read(B + 1, 1), 0x0f, "IER keeps its four defined bits");
  bus.write(B + 3, 1, 0x83); // DLAB on, 8N1
  bus.write(B + 0, 1, 0x01); // DLL: 115200 baud
  bus.write(B + 1, 1, 0x00); // DLM
  deepStrictEqual([bus.read(B, 1), bus.read(B + 1, 1)], [0x01, 0x00]);
  bus.write(B + 3, 1, 0x03);
  strictEqual(bus.read(B + 1, 1), 0x0f, "IER is back");
});

Deno.test("uart: FIFO enable shows in IIR bits 6-7 (a 16550A)", () => {
  const { bus } = setup();
  strictEqual(bus.read(B + 2, 1), 0x01);
  bus.write(B + 2, 1, 0x07);
  strictEqual(bus.read(B + 2, 1), 0xc1);
});

Deno.test("uart: loopback wires MCR to MSR and TX to RX, without output", () => {
  const { bus, sent } = setup();
  bus.write(B + 4, 1, 0x1a); // LOOP | OUT2 | RTS
  strictEqual(bus.read(B + 6, 1) & 0xf0, 0x90, "DCD (from OUT2) and CTS (from RTS)");
  bus.write(B, 1, 0x42);
  strictEqual(bus.read(B + 5, 1) & 0x01, 1, "data ready");
  strictEqual(bus.read(B, 1), 0x42);
  deepStrictEqual(sent, []);
  bus.write(B + 4, 1, 0x0b);
  strictEqual(bus.read(B + 6, 1) & 0xb0, 0xb0, "modem lines back to connected");
});

Deno.test("uart: the THR-empty interrupt is raised on enable and after each write, cleared by IIR", () => {
  const { bus, sent, irqs } = setup();
  bus.write(B + 1, 1, 0x02); // enable THRI with THR empty
  deepStrictEqual(irqs, [true]);
  strictEqual(bus.read(B + 2, 1), 0x02, "IIR: THR empty");
  deepStrictEqual(irqs, [true, false], "reading IIR acknowledged it");
  strictEqual(bus.read(B + 2, 1), 0x01, "nothing pending");
  bus.write(B, 1, 0x68);
  deepStrictEqual(sent, [0x68]);
  deepStrictEqual(irqs, [true, false, true], "sent at once, THR empty again");
  bus.write(B + 1, 1, 0x00);
  deepStrictEqual(irqs, [true, false, true, false]);
  strictEqual(bus.read(B + 5, 1) & 0x60, 0x60, "THRE and TEMT");
});

Deno.test("uart: received bytes fill the FIFO, raise RDA, and drain in order", () => {
  const { uart, bus, irqs } = setup();
  bus.write(B + 2, 1, 0xc7); // FIFO on, trigger level 14
  bus.write(B + 1, 1, 0x01); // RDA interrupt
  uart.receive(new TextEncoder().encode("hello, sixteen-byte fifo!"));
  deepStrictEqual(irqs, [true]);
  strictEqual(bus.read(B + 2, 1), 0xc4, "IIR: data available (16 >= trigger 14)");
  let got = "";
  while (bus.read(B + 5, 1) & 1) got += String.fromCharCode(bus.read(B, 1));
  strictEqual(got, "hello, sixteen-byte fifo!", "the host queue refilled the FIFO");
  deepStrictEqual(irqs, [true, false]);
});

Deno.test("uart: below the trigger level the FIFO reports a character timeout", () => {
  const { uart, bus } = setup();
  bus.write(B + 2, 1, 0xc1);
  bus.write(B + 1, 1, 0x01);
  uart.receive(new Uint8Array([0x31]));
  strictEqual(bus.read(B + 2, 1), 0xcc);
});

Deno.test("legacy: i8042 self test, command byte, AUX absent, reset line", () => {
  let resets = 0;
  const kbc = new I8042(() => resets++);
  kbc.portWrite(0x64, 1, 0xaa);
  strictEqual(kbc.portRead(0x64, 1) & 1, 1, "output buffer full");
  strictEqual(kbc.portRead(0x60, 1), 0x55);
  kbc.portWrite(0x64, 1, 0x60);
  kbc.portWrite(0x60, 1, 0x47);
  kbc.portWrite(0x64, 1, 0x20);
  strictEqual(kbc.portRead(0x60, 1), 0x47);
  kbc.portWrite(0x64, 1, 0xa9);
  strictEqual(kbc.portRead(0x60, 1), 0x01, "AUX test fails: no mouse port");
  strictEqual(kbc.portRead(0x64, 1) & 2, 0, "input buffer never full");
  kbc.portWrite(0x64, 1, 0xfe);
  strictEqual(resets, 1);
});

Deno.test("legacy: CMOS clock in BCD from the given time", () => {
  const rtc = new CmosRtc(() => new Date(Date.UTC(2026, 10, 26, 19, 58, 7)));
  const read = (i: number) => (rtc.portWrite(0x70, 1, i), rtc.portRead(0x71, 1));
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
