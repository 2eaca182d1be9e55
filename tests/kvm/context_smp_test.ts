// SMP on KvmContext: with the in-kernel LAPIC, vCPU 0 (the bootstrap
// processor, in flat 32-bit protected mode) wakes the application processors
// with INIT and SIPI through its LAPIC's ICR; each AP starts in real mode at
// the SIPI vector, enters protected mode, reads its APIC id from its own LAPIC
// and reports it through port I/O to an in-worker device.

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { KvmContext, loadNative, setupProtectedMode } from "../../mod.ts";
import { KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED } from "../../src/abi/vcpu_state.ts";

// Loaded once for the file, not inside a test (the resource sanitizer would count it).
await loadNative();

const DEVICE = new URL("./context/test_device.ts", import.meta.url);
const BSP_CODE = 0x1000;
const AP_CODE = 0x10000; // SIPI vector 0x10 → CS 0x1000, IP 0
const GDTR = AP_CODE + 0x40;
const AP_PM32 = AP_CODE + 0x20;

// deno-fmt-ignore
const BSP = [
  0xc7, 0x05, 0xf0, 0x00, 0xe0, 0xfe, 0xff, 0x01, 0x00, 0x00, // mov dword [0xfee000f0], 0x1ff  ; SVR: APIC on
  0xc7, 0x05, 0x00, 0x03, 0xe0, 0xfe, 0x00, 0x45, 0x0c, 0x00, // mov dword [0xfee00300], 0xc4500 ; ICR: INIT to all but self
  0xc7, 0x05, 0x00, 0x03, 0xe0, 0xfe, 0x10, 0x46, 0x0c, 0x00, // mov dword [0xfee00300], 0xc4610 ; ICR: SIPI, vector 0x10
  0xeb, 0xfe,                                                 // jmp $
];

// deno-fmt-ignore
const AP_REAL = [
  0xfa,                                     // cli
  0x2e, 0x0f, 0x01, 0x16, 0x40, 0x00,       // lgdt cs:[0x40]        ; the BSP's GDT
  0x0f, 0x20, 0xc0,                         // mov eax, cr0
  0x0c, 0x01,                               // or al, 1              ; PE
  0x0f, 0x22, 0xc0,                         // mov cr0, eax
  0x66, 0xea, ...le32(AP_PM32), 0x10, 0x00, // jmp dword 0x10:AP_PM32
];

// deno-fmt-ignore
const AP_32 = [
  0xb8, 0x18, 0x00, 0x00, 0x00,             // mov eax, 0x18         ; flat data segment
  0x8e, 0xd8,                               // mov ds, ax
  0xa1, 0x20, 0x00, 0xe0, 0xfe,             // mov eax, [0xfee00020] ; LAPIC ID register
  0xc1, 0xe8, 0x18,                         // shr eax, 24           ; the APIC id
  0xe6, 0x30,                               // out 0x30, al          ; report it
  0xf4,                                     // hlt
  0xeb, 0xfd,                               // jmp hlt
];

function le32(v: number): number[] {
  return [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];
}

Deno.test("context SMP: the BSP wakes two APs with INIT/SIPI; each reports its APIC id", async () => {
  const shared = new SharedArrayBuffer(3 * 8 * 4);
  const words = new Int32Array(shared);
  await using ctx = await KvmContext.create({
    memory: 2 << 20,
    vcpus: 3,
    devices: [{ url: DEVICE, options: { shared } }],
  });
  ok(ctx.irqchipInKernel && ctx.pitInKernel);
  const layout = setupProtectedMode(ctx.vm, ctx.vcpu(0), { entry: BSP_CODE, stack: 0x8000 });
  ctx.vm.writeGuest(BSP_CODE, BSP);
  ctx.vm.writeGuest(AP_CODE, AP_REAL);
  ctx.vm.writeGuest(AP_PM32, AP_32);
  ctx.vm.writeGuest(GDTR, [
    (layout.gdtSize - 1) & 0xff,
    (layout.gdtSize - 1) >> 8,
    ...le32(layout.gdtAddress),
  ]);
  strictEqual(ctx.vcpu(0).getMpState(), KVM_MP_STATE_RUNNABLE, "vCPU 0 is the BSP");
  for (const ap of [1, 2]) {
    strictEqual(ctx.vcpu(ap).getMpState(), KVM_MP_STATE_UNINITIALIZED, `AP ${ap} waits for SIPI`);
  }

  const run = ctx.run();
  // The APs stop themselves once they reported; the BSP spins until stopped.
  const deadline = Date.now() + 20_000;
  while ((words[1 * 8 + 4] === 0 || words[2 * 8 + 4] === 0) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await ctx.stop();
  const result = await run;
  deepStrictEqual(result.vcpus.map((v) => v.stop), [
    { kind: "requested" },
    { kind: "handler", reason: "apic id 1" },
    { kind: "handler", reason: "apic id 2" },
  ]);
  strictEqual(words[1 * 8 + 4], 1 + 1, "AP 1 read APIC id 1 from its LAPIC");
  strictEqual(words[2 * 8 + 4], 2 + 1, "AP 2 read APIC id 2 from its LAPIC");
  // The AP started in real mode at the SIPI vector and stopped at its 2-byte
  // OUT (or just past it, on a KVM that completes port I/O before returning).
  const rip = ctx.vcpu(1).getRegs().rip;
  ok(
    [BigInt(AP_PM32 + 15), BigInt(AP_PM32 + 17)].includes(rip),
    `AP 1 stopped at its OUT (${rip})`,
  );
  strictEqual(ctx.vcpu(1).getSregs().cs.selector, 0x10);
});
