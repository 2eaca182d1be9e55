// vCPU state ioctls: each set is read back with the matching get (and, where
// a guest can see the state, a guest checks it), plus the system-wide CPUID
// and MSR lists, dump(), and the library's refusals of bad input.

import { deepStrictEqual, notStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { Kvm, KvmError } from "../../mod.ts";
import { KvmFpu } from "../../src/abi/mod.ts";
import { setupLongMode } from "../../src/boot/modes.ts";
import {
  KVM_MP_STATE_RUNNABLE,
  KVM_MP_STATE_UNINITIALIZED,
  KVM_VCPUEVENT_VALID_NMI_PENDING,
} from "../../src/abi/vcpu_state.ts";
import { realModeGuest } from "./real_mode_guest.ts";

const err = (operation: string, code: string, message?: RegExp) => (e: unknown) => {
  ok(e instanceof KvmError, `a KvmError, got ${e}`);
  strictEqual(e.operation, operation);
  strictEqual(e.code, code);
  if (message) ok(message.test(e.message), `${e.message} matches ${message}`);
  return true;
};

const text = (...words: number[]) =>
  new TextDecoder().decode(new Uint8Array(new Uint32Array(words).buffer));

Deno.test("supported and emulated CPUID, MSR index and feature lists", () => {
  using kvm = Kvm.open();
  const supported = kvm.getSupportedCpuid();
  const leaf0 = supported.find((e) => e.function === 0);
  ok(leaf0, "leaf 0 is there");
  ok(leaf0.eax >= 0xd, `max basic leaf ${leaf0.eax}`);
  ok(
    ["AuthenticAMD", "GenuineIntel"].includes(text(leaf0.ebx, leaf0.edx, leaf0.ecx)),
    `vendor ${text(leaf0.ebx, leaf0.edx, leaf0.ecx)}`,
  );
  ok(supported.some((e) => e.function === 0x80000001), "extended leaves are there");
  ok(supported.length > 10 && supported.length <= 256);
  const emulated = kvm.getEmulatedCpuid();
  ok(Array.isArray(emulated));
  const msrs = kvm.getMsrIndexList();
  ok(msrs.includes(0x174), "SYSENTER_CS is in the MSR index list");
  ok(msrs.includes(0xc0000082), "LSTAR is in the MSR index list");
  const features = kvm.getMsrFeatureIndexList();
  ok(features.length > 0, "there are feature MSRs");
  const values = kvm.getFeatureMsrs(features);
  deepStrictEqual(values.map((v) => v.index), features);
  throws(() => kvm.getFeatureMsrs([]), err("KVM_GET_MSRS", "EINVAL", /no MSR/));
});

Deno.test("setCpuid2 / getCpuid2 round trip, and the guest's CPUID sees it", () => {
  // deno-fmt-ignore
  const program = [
    0x66, 0x31, 0xc0, // xor eax, eax
    0x0f, 0xa2,       // cpuid              ; leaf 0
    0xf4,             // hlt
  ];
  using guest = realModeGuest(program, 0x1000);
  const { kvm, vcpu } = guest;
  const entries = kvm.getSupportedCpuid();
  const leaf0 = entries.find((e) => e.function === 0)!;
  // "DenoKVMtests" as EBX, EDX, ECX.
  const vendor = new Uint32Array(new TextEncoder().encode("DenoKVMtests").buffer);
  Object.assign(leaf0, { ebx: vendor[0], edx: vendor[1], ecx: vendor[2] });
  vcpu.setCpuid2(entries);
  const got = vcpu.getCpuid2();
  const key = (e: { function: number; index: number }) => `${e.function}.${e.index}`;
  // Every leaf read back was set (kvm_pvm drops leaves it does not support,
  // e.g. 0x1d/0x1e, where kvm-amd returns the whole list).
  const set = new Set(entries.map(key));
  ok(got.every((e) => set.has(key(e))), "KVM_GET_CPUID2 returns only leaves that were set");
  ok(got.some((e) => e.function === 0) && got.some((e) => e.function === 1), "leaves 0 and 1 kept");
  // A KVM may adjust feature leaves to what it supports (kvm-amd: 1 and 0xD;
  // kvm_pvm: 7 too); the vendor leaf comes back exactly as set.
  deepStrictEqual(got.find((e) => e.function === 0), leaf0, "leaf 0 reads back as set");
  strictEqual(vcpu.run().reason, "hlt");
  const regs = vcpu.getRegs();
  strictEqual(text(Number(regs.rbx), Number(regs.rdx), Number(regs.rcx)), "DenoKVMtests");
  strictEqual(Number(regs.rax), leaf0.eax);

  const tooMany = Array.from({ length: 257 }, (_, i) => ({ ...leaf0, function: i, index: 0 }));
  throws(() => vcpu.setCpuid2(tooMany), err("KVM_SET_CPUID2", "E2BIG", /257 CPUID entries/));
});

Deno.test("FPU, XSAVE and XCRs round trip, and XSAVE shows the FPU's XMM0", () => {
  using guest = realModeGuest([0xf4], 0x1000);
  const { kvm, vcpu } = guest;
  vcpu.setCpuid2(kvm.getSupportedCpuid());

  const fpu = vcpu.getFpu();
  fpu.fcw = 0x27f;
  fpu.xmm.set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
  vcpu.setFpu(fpu);
  const back = vcpu.getFpu(new KvmFpu());
  strictEqual(back.fcw, 0x27f);
  deepStrictEqual([...back.xmm.subarray(0, 16)], [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
  ]);

  ok(vcpu.xsaveSize >= 4096);
  const xsave = vcpu.getXsave();
  strictEqual(xsave.bytes.length, vcpu.xsaveSize);
  // FXSAVE layout: FCW at 0, MXCSR at 24, XMM0 at 160; XSTATE_BV at 512.
  strictEqual(xsave.view.getUint32(24, true), 0x1f80, "MXCSR at its reset value");
  xsave.view.setUint16(0, 0x7f, true); // FCW: all exceptions masked, single precision
  xsave.view.setUint32(24, 0x9f80, true); // MXCSR with flush-to-zero (kvm_fpu does not carry it)
  xsave.bytes[160] = 0x99;
  xsave.view.setBigUint64(512, xsave.view.getBigUint64(512, true) | 3n, true); // x87 and SSE in use
  vcpu.setXsave(xsave);
  const fromFpu = vcpu.getFpu();
  strictEqual(fromFpu.fcw, 0x7f, "KVM_SET_XSAVE reached the x87 state");
  strictEqual(fromFpu.xmm[0], 0x99, "and XMM0");
  const again = vcpu.getXsave();
  strictEqual(again.view.getUint32(24, true), 0x9f80, "MXCSR round-trips in XSAVE");
  strictEqual(again.bytes[160], 0x99);

  const xcrs = vcpu.getXcrs();
  strictEqual(xcrs[0]?.xcr, 0);
  ok(xcrs[0].value & 1n, "XCR0 has x87");
  vcpu.setXcrs([{ xcr: 0, value: 3n }]); // x87 | SSE
  deepStrictEqual(vcpu.getXcrs()[0], { xcr: 0, value: 3n });
  throws(() => vcpu.setXcrs([{ xcr: 0, value: 2n }]), err("KVM_SET_XCRS", "EINVAL"));
});

Deno.test("debug registers, MSRs, vCPU events and TSC frequency round trip", () => {
  using guest = realModeGuest([0xf4], 0x1000);
  const { vcpu } = guest;

  const dr = vcpu.getDebugRegs();
  dr.db.set([0x1000n, 0x2000n, 0x3000n, 0x4000n]);
  dr.dr7 = 0x455n; // L0, L1, L2 and bit 10 (always 1)
  vcpu.setDebugRegs(dr);
  const dr2 = vcpu.getDebugRegs();
  deepStrictEqual([...dr2.db], [0x1000n, 0x2000n, 0x3000n, 0x4000n]);
  strictEqual(dr2.dr7, 0x455n);

  vcpu.setMsrs([
    { index: 0x174, data: 0x10n }, // SYSENTER_CS
    { index: 0x176, data: 0x81000000n }, // SYSENTER_EIP (32 bits on AMD)
    { index: 0xc0000082, data: 0xffffffff81234560n }, // LSTAR
  ]);
  deepStrictEqual(vcpu.getMsrs([0x174, 0x176, 0xc0000082]), [
    { index: 0x174, data: 0x10n },
    { index: 0x176, data: 0x81000000n },
    { index: 0xc0000082, data: 0xffffffff81234560n },
  ]);
  throws(() => vcpu.getMsrs([]), err("KVM_GET_MSRS", "EINVAL", /no MSR/));
  throws(() => vcpu.setMsrs([]), err("KVM_SET_MSRS", "EINVAL", /no MSR/));
  throws(
    () => vcpu.getMsrs([0x174, 0xdead0000]),
    err("KVM_GET_MSRS", "EINVAL", /0xdead0000 cannot be read \(read 1 of 2\)/),
  );

  const events = vcpu.getVcpuEvents();
  strictEqual(events.nmiPending, 0);
  events.nmiPending = 1;
  events.flags = KVM_VCPUEVENT_VALID_NMI_PENDING;
  vcpu.setVcpuEvents(events);
  strictEqual(vcpu.getVcpuEvents().nmiPending, 1, "the NMI is pending after the set");

  const khz = vcpu.getTscKhz();
  ok(khz > 100_000, `TSC at ${khz} kHz`);
  const slower = khz - Math.floor(khz / 10_000); // 100 ppm: within KVM's tolerance
  vcpu.setTscKhz(slower);
  strictEqual(vcpu.getTscKhz(), slower);
});

Deno.test("LAPIC, MP state, reset(), SMI, VAPIC and kvmclock with the in-kernel irqchip", () => {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  vm.createIrqchip();
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
  const bsp = vm.createVcpu(0);
  const ap = vm.createVcpu(1);

  const lapic = bsp.getLapic();
  strictEqual(lapic.id, 0);
  strictEqual(ap.getLapic().id, 1, "vCPU 1's APIC id is 1");
  const bspLapic = bsp.getLapic();
  bspLapic.tpr = 0x30;
  bspLapic.setLvt("lint0", 0x700); // ExtINT, unmasked
  bspLapic.setLvt("lint1", 0x400); // NMI
  bsp.setLapic(bspLapic);
  const back = bsp.getLapic();
  strictEqual(back.tpr, 0x30);
  strictEqual(back.lvt("lint0"), 0x700);
  strictEqual(back.lvt("lint1"), 0x400);
  strictEqual(back.read(0x80), 0x30, "TPR by offset");
  throws(() => back.read(0x84), err("LAPIC register access", "EINVAL"));
  const base = bsp.getApicBase();
  strictEqual(base & ~0xfffn, 0xfee00000n, "APIC at its default address");
  ok(base & (1n << 8n), "vCPU 0 is the BSP");
  ok(!(ap.getApicBase() & (1n << 8n)), "vCPU 1 is not");

  strictEqual(bsp.getMpState(), KVM_MP_STATE_RUNNABLE);
  strictEqual(ap.getMpState(), KVM_MP_STATE_UNINITIALIZED, "an AP waits for INIT");
  bsp.reset();
  strictEqual(bsp.getMpState(), KVM_MP_STATE_UNINITIALIZED, "reset() = kvm_reset_mpstate");
  bsp.setMpState(KVM_MP_STATE_RUNNABLE);
  strictEqual(bsp.getMpState(), KVM_MP_STATE_RUNNABLE);

  if (kvm.checkExtension("X86_SMM")) {
    bsp.smi();
    strictEqual(bsp.getVcpuEvents().smiPending, 1, "the SMI is pending");
  } else {
    throws(() => bsp.smi(), (e) => e instanceof KvmError && e.operation === "KVM_SMI");
  }
  bsp.setVapicAddr(0x5000);
  bsp.setVapicAddr(0);

  throws(() => bsp.kvmclockCtrl(), err("KVM_KVMCLOCK_CTRL", "EINVAL"));
  bsp.setMsrs([{ index: 0x4b564d01, data: 0x6000n | 1n }]); // MSR_KVM_SYSTEM_TIME_NEW, enabled
  bsp.kvmclockCtrl();
});

Deno.test("translate() walks the guest's page tables; dump() shows the state", () => {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  const ram = vm.allocateMemory(0x400000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
  const vcpu = vm.createVcpu(0);
  setupLongMode(vm, vcpu, { entry: 0x1000, stack: 0x8000, identityMapGiB: 1 });
  const t = vcpu.translate(0x200008n);
  deepStrictEqual(t, { physicalAddress: 0x200008n, valid: true, writeable: true, usermode: false });
  strictEqual(vcpu.translate(0x40000000).valid, false, "past the 1 GiB identity map");
  const text = vcpu.dump();
  ok(/RIP 0+1000/.test(text), text);
  ok(/CR0 0+80000011/.test(text), text);
  ok(/EFER 0+500/.test(text), text);
  ok(/CS {2}0010 base/.test(text), text);
  ok(text.includes("mp state: runnable"), text);
});

Deno.test("nested state round trip, or a KvmError naming the missing capability", () => {
  using guest = realModeGuest([0xf4], 0x1000);
  const { vcpu } = guest;
  if (guest.kvm.checkExtension("NESTED_STATE") === 0) {
    throws(() => vcpu.getNestedState(), err("KVM_GET_NESTED_STATE", "EOPNOTSUPP", /NESTED_STATE/));
    return;
  }
  const state = vcpu.getNestedState();
  ok(state.size >= 128, `size ${state.size}`);
  strictEqual(state.bytes.length, state.size);
  vcpu.setNestedState(state);
  const again = vcpu.getNestedState();
  deepStrictEqual([again.format, again.flags, again.size], [state.format, state.flags, state.size]);
  notStrictEqual(again.bytes, state.bytes);
});

Deno.test("signal mask: set and clear; bad signal numbers are refused", () => {
  using guest = realModeGuest([0xf4], 0x1000);
  const { vcpu } = guest;
  vcpu.setSignalMask([10, 12]); // SIGUSR1, SIGUSR2 blocked while in the guest
  strictEqual(vcpu.run().reason, "hlt");
  vcpu.setSignalMask(null);
  throws(() => vcpu.setSignalMask([0]), err("KVM_SET_SIGNAL_MASK", "EINVAL"));
  vcpu.close();
  throws(() => vcpu.getFpu(), err("KVM_GET_FPU", "EBADF"));
});
