// The virtio device thread on a real KVM: a real-mode guest kicks a
// virtio-blk queue with one store to QueueNotify, which an ioeventfd turns
// into an eventfd signal in the kernel (the vCPU does not exit for it); the
// device Worker wakes, reads the request from guest RAM, fills the buffer
// from the image file, returns it on the used ring and raises the irqfd.
// The driver's side (queue setup) is done from here through the transport,
// as a vCPU's MMIO exits would. A second test leaves that interrupt
// unacknowledged, with the guest halted and its interrupts off: the device
// thread's stall report must find the vector in the LAPIC's IRR and say so.
// A third halts the guest with no device activity at all: with `quietS`
// (DENO_KVM_VIRTIO_QUIET_S) the thread reports vCPU 0's state anyway.

import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import { encodeRedirection, KVM_IRQCHIP_IOAPIC } from "../../src/abi/irqchip.ts";
import { ApicReg } from "../../src/abi/lapic.ts";
import { MmioReg, Status } from "../../src/devices/virtio/constants.ts";
import { VirtioRuntime } from "../../src/devices/virtio/runtime.ts";
import { Word } from "../../src/devices/virtio/state.ts";
import type { Vcpu } from "../../src/kvm/vcpu.ts";
import type { Vm } from "../../src/kvm/vm.ts";
import { featureTest, lacksCap } from "./kvm_features.ts";
import { guest } from "./vm_guest.ts";

const WINDOW = 0xd0000;
const DESC = 0x20000;
const AVAIL = 0x21000;
const USED = 0x22000;
const HEADER = 0x23000;
const DATA = 0x24000;
const STATUS_BYTE = 0x25000;

// deno-fmt-ignore
const KICK = [
  [0xb8, 0x00, 0xd0],             // mov ax, 0xd000
  [0x8e, 0xc0],                   // mov es, ax                 ; ES base = the device window
  [0x66, 0x31, 0xc0],             // xor eax, eax               ; queue 0
  [0x26, 0x66, 0xa3, 0x50, 0x00], // mov [es:0x50], eax         ; QueueNotify: the ioeventfd, no exit
  [0x26, 0x66, 0xa3, 0x64, 0x00], // mov [es:0x64], eax         ; InterruptACK: an ioeventfd too
  [0xe6, 0x10],                   // out 0x10, al               ; the guest's only exit
  [0xf4],                         // hlt
];

/**
 * The driver's side through the transport: VERSION_1, one queue of 8,
 * DRIVER_OK, and one request (read sector 5) in descriptors 0-2, not yet kicked.
 */
function driveRequest(runtime: VirtioRuntime, bytes: Uint8Array) {
  const t = runtime.devices[0].transport;
  const reg = new Uint8Array(4);
  const w32 = (offset: number, value: number) => {
    new DataView(reg.buffer).setUint32(0, value, true);
    t.write(offset, reg);
  };
  const r32 = (offset: number) => {
    t.read(offset, reg);
    return new DataView(reg.buffer).getUint32(0, true);
  };
  strictEqual(r32(MmioReg.DEVICE_ID), 2);
  // The driver's setup: features (VERSION_1 only), one queue of 8, DRIVER_OK.
  w32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER);
  w32(MmioReg.DRIVER_FEATURES_SEL, 1);
  w32(MmioReg.DRIVER_FEATURES, 1);
  w32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
  w32(MmioReg.QUEUE_NUM, 8);
  w32(MmioReg.QUEUE_DESC_LOW, DESC);
  w32(MmioReg.QUEUE_DRIVER_LOW, AVAIL);
  w32(MmioReg.QUEUE_DEVICE_LOW, USED);
  w32(MmioReg.QUEUE_READY, 1);
  w32(
    MmioReg.STATUS,
    Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK,
  );
  // One request: read sector 5 (header, 512-byte buffer, status byte) in descriptors 0-2.
  const ram = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  ram.setUint32(HEADER, 0, true); // VIRTIO_BLK_T_IN
  ram.setBigUint64(HEADER + 8, 5n, true);
  const desc = (i: number, addr: number, len: number, flags: number, next: number) => {
    ram.setBigUint64(DESC + 16 * i, BigInt(addr), true);
    ram.setUint32(DESC + 16 * i + 8, len, true);
    ram.setUint16(DESC + 16 * i + 12, flags, true);
    ram.setUint16(DESC + 16 * i + 14, next, true);
  };
  desc(0, HEADER, 16, 1, 1);
  desc(1, DATA, 512, 3, 2);
  desc(2, STATUS_BYTE, 1, 2, 0);
  bytes[STATUS_BYTE] = 0xff;
  ram.setUint16(AVAIL + 4, 0, true); // ring[0] = head 0
  ram.setUint16(AVAIL + 2, 1, true); // idx 1
  return { ram, r32, w32 };
}

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = performance.now() + 90_000; // the Worker loads (and is type-checked under deno test) first
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

featureTest(
  "virtio-blk on the device thread: an ioeventfd kick is served from the image into guest RAM",
  lacksCap("IOEVENTFD") ?? lacksCap("IRQFD") ?? lacksCap("IRQCHIP"),
  async () => {
    const path = Deno.makeTempFileSync({ suffix: ".img" });
    const image = new Uint8Array(8 * 512);
    for (let s = 0; s < 8; s++) image.fill(0x40 + s, s * 512, (s + 1) * 512);
    Deno.writeFileSync(path, image);
    using g = guest(KICK, { irqchip: true, ramSize: 0x40000 });
    const { vm, vcpu } = g;
    const slot = vm.memorySlots.get(0)!;
    const runtime = VirtioRuntime.start(
      vm,
      [{ gpa: 0, hostAddress: slot.userspaceAddr, size: slot.memorySize }],
      [{ spec: { kind: "block", path }, address: WINDOW, gsi: 16 }],
    );
    try {
      const { ram, r32, w32 } = driveRequest(runtime, slot.bytes);
      const exit = vcpu.run();
      strictEqual(exit.reason, "io", "neither the kick nor the ACK exited: the next is the OUT");
      await until(() => ram.getUint16(USED + 2, true) === 1, "the used ring");
      deepStrictEqual(
        { id: ram.getUint32(USED + 4, true), len: ram.getUint32(USED + 8, true) },
        { id: 0, len: 513 },
      );
      strictEqual(slot.bytes[STATUS_BYTE], 0, "VIRTIO_BLK_S_OK");
      strictEqual(slot.bytes.subarray(DATA, DATA + 512).every((b) => b === 0x45), true);
      // The status bit follows the used index (set just after it): wait for it, bounded.
      await until(() => r32(MmioReg.INTERRUPT_STATUS) === 1, "the used-buffer interrupt");
      strictEqual(r32(MmioReg.INTERRUPT_STATUS), 0, "the driver's read took the bit");
      // A reset waits for the device thread: afterwards everything reads 0.
      w32(MmioReg.STATUS, 0);
      strictEqual(r32(MmioReg.STATUS), 0);
      strictEqual(r32(MmioReg.QUEUE_READY), 0);
      strictEqual(r32(MmioReg.INTERRUPT_STATUS), 0);
      strictEqual(runtime.errors.length, 0);
    } finally {
      runtime.stop();
      Deno.removeSync(path);
    }
  },
);

/**
 * Runs `vcpu` until the device thread's stall probe kicks it out of `KVM_RUN`,
 * answering the probe after each exit as `LinuxMachine.run` does; a 60 s
 * watchdog bounds it.
 */
function runUntilProbed(vcpu: Vcpu, runtime: VirtioRuntime): void {
  vcpu.setWatchdog(60_000);
  try {
    for (;;) {
      const exit = vcpu.run();
      runtime.answerStallProbe(vcpu);
      if (exit.reason === "interrupted") return;
    }
  } finally {
    vcpu.setWatchdog(null);
  }
}

const VECTOR = 0x22;

featureTest(
  "virtio stall report: an interrupt left unacknowledged is found in the LAPIC's IRR, IF 0",
  lacksCap("IOEVENTFD") ?? lacksCap("IRQFD") ?? lacksCap("IRQCHIP"),
  async () => {
    const path = Deno.makeTempFileSync({ suffix: ".img" });
    Deno.writeFileSync(path, new Uint8Array(8 * 512));
    // GSI 16 unmasked, edge, vector 0x22 to APIC 0; the guest kicks, exits, then halts with
    // interrupts off (real mode, RFLAGS 2): the edge reaches the IRR and stays there.
    const openPin = (vm: Vm) => {
      const chip = vm.getIrqchip(KVM_IRQCHIP_IOAPIC);
      chip.ioapic.redirtbl[16] = encodeRedirection({ vector: VECTOR });
      vm.setIrqchip(chip);
    };
    using g = guest(KICK, { irqchip: true, ramSize: 0x40000, setup: openPin });
    const { vm, vcpu } = g;
    const lapic = vcpu.getLapic();
    lapic.spuriousVector = 0x1ff; // software-enabled: a disabled APIC drops fixed interrupts
    vcpu.setLapic(lapic);
    strictEqual(vcpu.getLapic().read(ApicReg.SPIV) & 0x100, 0x100);
    const slot = vm.memorySlots.get(0)!;
    const runtime = VirtioRuntime.start(
      vm,
      [{ gpa: 0, hostAddress: slot.userspaceAddr, size: slot.memorySize }],
      [{ spec: { kind: "block", path }, address: WINDOW, gsi: 16 }],
      { vcpu: vcpu.kickTarget },
    );
    try {
      const { ram } = driveRequest(runtime, slot.bytes);
      strictEqual(vcpu.run().reason, "io", "the kick, then the OUT");
      await until(() => ram.getUint16(USED + 2, true) === 1, "the used ring");
      // The device thread sets the status bit just after it publishes the used index. Looked at
      // in the state word: a read of InterruptStatus is the driver's and would clear it.
      const state = runtime.devices[0].transport.state;
      await until(() => Atomics.load(state, Word.INTERRUPT) === 1, "the interrupt status");
      // The guest halts for good; the device thread's probe kicks it out of KVM_RUN after about
      // 2 s of the unacknowledged status, and this loop answers (as LinuxMachine.run does).
      runUntilProbed(vcpu, runtime);
      await until(() => runtime.stallReports.some((l) => l.includes("verdict")), "the report");
      const report = runtime.stallReports.join("\n");
      match(report, /virtio block: interrupt status 1 unacknowledged for 2 s: raised again/);
      match(
        report,
        /virtio block: IOAPIC pin 16: vector 0x22 edge active-high unmasked remote-IRR 0 .*dest 0x00 physical/,
      );
      match(report, /virtio block: vCPU 0 thread \d+: /);
      const cpu = /virtio block: vCPU 0: RIP .* \(IF 0\) mp-state (\S+) .*IRR \[([^\]]*)\]/.exec(
        report,
      );
      ok(cpu, `no vCPU line in:\n${report}`);
      ok(cpu[2].split(" ").includes("0x22"), `vector 0x22 pending in the IRR:\n${report}`);
      match(report, /verdict: pending in the LAPIC \(IRR\), the guest runs with interrupts off/);
      strictEqual(runtime.errors.length, 0);
    } finally {
      runtime.stop();
      Deno.removeSync(path);
    }
  },
);

featureTest(
  "virtio quiet report: with quietS (DENO_KVM_VIRTIO_QUIET_S), a guest with no device activity is probed",
  lacksCap("IOEVENTFD") ?? lacksCap("IRQFD") ?? lacksCap("IRQCHIP"),
  async () => {
    using g = guest([[0xf4]], { irqchip: true, ramSize: 0x40000 }); // hlt
    const { vm, vcpu } = g;
    const slot = vm.memorySlots.get(0)!;
    const runtime = VirtioRuntime.start(
      vm,
      [{ gpa: 0, hostAddress: slot.userspaceAddr, size: slot.memorySize }],
      [{ spec: { kind: "rng" }, address: WINDOW, gsi: 16 }],
      { vcpu: vcpu.kickTarget, quietS: 1 },
    );
    try {
      runUntilProbed(vcpu, runtime);
      await until(() => runtime.stallReports.some((l) => l.includes("vCPU 0: RIP")), "the report");
      const report = runtime.stallReports.join("\n");
      match(report, /virtio rng: no kick or frame for 1 s: vCPU 0 now/);
      match(report, /virtio rng: IOAPIC pin 16: vector 0x00 edge .* MASKED/);
      match(report, /virtio rng: vCPU 0: RIP 0x1001 .* mp-state halted/);
      ok(!report.includes("verdict"), `no interrupt pending, no verdict:\n${report}`);
    } finally {
      runtime.stop();
    }
  },
);
