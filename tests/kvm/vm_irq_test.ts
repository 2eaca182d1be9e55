// Interrupts from the host reach the guest's handlers through the in-kernel
// irqchip: the PIC (KVM_IRQ_LINE), the IOAPIC (its redirection table set with
// KVM_SET_IRQCHIP), MSIs (KVM_SIGNAL_MSI), GSI routes (KVM_SET_GSI_ROUTING)
// and irqfds (KVM_IRQFD, with and without resampling).
//
// The guest is one real-mode program. It programs the master PIC itself
// (vector base 0x20, only IRQ3 unmasked), software-enables its LAPIC (DS has
// a 4 GiB limit, so a 32-bit address reaches 0xfee000f0), says "ready" with
// OUT 0x10, then spins with interrupts on. Every vector it expects has a stub
// that loads the vector into AL and jumps to a common handler, which does
// OUT 0x11 (the vector), EOIs the PIC and the LAPIC, does OUT 0x14 ("EOI
// done") and returns. With the in-kernel irqchip HLT never exits, so the
// wait is a counted loop that does OUT 0x13 if no interrupt comes.

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { EventFd, type Vm } from "../../mod.ts";
import {
  decodeRedirection,
  encodeRedirection,
  KVM_IRQCHIP_IOAPIC,
  KVM_IRQCHIP_PIC_MASTER,
  KVM_PIT_SPEAKER_DUMMY,
} from "../../src/abi/mod.ts";
import { expectOut, guest, type Item, jmp } from "./vm_guest.ts";

// The wait is timed with the TSC, not counted: a KVM that emulates real mode
// (kvm_pvm) runs a counted loop a thousand times slower than one that does
// not. Time is TSC >> 20 in ESI/EAX; the budget, 1000 such units (2^30
// cycles), is 0.2-1 s for any TSC between 1 and 5 GHz.
// deno-fmt-ignore
const NOW = [
  [0x0f, 0x31],                         // rdtsc
  [0x66, 0x0f, 0xac, 0xd0, 0x14],       // shrd eax, edx, 20           ; eax = TSC >> 20
];
// deno-fmt-ignore
const START_WAIT: Item[] = [...NOW, [0x66, 0x89, 0xc6]]; // mov esi, eax  ; the wait starts now

const VECTORS = [0x20, 0x23, 0x31, 0x32, 0x33, 0x34, 0x35];

// deno-fmt-ignore
const PROGRAM: Item[] = [
  [0xfa],                               // cli
  [0xb0, 0x11], [0xe6, 0x20],           // mov al, 0x11; out 0x20, al  ; ICW1: edge, cascade, ICW4
  [0xb0, 0x20], [0xe6, 0x21],           // mov al, 0x20; out 0x21, al  ; ICW2: vectors 0x20-0x27
  [0xb0, 0x04], [0xe6, 0x21],           // mov al, 0x04; out 0x21, al  ; ICW3: slave on IRQ2
  [0xb0, 0x01], [0xe6, 0x21],           // mov al, 0x01; out 0x21, al  ; ICW4: 8086 mode
  [0xb0, 0xf7], [0xe6, 0x21],           // mov al, 0xf7; out 0x21, al  ; OCW1: only IRQ3 unmasked
  [0x66, 0xbb, 0xf0, 0x00, 0xe0, 0xfe], // mov ebx, 0xfee000f0         ; LAPIC spurious-vector reg
  [0x67, 0x66, 0x8b, 0x03],             // mov eax, [ebx]
  [0x80, 0xcc, 0x01],                   // or ah, 1                    ; bit 8: APIC software enable
  [0x67, 0x66, 0x89, 0x03],             // mov [ebx], eax
  [0xb0, 0x01], [0xe6, 0x10],           // mov al, 1; out 0x10, al     ; ready
  [0xfb],                               // sti
  "reset",
  ...START_WAIT,
  "wait",
  ...NOW,
  [0x66, 0x29, 0xf0],                   // sub eax, esi                ; TSC units waited
  [0x66, 0x3d, 0xe8, 0x03, 0x00, 0x00], // cmp eax, 1000
  { op: 0x7c, to: "wait" },             // jl wait                     ; signed: a handler may
                                        //                             ; have moved ESI past EAX
  [0xb0, 0x20],                         // mov al, 0x20
  [0xe6, 0x13],                         // out 0x13, al                ; timeout: no interrupt
  jmp("reset"),                         // jmp reset
  ...VECTORS.flatMap((v): Item[] => [
    `v${v.toString(16)}`,
    [0x66, 0x50],                       // push eax                    ; the wait loop's registers
    [0x66, 0x52],                       // push edx
    [0xb0, v],                          // mov al, <vector>
    jmp("common"),                      // jmp common
  ]),
  "common",
  [0xe6, 0x11],                         // out 0x11, al                ; the handler runs
  [0xb0, 0x20], [0xe6, 0x20],           // mov al, 0x20; out 0x20, al  ; PIC: non-specific EOI
  [0x66, 0xbb, 0xb0, 0x00, 0xe0, 0xfe], // mov ebx, 0xfee000b0         ; LAPIC EOI register
  [0x67, 0x66, 0xc7, 0x03, 0, 0, 0, 0], // mov dword [ebx], 0          ; LAPIC EOI
  [0xe6, 0x14],                         // out 0x14, al                ; EOI done
  ...START_WAIT,                        //                             ; a fresh wait
  [0x66, 0x5a],                         // pop edx
  [0x66, 0x58],                         // pop eax
  [0xcf],                               // iret
];

function interruptGuest() {
  const vectors = Object.fromEntries(VECTORS.map((v) => [v, `v${v.toString(16)}`]));
  const g = guest(PROGRAM, { irqchip: true, unreal: true, vectors });
  expectOut(g.vcpu, "out 10 1", "the guest set up its PIC and LAPIC");
  return g;
}

/** Runs the guest through one interrupt: the handler's OUT of `vector`, then its EOI's OUT. */
function expectInterrupt(
  g: { vcpu: Parameters<typeof expectOut>[0] },
  vector: number,
  what: string,
) {
  expectOut(g.vcpu, `out 11 ${vector.toString(16)}`, what);
  expectOut(g.vcpu, "out 14 20", `${what} (EOI)`);
}

/** Points IOAPIC pin `pin` at `vector` on the LAPIC of vCPU 0. */
function routePin(vm: Vm, pin: number, vector: number, levelTriggered = false) {
  const chip = vm.getIrqchip(KVM_IRQCHIP_IOAPIC);
  chip.ioapic.redirtbl[pin] = encodeRedirection({ vector, destination: 0, levelTriggered });
  vm.setIrqchip(chip);
}

Deno.test("an IRQ on the in-kernel PIC reaches the guest's handler", () => {
  using g = interruptGuest();
  const { vm } = g;
  // The guest's ICWs are visible through the PIC's typed view.
  const pic = vm.getIrqchip(KVM_IRQCHIP_PIC_MASTER).pic;
  strictEqual(pic.irqBase, 0x20, "ICW2 set the vector base");
  strictEqual(pic.imr, 0xf7, "OCW1 set the mask");

  const status = vm.irqLineStatus(3, 1);
  ok(status > 0, `KVM_IRQ_LINE_STATUS says delivered (${status})`);
  vm.setIrqLine(3, 0);
  expectInterrupt(g, 0x23, "IRQ3 → vector 0x23");

  // A masked line does not interrupt: IRQ4 is masked by the guest's OCW1.
  vm.setIrqLine(4, 1);
  vm.setIrqLine(4, 0);
  expectOut(g.vcpu, "out 13 20", "masked IRQ4 is not delivered");
});

Deno.test("an IRQ through the IOAPIC and an MSI reach the guest's LAPIC", () => {
  using g = interruptGuest();
  const { vm } = g;
  routePin(vm, 17, 0x31);
  const entry = decodeRedirection(vm.getIrqchip(KVM_IRQCHIP_IOAPIC).ioapic.redirtbl[17]);
  deepStrictEqual(
    { vector: entry.vector, masked: entry.masked, level: entry.levelTriggered },
    { vector: 0x31, masked: false, level: false },
    "the redirection entry reads back",
  );
  vm.setIrqLine(17, 1);
  vm.setIrqLine(17, 0);
  expectInterrupt(g, 0x31, "GSI 17 → IOAPIC pin 17 → vector 0x31");

  // Fixed delivery to APIC id 0, vector 0x32.
  strictEqual(vm.signalMsi({ addressLo: 0xfee00000, data: 0x32 }), 1, "the MSI was delivered");
  expectInterrupt(g, 0x32, "KVM_SIGNAL_MSI → vector 0x32");
});

Deno.test("GSI routes and irqfds (edge, MSI, level with resample) raise guest interrupts", () => {
  using g = interruptGuest();
  const { vm } = g;
  routePin(vm, 18, 0x33);
  routePin(vm, 19, 0x35, true);
  vm.setGsiRouting([
    { gsi: 40, kind: "irqchip", irqchip: KVM_IRQCHIP_IOAPIC, pin: 18 },
    { gsi: 41, kind: "msi", addressLo: 0xfee00000, data: 0x34 },
    { gsi: 42, kind: "irqchip", irqchip: KVM_IRQCHIP_IOAPIC, pin: 19 },
  ]);
  vm.setIrqLine(40, 1);
  vm.setIrqLine(40, 0);
  expectInterrupt(g, 0x33, "GSI 40 → IOAPIC pin 18");
  vm.setIrqLine(41, 1);
  expectInterrupt(g, 0x34, "GSI 41 → MSI vector 0x34");

  using msiFd = EventFd.create();
  using edgeFd = EventFd.create();
  vm.registerIrqfd(msiFd, 41);
  vm.registerIrqfd(edgeFd, 40);
  msiFd.write();
  expectInterrupt(g, 0x34, "an irqfd write on GSI 41 (MSI)");
  edgeFd.write();
  expectInterrupt(g, 0x33, "an irqfd write on GSI 40 (IOAPIC)");

  vm.unregisterIrqfd(msiFd, 41);
  msiFd.write();
  expectOut(g.vcpu, "out 13 20", "after unregisterIrqfd the write raises nothing");

  // Level-triggered: the line stays up until the guest's EOI; then the
  // kernel lowers it and signals the resample fd.
  using levelFd = EventFd.create();
  using resampleFd = EventFd.create();
  vm.registerIrqfd(levelFd, 42, { resampleFd });
  levelFd.write();
  expectOut(g.vcpu, "out 11 35", "an irqfd with resample on GSI 42 → vector 0x35");
  // kvm_pvm signals the resample fd already when the interrupt is delivered
  // (measured 2026-11-29), kvm-amd only at the EOI: either way it must have
  // been signalled once the guest's EOI is done, and the line lowered.
  const early = resampleFd.read();
  if (early !== 0n) console.log("this KVM signalled the resample fd before the guest's EOI");
  expectOut(g.vcpu, "out 14 20", "the guest EOIed vector 0x35");
  strictEqual(early + resampleFd.read(), 1n, "the resample fd was signalled once by the EOI");
  ok(!decodeRedirection(vm.getIrqchip(KVM_IRQCHIP_IOAPIC).ioapic.redirtbl[19]).remoteIrr);
});

Deno.test("the in-kernel PIT, started with setPit2, interrupts the guest through the PIC", () => {
  using g = interruptGuest();
  const { vm } = g;
  vm.createPit2({ flags: KVM_PIT_SPEAKER_DUMMY });
  // Unmask IRQ0 in the PIC state the guest programmed (it unmasked only IRQ3).
  const chip = vm.getIrqchip(KVM_IRQCHIP_PIC_MASTER);
  chip.pic.imr = 0xf6;
  vm.setIrqchip(chip);
  // Channel 0 as a rate generator (mode 2) with a 0x2000 count: about every 7 ms.
  const pit = vm.getPit2();
  pit.channel0.mode = 2;
  pit.channel0.rwMode = 3;
  pit.channel0.count = 0x2000;
  vm.setPit2(pit);
  expectInterrupt(g, 0x20, "PIT channel 0 → IRQ0 → vector 0x20");
  expectInterrupt(g, 0x20, "and again: the timer is periodic");
  strictEqual(vm.getPit2().channel0.count, 0x2000);
});
