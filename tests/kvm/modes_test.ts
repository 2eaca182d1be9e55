// The mode-setup helpers put a vCPU in 32-bit protected mode and in 64-bit
// long mode with one call; guests then use 32/64-bit registers, the stack, and
// memory above 1 MiB (and above 1 GiB through the second page directory).

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { Kvm, KvmError, type Vcpu } from "../../mod.ts";
import {
  CODE_SELECTOR,
  CR0_PE,
  CR0_PG,
  DATA_SELECTOR,
  EFER_LMA,
  setupLongMode,
  setupProtectedMode,
  setupRealMode,
} from "../../src/boot/modes.ts";
import { featureTest, lacksGiantPages } from "./kvm_features.ts";

const ENTRY = 0x1000;
const STACK = 0x8000;
const MiB = 0x100000;
const GiB = 0x40000000;

/** Runs until HLT (at most `limit` exits), returning the port I/O seen as text. */
function runToHlt(vcpu: Vcpu, limit = 20): string[] {
  const seen: string[] = [];
  for (let i = 0; i < limit; i++) {
    const exit = vcpu.run();
    if (exit.reason === "hlt") return seen;
    if (exit.reason === "io") {
      seen.push(
        `${exit.direction} ${exit.port.toString(16)} ${exit.size} ${exit.value.toString(16)}`,
      );
    } else {
      seen.push(exit.reason);
      if (exit.reason !== "interrupted") break;
    }
  }
  throw new Error(`the guest did not halt: ${seen.join(", ")}`);
}

// deno-fmt-ignore
const PROTECTED_PROGRAM = [
  0xb8, 0x78, 0x56, 0x34, 0x12,       // mov eax, 0x12345678
  0xa3, 0x04, 0x00, 0x10, 0x00,       // mov [0x100004], eax     ; above 1 MiB
  0x8b, 0x1d, 0x04, 0x00, 0x10, 0x00, // mov ebx, [0x100004]
  0x43,                               // inc ebx
  0x53,                               // push ebx               ; through SS:ESP
  0x59,                               // pop ecx
  0x66, 0xba, 0x10, 0x00,             // mov dx, 0x10
  0xef,                               // out dx, eax            ; 4-byte marker
  0xf4,                               // hlt
];

Deno.test("protected mode: a flat 32-bit guest uses EAX..ECX, the stack and RAM above 1 MiB", () => {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  const ram = vm.allocateMemory(4 * MiB);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
  ram.bytes.set(PROTECTED_PROGRAM, ENTRY);
  const vcpu = vm.createVcpu(0);
  const layout = setupProtectedMode(vm, vcpu, { entry: ENTRY, stack: STACK });
  strictEqual(layout.codeSelector, CODE_SELECTOR);
  strictEqual(layout.dataSelector, DATA_SELECTOR);

  deepStrictEqual(runToHlt(vcpu), ["out 10 4 12345678"]);
  const regs = vcpu.getRegs();
  strictEqual(regs.rbx, 0x12345679n);
  strictEqual(regs.rcx, 0x12345679n, "push/pop went through the stack");
  strictEqual(regs.rsp, BigInt(STACK));
  strictEqual(regs.rip, BigInt(ENTRY + PROTECTED_PROGRAM.length));
  const mem = new DataView(vm.readGuest(0x100004, 4).buffer);
  strictEqual(mem.getUint32(0, true), 0x12345678, "the guest wrote above 1 MiB");
  const pushed = new DataView(vm.readGuest(STACK - 4, 4).buffer);
  strictEqual(pushed.getUint32(0, true), 0x12345679, "the push landed below ESP");
  const sregs = vcpu.getSregs();
  strictEqual(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE);
  strictEqual(sregs.cs.selector, CODE_SELECTOR);
  strictEqual(sregs.cs.db, 1);
  strictEqual(sregs.ss.selector, DATA_SELECTOR);
});

// deno-fmt-ignore
const LONG_PROGRAM = [
  0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // mov rax, 0x1122334455667788
  0x48, 0x89, 0x04, 0x25, 0x08, 0x00, 0x20, 0x00, // mov [0x200008], rax  ; 2 MiB + 8
  0x48, 0x8b, 0x1c, 0x25, 0x08, 0x00, 0x20, 0x00, // mov rbx, [0x200008]
  0x48, 0xff, 0xc3,                               // inc rbx
  0x48, 0x89, 0x1c, 0x25, 0x10, 0x00, 0x00, 0x40, // mov [0x40000010], rbx ; 1 GiB + 16
  0x53,                                           // push rbx             ; 64-bit push
  0x59,                                           // pop rcx
  0x49, 0x89, 0xc8,                               // mov r8, rcx
  0xb0, 0x64,                                     // mov al, 0x64
  0xe6, 0x10,                                     // out 0x10, al         ; marker
  0xf4,                                           // hlt
];

function longModeGuest() {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const low = vm.allocateMemory(4 * MiB);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: low.size, memory: low });
  const high = vm.allocateMemory(2 * MiB);
  vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: GiB, memorySize: high.size, memory: high });
  low.bytes.set(LONG_PROGRAM, ENTRY);
  const vcpu = vm.createVcpu(0);
  return { kvm, vm, vcpu, [Symbol.dispose]: () => kvm.close() };
}

function checkLongModeRun(guest: ReturnType<typeof longModeGuest>): void {
  const { vm, vcpu } = guest;
  deepStrictEqual(runToHlt(vcpu), ["out 10 1 64"]);
  const regs = vcpu.getRegs();
  strictEqual(regs.rbx, 0x1122334455667789n);
  strictEqual(regs.rcx, 0x1122334455667789n, "push/pop moved 64 bits");
  strictEqual(regs.r8, 0x1122334455667789n, "R8 is usable");
  strictEqual(regs.rax, 0x1122334455667764n, "MOV AL kept the upper bits");
  strictEqual(regs.rsp, BigInt(STACK));
  strictEqual(regs.rip, BigInt(ENTRY + LONG_PROGRAM.length));
  const view = (gpa: number) => new DataView(vm.readGuest(gpa, 8).buffer).getBigUint64(0, true);
  strictEqual(view(0x200008), 0x1122334455667788n, "the guest wrote at 2 MiB + 8");
  strictEqual(view(GiB + 0x10), 0x1122334455667789n, "the guest wrote at 1 GiB + 16");
  strictEqual(view(STACK - 8), 0x1122334455667789n, "the push stored 8 bytes");
  const sregs = vcpu.getSregs();
  ok(sregs.efer & EFER_LMA, "EFER.LMA is set");
  strictEqual(sregs.cs.l, 1);
  strictEqual(sregs.cs.db, 0);
}

Deno.test("long mode (2 MiB pages): a 64-bit guest uses RAX..R8 and RAM above 1 MiB and 1 GiB", () => {
  using guest = longModeGuest();
  const layout = setupLongMode(guest.vm, guest.vcpu, {
    entry: ENTRY,
    stack: STACK,
    identityMapGiB: 2,
  });
  strictEqual(layout.pml4Address, 0x9000);
  strictEqual(layout.pdAddress, 0xb000);
  strictEqual(layout.pageTableEnd, 0xd000, "PML4, PDPT and two page directories");
  strictEqual(layout.identityMapBytes, 2 * GiB);
  checkLongModeRun(guest);
});

const GIANT = "long mode (1 GiB pages): the same guest through a PDPT of 1 GiB pages";
featureTest(GIANT, lacksGiantPages(), () => {
  using guest = longModeGuest();
  // 1 GiB pages need the guest's CPUID to say so (pdpe1gb, leaf 0x80000001 EDX bit 26).
  const cpuid = guest.kvm.getSupportedCpuid();
  guest.vcpu.setCpuid2(cpuid);
  const layout = setupLongMode(guest.vm, guest.vcpu, {
    entry: ENTRY,
    stack: STACK,
    identityMapGiB: 2,
    hugePages: "1G",
  });
  strictEqual(layout.pdAddress, undefined, "no page directories");
  strictEqual(layout.pageTableEnd, 0xb000, "PML4 and PDPT only");
  const pdpt = new DataView(guest.vm.readGuest(layout.pdptAddress, 16).buffer);
  strictEqual(pdpt.getBigUint64(8, true), 0x40000083n, "PDPT[1] maps 1 GiB at 1 GiB (PS|RW|P)");
  checkLongModeRun(guest);
});

Deno.test("real mode helper: CS:IP reaches an entry above 64 KiB", () => {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  const ram = vm.allocateMemory(MiB);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
  // mov ax, 0x1234; out 0x10, ax; hlt
  ram.bytes.set([0xb8, 0x34, 0x12, 0xe7, 0x10, 0xf4], 0x12345);
  const vcpu = vm.createVcpu(0);
  deepStrictEqual(setupRealMode(vcpu, { entry: 0x12345, stack: 0x7000 }), {
    cs: 0x1000,
    ip: 0x2345,
    stack: 0x7000,
  });
  deepStrictEqual(runToHlt(vcpu), ["out 10 2 1234"]);
  strictEqual(vcpu.getRegs().rip, 0x2345n + 6n);
});

Deno.test("mode helpers refuse tables outside RAM and bad layouts", () => {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
  const vcpu = vm.createVcpu(0);
  const code = (op: string, errno: string) => (e: unknown) =>
    e instanceof KvmError && e.operation === op && e.code === errno;
  throws(
    () => setupProtectedMode(vm, vcpu, { entry: ENTRY, gdtAddress: 0x20000 }),
    code("guest memory access", "EFAULT"),
  );
  // Four 2 MiB-page directories do not fit below 64 KiB at 0xe000.
  throws(
    () => setupLongMode(vm, vcpu, { entry: ENTRY, pageTableAddress: 0xe000, identityMapGiB: 4 }),
    code("guest memory access", "EFAULT"),
  );
  throws(
    () => setupLongMode(vm, vcpu, { entry: ENTRY, pageTableAddress: 0x9100 }),
    code("setupLongMode", "EINVAL"),
  );
  throws(
    () => setupLongMode(vm, vcpu, { entry: ENTRY, identityMapGiB: 513 }),
    code("setupLongMode", "EINVAL"),
  );
  throws(() => setupRealMode(vcpu, { entry: 0x100000 }), code("setupRealMode", "EINVAL"));
});
