// virtio-pci with MSI-X on a real KVM, without Linux: the driver's side
// (features, one queue, the MSI-X table) goes through the transport as a
// vCPU's exits would; a real-mode guest kicks the queue with one 16-bit store
// to its notify word, which an ioeventfd takes in the kernel; the device
// thread serves the request from the image and raises the queue vector's
// irqfd, which the runtime routed with KVM_SET_GSI_ROUTING as an MSI: the
// vector lands in the LAPIC's IRR with no exit and no IOAPIC. A masked
// vector holds the interrupt back as a pending bit until it is unmasked.

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { ApicReg } from "../../src/abi/lapic.ts";
import { Status } from "../../src/devices/virtio/constants.ts";
import { VirtioPciBar } from "../../src/devices/virtio/pci.ts";
import { VirtioRuntime } from "../../src/devices/virtio/runtime.ts";
import { Word } from "../../src/devices/virtio/state.ts";
import type { Vcpu } from "../../src/kvm/vcpu.ts";
import { featureTest, lacksCap } from "./kvm_features.ts";
import { guest } from "./vm_guest.ts";

const BAR = 0xd0000; // aligned to the BAR's 32 KiB, reachable from real mode
const DESC = 0x20000;
const AVAIL = 0x21000;
const USED = 0x22000;
const HEADER = 0x23000;
const DATA = 0x24000;
const STATUS_BYTE = 0x25000;
const VECTOR = 0x23;
const MSIX_CAP = 0x84;

// deno-fmt-ignore
const KICK = [
  [0xb8, 0x00, 0xd0],       // mov ax, 0xd000
  [0x8e, 0xc0],             // mov es, ax            ; ES base = the BAR
  [0x31, 0xc0],             // xor ax, ax            ; queue 0
  [0x26, 0xa3, 0x00, 0x30], // mov [es:0x3000], ax   ; queue 0's notify word: an ioeventfd
  [0xe6, 0x10],             // out 0x10, al          ; the guest's only exit
  [0xf4],                   // hlt
];

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = performance.now() + 90_000; // the Worker loads (and is type-checked) first
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function inIrr(vcpu: Vcpu, vector: number): boolean {
  const word = vcpu.getLapic().read(ApicReg.IRR + 0x10 * (vector >> 5));
  return (word & (1 << (vector & 31))) !== 0;
}

featureTest(
  "virtio-pci: an ioeventfd kick is served and its MSI-X vector reaches the LAPIC through a GSI route",
  lacksCap("IOEVENTFD") ?? lacksCap("IRQFD") ?? lacksCap("IRQCHIP") ??
    lacksCap("IRQ_ROUTING"),
  async () => {
    const path = Deno.makeTempFileSync({ suffix: ".img" });
    const image = new Uint8Array(8 * 512);
    for (let s = 0; s < 8; s++) image.fill(0x40 + s, s * 512, (s + 1) * 512);
    Deno.writeFileSync(path, image);
    using g = guest(KICK, { irqchip: true, ramSize: 0x40000 });
    const { vm, vcpu } = g;
    const lapic = vcpu.getLapic();
    lapic.spuriousVector = 0x1ff; // software-enabled: a disabled APIC drops fixed interrupts
    vcpu.setLapic(lapic);
    const slot = vm.memorySlots.get(0)!;
    const runtime = VirtioRuntime.start(
      vm,
      [{ gpa: 0, hostAddress: slot.userspaceAddr, size: slot.memorySize }],
      [{ spec: { kind: "block", path }, address: BAR, gsi: 16 }],
      { transport: "pci" },
    );
    try {
      const t = runtime.devices[0].transport;
      const access = (offset: number, width: number, value?: number) => {
        const d = new Uint8Array(width);
        if (value === undefined) {
          t.read(offset, d);
          return d.reduceRight((v, b) => v * 256 + b, 0);
        }
        for (let i = 0; i < width; i++) d[i] = (value >>> (8 * i)) & 0xff;
        t.write(offset, d);
        return 0;
      };
      const cfg = (offset: number, width: number, value: number) => {
        const d = new Uint8Array(width);
        for (let i = 0; i < width; i++) d[i] = (value >>> (8 * i)) & 0xff;
        (t as unknown as { writeConfig(o: number, d: Uint8Array): void }).writeConfig(offset, d);
      };
      // MSI-X on; vector 1 (the queues) to APIC 0, fixed, vector 0x23; left masked for now.
      cfg(MSIX_CAP + 2, 2, 0x8001);
      access(VirtioPciBar.MSIX_TABLE + 16, 4, 0xfee0_0000);
      access(VirtioPciBar.MSIX_TABLE + 20, 4, 0);
      access(VirtioPciBar.MSIX_TABLE + 24, 4, VECTOR);
      // The driver: VERSION_1 only, one queue of 8 on vector 1, DRIVER_OK.
      access(0x14, 1, Status.ACKNOWLEDGE | Status.DRIVER);
      access(0x08, 4, 1);
      access(0x0c, 4, 1);
      access(0x14, 1, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
      access(0x16, 2, 0);
      access(0x18, 2, 8);
      access(0x1a, 2, 1);
      strictEqual(access(0x1a, 2), 1, "the queue takes vector 1");
      access(0x20, 4, DESC);
      access(0x28, 4, AVAIL);
      access(0x30, 4, USED);
      access(0x1c, 2, 1);
      access(0x14, 1, 0x0f);
      const ram = new DataView(slot.bytes.buffer, slot.bytes.byteOffset, slot.bytes.byteLength);
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
      slot.bytes[STATUS_BYTE] = 0xff;
      ram.setUint16(AVAIL + 4, 0, true);
      ram.setUint16(AVAIL + 2, 1, true);
      strictEqual(vcpu.run().reason, "io", "the kick did not exit: the next exit is the OUT");
      await until(() => ram.getUint16(USED + 2, true) === 1, "the used ring");
      deepStrictEqual(
        { id: ram.getUint32(USED + 4, true), len: ram.getUint32(USED + 8, true) },
        { id: 0, len: 513 },
      );
      strictEqual(slot.bytes.subarray(DATA, DATA + 512).every((b) => b === 0x45), true);
      // Vector 1 is masked: the interrupt waits as its pending bit, the LAPIC has nothing.
      const state = t.state;
      await until(() => (Atomics.load(state, Word.VECTOR_PENDING) & 2) !== 0, "the pending bit");
      strictEqual(access(VirtioPciBar.MSIX_PBA, 4), 2);
      strictEqual(inIrr(vcpu, VECTOR), false);
      strictEqual(Atomics.load(state, Word.INTERRUPT), 0, "no ISR bit with MSI-X");
      // Unmasking routes the vector (KVM_SET_GSI_ROUTING) and sends the pending interrupt
      // through the irqfd: it is in the IRR at once, the vCPU never ran for it.
      access(VirtioPciBar.MSIX_TABLE + 28, 4, 0);
      strictEqual(access(VirtioPciBar.MSIX_PBA, 4), 0);
      await until(() => inIrr(vcpu, VECTOR), "the vector in the IRR");
      // A reset keeps MSI-X and the routing, clears the device.
      access(0x14, 1, 0);
      strictEqual(access(0x14, 1), 0);
      strictEqual(access(0x1c, 2), 0);
      ok(Atomics.load(state, Word.MSI_X) === 1);
      strictEqual(runtime.errors.length, 0);
    } finally {
      runtime.stop();
      Deno.removeSync(path);
    }
  },
);
