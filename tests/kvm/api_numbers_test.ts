// Numbers are validated at the API edge: a fraction, NaN, ±Infinity, a
// negative or a value past the kernel's field given to a public method is a
// KvmError(EINVAL) naming the parameter, never a RangeError from BigInt() and
// never a value that wraps silently into something the kernel accepts.

import { ok, strictEqual } from "node:assert/strict";
import { EventFd, Kvm, KvmError, Lapic, type Vcpu, type Vm } from "../../mod.ts";

interface World {
  kvm: Kvm;
  vm: Vm;
  vcpu: Vcpu;
  efd: EventFd;
}

/** [what is called, the parameter the message must name, the call]. */
type Case = [string, string, (w: World) => unknown];

const BAD_U32 = [0.5, -1, NaN, Infinity, -Infinity, 2 ** 32];
const BAD_U64 = [0.5, -1, NaN, Infinity, 2 ** 64, -1n, 2n ** 64n];

const cases: Case[] = [
  ...[0.5, 2 ** 64, -1, 2 ** 32, NaN].map((v): Case => [
    `vm.setTssAddr(${v})`,
    "address",
    (w) => w.vm.setTssAddr(v),
  ]),
  ...BAD_U64.map((v): Case => [
    `vm.setIdentityMapAddr(${v})`,
    "address",
    (w) => w.vm.setIdentityMapAddr(v),
  ]),
  ["vm.createVcpu(1.5)", "id", (w) => w.vm.createVcpu(1.5)],
  ["vm.createVcpu(-1)", "id", (w) => w.vm.createVcpu(-1)],
  ["vm.createVcpu(2**32)", "id", (w) => w.vm.createVcpu(2 ** 32)],
  ...BAD_U32.map((v): Case => [`vm.setIrqLine(${v}, 1)`, "irq", (w) => w.vm.setIrqLine(v, 1)]),
  ["vm.irqLineStatus(NaN, 1)", "irq", (w) => w.vm.irqLineStatus(NaN, 1)],
  [
    "setUserMemoryRegion slot 2**32",
    "slot",
    (w) => w.vm.setUserMemoryRegion({ slot: 2 ** 32, guestPhysAddr: 0, memorySize: 0 }),
  ],
  [
    "setUserMemoryRegion slot 0.5",
    "slot",
    (w) => w.vm.setUserMemoryRegion({ slot: 0.5, guestPhysAddr: 0, memorySize: 0 }),
  ],
  [
    "setUserMemoryRegion userspaceAddr -1n",
    "userspaceAddr",
    (w) =>
      w.vm.setUserMemoryRegion({
        slot: 0,
        guestPhysAddr: 0,
        memorySize: 4096,
        userspaceAddr: -1n,
      }),
  ],
  [
    "setUserMemoryRegion userspaceAddr 2n**64n",
    "userspaceAddr",
    (w) =>
      w.vm.setUserMemoryRegion({
        slot: 0,
        guestPhysAddr: 0,
        memorySize: 4096,
        userspaceAddr: 2n ** 64n,
      }),
  ],
  ...BAD_U64.map((v): Case => ["EventFd.write(" + v + ")", "value", (w) => w.efd.write(v)]),
  ["EventFd.create initialValue -1", "initialValue", () => EventFd.create({ initialValue: -1 })],
  ["EventFd.create initialValue 0.5", "initialValue", () => EventFd.create({ initialValue: 0.5 })],
  ["vm.registerIrqfd gsi -1", "gsi", (w) => w.vm.registerIrqfd(w.efd, -1)],
  ["vm.registerIrqfd gsi 0.5", "gsi", (w) => w.vm.registerIrqfd(w.efd, 0.5)],
  ["vm.unregisterIrqfd gsi 2**32", "gsi", (w) => w.vm.unregisterIrqfd(w.efd, 2 ** 32)],
  ["vm.registerIoevent address 0.5", "address", (w) => w.vm.registerIoevent(w.efd, 0.5)],
  ["vm.registerIoevent address 2n**64n", "address", (w) => w.vm.registerIoevent(w.efd, 2n ** 64n)],
  [
    "vm.registerIoevent port 0x10000",
    "port",
    (w) => w.vm.registerIoevent(w.efd, 0x10000, { pio: true }),
  ],
  [
    "vm.registerIoevent datamatch -1",
    "datamatch",
    (w) => w.vm.registerIoevent(w.efd, 0x1000, { datamatch: -1, length: 4 }),
  ],
  ["vm.unregisterIoevent address -1", "address", (w) => w.vm.unregisterIoevent(w.efd, -1)],
  ["vm.registerCoalescedMmio address -1", "address", (w) => w.vm.registerCoalescedMmio(-1, 8)],
  [
    "vm.registerCoalescedMmio address 1.5",
    "address",
    (w) => w.vm.registerCoalescedMmio(1.5, 8),
  ],
  ["vm.setNrMmuPages(0.5)", "pages", (w) => w.vm.setNrMmuPages(0.5)],
  ["vm.setNrMmuPages(-1)", "pages", (w) => w.vm.setNrMmuPages(-1)],
  ["vm.setNrMmuPages(2**64)", "pages", (w) => w.vm.setNrMmuPages(2 ** 64)],
  ["vm.createDevice(0.5)", "type", (w) => w.vm.createDevice(0.5)],
  ["vm.supportsDevice(-1)", "type", (w) => w.vm.supportsDevice(-1)],
  ["vm.checkExtension(0.5)", "capability", (w) => w.vm.checkExtension(0.5)],
  ["kvm.checkExtension(-1)", "capability", (w) => w.kvm.checkExtension(-1)],
  ["vm.enableCap args [-1]", "args[0]", (w) => w.vm.enableCap("MANUAL_DIRTY_LOG_PROTECT2", [-1])],
  [
    "vm.enableCap args [2n**64n]",
    "args[0]",
    (w) => w.vm.enableCap("MANUAL_DIRTY_LOG_PROTECT2", [2n ** 64n]),
  ],
  [
    "vm.enableCap flags 0.5",
    "flags",
    (w) => w.vm.enableCap("MANUAL_DIRTY_LOG_PROTECT2", [1], 0.5),
  ],
  ["vm.createPit2 flags -1", "flags", (w) => w.vm.createPit2({ flags: -1 })],
  ["vm.getIrqchip(0.5)", "chip", (w) => w.vm.getIrqchip(0.5)],
  [
    "vm.signalMsi addressLo 2**32",
    "addressLo",
    (w) => w.vm.signalMsi({ addressLo: 2 ** 32, data: 0 }),
  ],
  ["vm.signalMsi data -1", "data", (w) => w.vm.signalMsi({ addressLo: 0xfee00000, data: -1 })],
  [
    "vm.setGsiRouting gsi -1",
    "gsi",
    (w) => w.vm.setGsiRouting([{ kind: "irqchip", gsi: -1, irqchip: 0, pin: 0 }]),
  ],
  [
    "vm.setGsiRouting irqchip 0.5",
    "irqchip",
    (w) => w.vm.setGsiRouting([{ kind: "irqchip", gsi: 0, irqchip: 0.5, pin: 0 }]),
  ],
  [
    "vm.setGsiRouting pin NaN",
    "pin",
    (w) => w.vm.setGsiRouting([{ kind: "irqchip", gsi: 0, irqchip: 0, pin: NaN }]),
  ],
  [
    "vm.setGsiRouting msi data 2**32",
    "data",
    (w) => w.vm.setGsiRouting([{ kind: "msi", gsi: 24, addressLo: 0xfee00000, data: 2 ** 32 }]),
  ],
  ["vm.getDirtyLog(0.5)", "slot", (w) => w.vm.getDirtyLog(0.5)],
  ["vm.clearDirtyLog(-1)", "slot", (w) => w.vm.clearDirtyLog(-1)],
  ["vm.getMemMap(NaN)", "slot", (w) => w.vm.getMemMap(NaN)],
  ["vm.setClock clock -1n", "clock", (w) => w.vm.setClock({ clock: -1n })],
  ["vm.setClock clock 2n**64n", "clock", (w) => w.vm.setClock({ clock: 2n ** 64n })],
  ["vm.setClock flags 0.5", "flags", (w) => w.vm.setClock({ clock: 0n, flags: 0.5 })],
  ...[0.5, -1, 2 ** 32, NaN].map((v): Case => [
    `vcpu.setTscKhz(${v})`,
    "khz",
    (w) => w.vcpu.setTscKhz(v),
  ]),
  ["vcpu.setMpState(-1)", "state", (w) => w.vcpu.setMpState(-1)],
  ["vcpu.setMpState(0.5)", "state", (w) => w.vcpu.setMpState(0.5)],
  ["vcpu.setVapicAddr(-1)", "address", (w) => w.vcpu.setVapicAddr(-1)],
  ["vcpu.setVapicAddr(0.5)", "address", (w) => w.vcpu.setVapicAddr(0.5)],
  ["vcpu.translate(2n**64n)", "gva", (w) => w.vcpu.translate(2n ** 64n)],
  ["vcpu.translate(1.5)", "gva", (w) => w.vcpu.translate(1.5)],
  ["vcpu.setApicBase(-1n)", "value", (w) => w.vcpu.setApicBase(-1n)],
  ["vcpu.interrupt(0.5)", "vector", (w) => w.vcpu.interrupt(0.5)],
  ["vcpu.getMsrs([0.5])", "index", (w) => w.vcpu.getMsrs([0.5])],
  ["vcpu.getMsrs([-1])", "index", (w) => w.vcpu.getMsrs([-1])],
  ["vcpu.setMsrs index 2**32", "index", (w) => w.vcpu.setMsrs([{ index: 2 ** 32, data: 0n }])],
  ["vcpu.setMsrs data -1n", "data", (w) => w.vcpu.setMsrs([{ index: 0x10, data: -1n }])],
  ["vcpu.setMsrs data 2n**64n", "data", (w) => w.vcpu.setMsrs([{ index: 0x10, data: 2n ** 64n }])],
  [
    "vcpu.setCpuid2 function -1",
    "function",
    (w) => w.vcpu.setCpuid2([{ function: -1, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 }]),
  ],
  [
    "vcpu.setCpuid2 eax 2**32",
    "eax",
    (w) =>
      w.vcpu.setCpuid2([{ function: 0, index: 0, flags: 0, eax: 2 ** 32, ebx: 0, ecx: 0, edx: 0 }]),
  ],
  ["vcpu.setXcrs xcr 0.5", "xcr", (w) => w.vcpu.setXcrs([{ xcr: 0.5, value: 1n }])],
  ["vcpu.setXcrs value -1n", "value", (w) => w.vcpu.setXcrs([{ xcr: 0, value: -1n }])],
  [
    "vcpu.setGuestDebug address 0.5",
    "address",
    (w) => w.vcpu.setGuestDebug({ hardwareBreakpoints: [{ kind: "exec", address: 0.5 }] }),
  ],
  [
    "vcpu.setGuestDebug address 2n**64n",
    "address",
    (w) => w.vcpu.setGuestDebug({ hardwareBreakpoints: [{ kind: "exec", address: 2n ** 64n }] }),
  ],
  ["kvm.getFeatureMsrs([-1])", "index", (w) => w.kvm.getFeatureMsrs([-1])],
  ["lapic.write value -2**31-1", "value", () => new Lapic().write(0x80, -(2 ** 31) - 1)],
  ["kvm.createVm(-1)", "type", (w) => w.kvm.createVm(-1)],
  [
    "device attr group -1",
    "group",
    (w) => {
      using device = w.vm.createDevice(4); // KVM_DEV_TYPE_VFIO
      device.hasAttr({ group: -1, attr: 0 });
    },
  ],
  ["vm.registerCoalescedPio port 0x10000", "port", (w) => w.vm.registerCoalescedPio(0x10000, 1)],
  ["lapic.write value 2**32", "value", () => new Lapic().write(0x80, 2 ** 32)],
  ["lapic.tpr = 256", "tpr", () => (new Lapic().tpr = 256)],
  ["lapic.setLvt value 0.5", "value", () => new Lapic().setLvt("timer", 0.5)],
  ["lapic.vectorBit vector 256", "vector", () => new Lapic().vectorBit(0x100, 256)],
];

function check(name: string, param: string, call: () => unknown): string | undefined {
  try {
    call();
  } catch (error) {
    if (!(error instanceof KvmError)) return `${name}: ${error} (not a KvmError)`;
    if (error.code !== "EINVAL") return `${name}: ${error.code}, not EINVAL (${error.message})`;
    if (!error.message.includes(param)) {
      return `${name}: message ${JSON.stringify(error.message)} does not name ${param}`;
    }
    return undefined;
  }
  return `${name}: succeeded`;
}

Deno.test("bad numbers at the API edge are KvmError(EINVAL) naming the parameter", () => {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  const vcpu = vm.createVcpu(0);
  using efd = EventFd.create();
  const world: World = { kvm, vm, vcpu, efd };
  const failures: string[] = [];
  for (const [name, param, call] of cases) {
    const failure = check(name, param, () => call(world));
    if (failure) failures.push(failure);
  }
  strictEqual(failures.length, 0, `${failures.length} of ${cases.length}:\n${failures.join("\n")}`);
  // The checks refused before any side effect: the VM still works.
  vm.setTssAddr(0xfffbd000);
  strictEqual(vm.vcpus.size, 1);
  ok(vm.checkExtension("USER_MEMORY") > 0);
});

Deno.test("good boundary values still pass the checks", () => {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  using efd = EventFd.create();
  efd.write(0xffff_ffffn); // a large, valid counter increment
  strictEqual(efd.read(), 0xffff_ffffn);
  efd.write(1); // a number is a u64 too
  strictEqual(efd.read(), 1n);
  vm.setIdentityMapAddr(0xfffbc000n);
  vm.setTssAddr(0xfffbd000);
  const vcpu = vm.createVcpu(0);
  vcpu.setMsrs([{ index: 0x10, data: 0n }]);
  const lapic = new Lapic();
  lapic.write(0x80, 0xffff_ffff);
  strictEqual(lapic.read(0x80), 0xffff_ffff);
  lapic.write(0x80, -1); // a signed 32-bit result of a bitwise expression is the same register
  strictEqual(lapic.read(0x80), 0xffff_ffff);
  lapic.tpr = 0xff;
});
