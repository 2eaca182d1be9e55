// A 16-bit real-mode guest exercises every basic exit: OUT of 1, 2 and 4
// bytes, IN of 1, 2 and 4 bytes (stored by the guest so the test can check
// them), an MMIO write and read at an address with no memory slot, and HLT.

import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { realModeGuest } from "./real_mode_guest.ts";

// deno-fmt-ignore
const PROGRAM = [
  0xb0, 0x11,                         // mov al, 0x11
  0xe6, 0x10,                         // out 0x10, al          ; 1-byte OUT
  0xb8, 0x33, 0x22,                   // mov ax, 0x2233
  0xe7, 0x11,                         // out 0x11, ax          ; 2-byte OUT
  0x66, 0xb8, 0x77, 0x66, 0x55, 0x44, // mov eax, 0x44556677
  0x66, 0xe7, 0x12,                   // out 0x12, eax         ; 4-byte OUT
  0xe4, 0x20,                         // in al, 0x20           ; 1-byte IN
  0xa2, 0x00, 0x05,                   // mov [0x500], al
  0xe5, 0x21,                         // in ax, 0x21           ; 2-byte IN
  0xa3, 0x02, 0x05,                   // mov [0x502], ax
  0xba, 0x22, 0x00,                   // mov dx, 0x22
  0x66, 0xed,                         // in eax, dx            ; 4-byte IN
  0x66, 0xa3, 0x04, 0x05,             // mov [0x504], eax
  0xbb, 0x00, 0x20,                   // mov bx, 0x2000
  0x8e, 0xc3,                         // mov es, bx            ; ES base 0x20000: no RAM there
  0x26, 0xc6, 0x06, 0x10, 0x00, 0xab, // mov byte [es:0x10], 0xab  ; MMIO write at 0x20010
  0x26, 0xa1, 0x20, 0x00,             // mov ax, [es:0x20]     ; MMIO read at 0x20020
  0xa3, 0x08, 0x05,                   // mov [0x508], ax
  0xf4,                               // hlt
];
const ENTRY = 0x1000;

Deno.test("real mode: port I/O of every size, MMIO read and write, HLT", () => {
  using guest = realModeGuest(PROGRAM, ENTRY);
  const { vm, vcpu } = guest;
  const inputs: Record<number, number> = { 0x20: 0x5a, 0x21: 0x1234, 0x22: 0xdeadbeef };
  const seen: string[] = [];
  for (let step = 0; step < 20; step++) {
    const exit = vcpu.run();
    if (exit.reason === "io") {
      strictEqual(exit.count, 1);
      strictEqual(exit.data.length, exit.size);
      if (exit.direction === "in") exit.value = inputs[exit.port];
      seen.push(
        `${exit.direction} ${exit.port.toString(16)} ${exit.size} ${exit.value.toString(16)}`,
      );
    } else if (exit.reason === "mmio") {
      if (!exit.isWrite) exit.value = 0xbeef;
      seen.push(
        `mmio ${exit.isWrite ? "write" : "read"} ${exit.address.toString(16)} ${exit.length} ${
          [...exit.data].map((b) => b.toString(16)).join(",")
        }`,
      );
    } else {
      seen.push(exit.reason);
      if (exit.reason === "hlt") break;
    }
  }
  deepStrictEqual(seen, [
    "out 10 1 11",
    "out 11 2 2233",
    "out 12 4 44556677",
    "in 20 1 5a",
    "in 21 2 1234",
    "in 22 4 deadbeef",
    "mmio write 20010 1 ab",
    "mmio read 20020 2 ef,be",
    "hlt",
  ]);

  // The guest stored what the IN and MMIO reads returned.
  const stored = new DataView(vm.readGuest(0x500, 12).buffer);
  strictEqual(stored.getUint8(0), 0x5a);
  strictEqual(stored.getUint16(2, true), 0x1234);
  strictEqual(stored.getUint32(4, true), 0xdeadbeef);
  strictEqual(stored.getUint16(8, true), 0xbeef);

  const regs = vcpu.getRegs();
  strictEqual(regs.rax & 0xffffn, 0xbeefn, "AX holds the MMIO read");
  strictEqual(regs.rbx, 0x2000n);
  strictEqual(regs.rdx, 0x22n);
  strictEqual(regs.rip, BigInt(ENTRY + PROGRAM.length), "RIP is past the HLT");
  strictEqual(vcpu.getSregs().es.base, 0x20000n);
});
