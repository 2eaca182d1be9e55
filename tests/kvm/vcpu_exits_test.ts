// String port I/O and TPR access reporting: `rep outsb` and `rep insw` move
// every element through IoExit.data whatever shape the kernel gives the exits
// (one exit with count = n, or n exits with count = 1), and with TPR access
// reporting on, a protected-mode guest's reads and writes of the LAPIC TPR
// (MMIO at 0xfee00080) exit as "tprAccess" with the right RIP.

import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { Kvm } from "../../mod.ts";
import { setupProtectedMode } from "../../src/boot/modes.ts";
import { realModeGuest } from "./real_mode_guest.ts";
import { featureTest, PROBE_MS } from "./kvm_features.ts";

// deno-fmt-ignore
const STRING_IO = [
  0xbe, 0x00, 0x30, // 0x1000: mov si, 0x3000
  0xba, 0x40, 0x00, // 0x1003: mov dx, 0x40
  0xb9, 0x05, 0x00, // 0x1006: mov cx, 5
  0xfc,             // 0x1009: cld
  0xf3, 0x6e,       // 0x100a: rep outsb          ; 5 bytes from DS:SI to port 0x40
  0xbf, 0x00, 0x31, // 0x100c: mov di, 0x3100
  0xb9, 0x03, 0x00, // 0x100f: mov cx, 3
  0xf3, 0x6d,       // 0x1012: rep insw           ; 3 words from port 0x40 to ES:DI
  0xf4,             // 0x1014: hlt
];

Deno.test("rep outsb / rep insw: every element round-trips through IoExit.data", () => {
  using guest = realModeGuest(STRING_IO, 0x1000);
  const { vm, vcpu } = guest;
  vm.writeGuest(0x3000, [0x11, 0x22, 0x33, 0x44, 0x55]);
  const out: number[] = [];
  const outCounts: number[] = [];
  const inCounts: number[] = [];
  const words = [0xa1b1, 0xa2b2, 0xa3b3];
  let next = 0;
  for (let i = 0; i < 20; i++) {
    const exit = vcpu.run();
    if (exit.reason === "hlt") break;
    strictEqual(exit.reason, "io");
    if (exit.reason !== "io") return;
    strictEqual(exit.port, 0x40);
    strictEqual(exit.data.length, exit.size * exit.count, "data holds size * count bytes");
    if (exit.direction === "out") {
      strictEqual(exit.size, 1);
      outCounts.push(exit.count);
      out.push(...exit.data);
    } else {
      strictEqual(exit.size, 2);
      inCounts.push(exit.count);
      const view = new DataView(exit.data.buffer, exit.data.byteOffset, exit.data.byteLength);
      for (let k = 0; k < exit.count; k++) view.setUint16(k * 2, words[next++], true);
    }
  }
  deepStrictEqual(out, [0x11, 0x22, 0x33, 0x44, 0x55], "all five bytes came out in order");
  strictEqual(outCounts.reduce((a, b) => a + b, 0), 5);
  strictEqual(inCounts.reduce((a, b) => a + b, 0), 3);
  const stored = new DataView(vm.readGuest(0x3100, 6).buffer);
  deepStrictEqual(
    [0, 2, 4].map((o) => stored.getUint16(o, true)),
    words,
    "all three words went in",
  );
  const regs = vcpu.getRegs();
  deepStrictEqual([regs.rsi & 0xffffn, regs.rdi & 0xffffn, regs.rcx], [0x3005n, 0x3106n, 0n]);
  console.log(
    `exit shapes: outsb counts ${outCounts.join(",")}; insw counts ${inCounts.join(",")}`,
  );
});

// deno-fmt-ignore
const TPR_PROGRAM = [
  0xa1, 0x80, 0x00, 0xe0, 0xfe,                         // 0x1000: mov eax, [0xfee00080] ; TPR read
  0xc7, 0x05, 0x80, 0x00, 0xe0, 0xfe, 0x20, 0, 0, 0,    // 0x1005: mov dword [0xfee00080], 0x20 ; write
  0xe6, 0x10,                                           // 0x100f: out 0x10, al ; done
  0xeb, 0xfe,                                           // 0x1011: jmp $
];

/** Runs TPR_PROGRAM with TPR access reporting on: the exits seen, and the LAPIC's TPR after. */
function tprRun(): { seen: string[]; tpr: number } {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  vm.createIrqchip();
  const ram = vm.allocateMemory(0x100000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
  ram.bytes.set(TPR_PROGRAM, 0x1000);
  const vcpu = vm.createVcpu(0);
  setupProtectedMode(vm, vcpu, { entry: 0x1000, stack: 0x8000 });
  vcpu.tprAccessReporting(true);
  vcpu.setWatchdog(PROBE_MS);
  const seen: string[] = [];
  for (let i = 0; i < 10; i++) {
    const exit = vcpu.run();
    if (exit.reason === "tprAccess") {
      seen.push(`${exit.isWrite ? "write" : "read"} at ${exit.rip.toString(16)}`);
      continue;
    }
    seen.push(exit.reason);
    if (exit.reason === "io") break;
  }
  return { seen, tpr: vcpu.getLapic().tpr };
}

// kvm_pvm offers KVM_CAP_VAPIC but reports no TPR access (measured
// 2026-11-29): ask the KVM with the program itself.
const TPR = "TPR access reporting: LAPIC TPR reads and writes exit as tprAccess";
const tprProbe = tprRun();
featureTest(
  TPR,
  tprProbe.seen.some((s) => s.startsWith("read") || s.startsWith("write"))
    ? undefined
    : `with TPR access reporting on, TPR accesses gave only ${JSON.stringify(tprProbe.seen)}`,
  () => {
    const { seen, tpr } = tprRun();
    deepStrictEqual(seen, ["read at 1000", "write at 1005", "io"]);
    strictEqual(tpr, 0x20, "the write reached the in-kernel LAPIC");
  },
);
