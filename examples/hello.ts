/**
 * The smallest complete guest: 16-bit real-mode code that prints a greeting
 * through port 0xE9 with `rep outsb`, then halts.
 *
 * Run: `deno task example` (inside the sandbox when this machine has no
 * /dev/kvm), or `deno run -A examples/hello.ts` where /dev/kvm is usable.
 *
 * @module
 */

import { Kvm, setupRealMode } from "@deno-kvm/kvm";

const GREETING = "Hello from a KVM guest, run by Deno!\n";
const CODE_AT = 0x1000;
const TEXT_AT = 0x1100;

// deno-fmt-ignore
const code = [
  0xbe, TEXT_AT & 0xff, TEXT_AT >> 8,   // mov si, TEXT_AT
  0xba, 0xe9, 0x00,                     // mov dx, 0xe9
  0xb9, GREETING.length, 0x00,          // mov cx, length
  0xf3, 0x6e,                           // rep outsb        ; one exit per byte or per batch
  0xf4,                                 // hlt
];

using kvm = Kvm.open();
using vm = kvm.createVm();
const ram = vm.allocateMemory(0x10000);
vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
ram.bytes.set(code, CODE_AT);
ram.bytes.set(new TextEncoder().encode(GREETING), TEXT_AT);

const vcpu = vm.createVcpu(0);
setupRealMode(vcpu, { entry: CODE_AT });

const out: number[] = [];
let exits = 0;
for (;;) {
  const exit = vcpu.run();
  exits++;
  if (exit.reason === "io" && exit.port === 0xe9 && exit.direction === "out") {
    out.push(...exit.data);
  } else if (exit.reason === "hlt") {
    break;
  } else {
    throw new Error(`unexpected exit ${exit.reason}`);
  }
}
await Deno.stdout.write(new Uint8Array(out));
console.log(`(the guest halted after ${exits} exits; kernel KVM API ${kvm.apiVersion()})`);
