// Interrupt delivery without an in-kernel irqchip: KVM_INTERRUPT into a
// real-mode guest's IVT handler after the interrupt window opens, and KVM_NMI
// into the NMI handler (vector 2). Each handler reports the return address
// the CPU pushed, which proves the interrupt arrived where the guest was.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { Kvm, KvmError } from "../../mod.ts";
import { realModeGuest } from "./real_mode_guest.ts";

const ENTRY = 0x1000;
const HANDLER = 0x2000;

// deno-fmt-ignore
const MAIN = [
  0xe6, 0x10, // 0x1000: out 0x10, al   ; "ready" with IF = 0
  0xfb,       // 0x1002: sti
  0x90,       // 0x1003: nop            ; past the STI shadow
  0xeb, 0xfe, // 0x1004: jmp $          ; spin until interrupted
];
const SPIN = 0x1004;

// deno-fmt-ignore
const HANDLER_CODE = [
  0x89, 0xe5,       // mov bp, sp
  0x8b, 0x46, 0x00, // mov ax, [bp+0]      ; the IP the CPU pushed
  0xe7, 0x11,       // out 0x11, ax
  0xf4,             // hlt
];

/** Points IVT entry `vector` at HANDLER (segment 0). */
function ivt(vector: number): number[] {
  const bytes = new Array(0x400).fill(0);
  bytes[vector * 4] = HANDLER & 0xff;
  bytes[vector * 4 + 1] = HANDLER >> 8;
  return bytes;
}

Deno.test("KVM_INTERRUPT: a userspace-irqchip interrupt reaches the IVT handler once the window opens", () => {
  using guest = realModeGuest(MAIN, ENTRY);
  const { vm, vcpu } = guest;
  vm.writeGuest(0, ivt(0x20));
  vm.writeGuest(HANDLER, HANDLER_CODE);

  let exit = vcpu.run();
  strictEqual(exit.reason, "io");
  strictEqual(vcpu.ifFlag, false, "IF is still clear at the first OUT");
  strictEqual(vcpu.readyForInterruptInjection, false, "not ready while IF = 0");

  vcpu.requestInterruptWindow = true;
  exit = vcpu.run();
  strictEqual(exit.reason, "irqWindowOpen", "the window opened after STI");
  ok(vcpu.ifFlag, "IF is set");
  ok(vcpu.readyForInterruptInjection, "ready for injection");
  vcpu.requestInterruptWindow = false;
  vcpu.interrupt(0x20);

  exit = vcpu.run();
  strictEqual(exit.reason, "io");
  if (exit.reason !== "io") return;
  strictEqual(exit.port, 0x11, "the vector 0x20 handler ran");
  ok(
    exit.value >= 0x1003 && exit.value <= SPIN,
    `it interrupted the guest after STI (at ${exit.value.toString(16)})`,
  );
  strictEqual(vcpu.run().reason, "hlt");
  strictEqual(vcpu.getRegs().rflags & 0x200n, 0n, "IF is clear inside the handler");
});

Deno.test("KVM_NMI: the NMI handler (IVT vector 2) runs even with IF = 0", () => {
  // deno-fmt-ignore
  const program = [
    0xe6, 0x10, // 0x1000: out 0x10, al
    0xeb, 0xfe, // 0x1002: jmp $        ; IF stays 0
  ];
  using guest = realModeGuest(program, ENTRY);
  const { vm, vcpu } = guest;
  vm.writeGuest(0, ivt(2));
  vm.writeGuest(HANDLER, HANDLER_CODE);
  strictEqual(vcpu.run().reason, "io");
  vcpu.nmi();
  strictEqual(vcpu.getVcpuEvents().nmiPending, 1, "the NMI is pending");
  const exit = vcpu.run();
  strictEqual(exit.reason, "io");
  if (exit.reason !== "io") return;
  deepStrictEqual([exit.port, exit.value], [0x11, 0x1002], "the handler saw the spin loop's IP");
  strictEqual(vcpu.run().reason, "hlt");
  strictEqual(vcpu.getVcpuEvents().nmiMasked, 1, "NMIs are blocked until IRET");
});

Deno.test("KVM_INTERRUPT is refused with an in-kernel irqchip, and bad vectors by the library", () => {
  using guest = realModeGuest([0xf4], ENTRY);
  throws(() => guest.vcpu.interrupt(256), (e) => e instanceof KvmError && e.code === "EINVAL");
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  vm.createIrqchip();
  const vcpu = vm.createVcpu(0);
  throws(
    () => vcpu.interrupt(0x20),
    (e) => e instanceof KvmError && e.operation === "KVM_INTERRUPT" && e.code === "ENXIO",
  );
});

Deno.test("run-area CR8: written before run() it becomes the vCPU's CR8 (userspace irqchip)", () => {
  using guest = realModeGuest([0xf4], ENTRY);
  const { vcpu } = guest;
  vcpu.cr8 = 7n;
  strictEqual(vcpu.run().reason, "hlt");
  strictEqual(vcpu.getSregs().cr8, 7n, "KVM_RUN loaded kvm_run.cr8");
  strictEqual(vcpu.cr8, 7n, "and reported it back at the exit");
  strictEqual(vcpu.apicBase, vcpu.getApicBase(), "run-area APIC base matches KVM_GET_SREGS");
});
