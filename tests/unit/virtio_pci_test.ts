// The virtio-pci transport without a VM: configuration mechanism #1, BAR
// sizing, the capability chain as Linux's virtio_pci_modern walks it, the
// common configuration, MSI-X routing, masking and pending bits, an entropy
// request served end to end through the shared device thread code, and the
// DSDT's PCI root bridge.

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { buildDsdt, eisaId } from "../../src/boot/aml.ts";
import { INT_CONFIG, INT_VRING, Status } from "../../src/devices/virtio/constants.ts";
import { VirtioMemory } from "../../src/devices/virtio/memory.ts";
import {
  type MsiMessage,
  NO_VECTOR,
  PciConfigPorts,
  pciHostBridge,
  raiseMsix,
  VIRTIO_PCI_BAR_SIZE,
  VIRTIO_PCI_NOTIFY_MULTIPLIER,
  VirtioPciBar,
  VirtioPciTransport,
  virtioPciVectorCount,
} from "../../src/devices/virtio/pci.ts";
import { RngBackend, rngFront } from "../../src/devices/virtio/rng.ts";
import { defaultGsiRoutes } from "../../src/devices/virtio/runtime.ts";
import { VirtioRunner } from "../../src/devices/virtio/runner.ts";
import { createDeviceState, Word } from "../../src/devices/virtio/state.ts";

const BAR = 0xd000_8000;

/** A transport for the entropy device with a recording link and an in-process runner. */
function setup() {
  const front = rngFront();
  const state = createDeviceState(front.queueMax.length);
  const routes: [number, MsiMessage][] = [];
  const fired: number[] = [];
  const sent: number[] = [];
  const ram = new Uint8Array(0x10_0000);
  const memory = new VirtioMemory([{ gpa: 0x10_0000, bytes: ram }]);
  const runner = new VirtioRunner(memory, [{
    front,
    state,
    backend: new RngBackend(),
    interrupt: (cause, queues) => raiseMsix(state, cause, queues, (v) => sent.push(v)),
  }]);
  const transport = new VirtioPciTransport(front, state, {
    notify: () => runner.service(),
    reset: () => runner.reset(0),
    route: (v, m) => routes.push([v, { ...m }]),
    fire: (v) => fired.push(v),
  }, BAR);
  const ports = new PciConfigPorts([pciHostBridge(), transport]);
  const io = new Uint8Array(4);
  const dv = new DataView(io.buffer);
  /** A configuration read of `width` bytes at 00:dev.0 register `reg` through 0xcf8/0xcfc. */
  const cfgRead = (dev: number, reg: number, width = 4) => {
    dv.setUint32(0, (0x8000_0000 | dev << 11 | (reg & 0xfc)) >>> 0, true);
    ports.write(0, io);
    const data = new Uint8Array(width);
    ports.read(4 + (reg & 3), data);
    return width === 4
      ? new DataView(data.buffer).getUint32(0, true)
      : width === 2
      ? new DataView(data.buffer).getUint16(0, true)
      : data[0];
  };
  const cfgWrite = (dev: number, reg: number, value: number, width = 4) => {
    dv.setUint32(0, (0x8000_0000 | dev << 11 | (reg & 0xfc)) >>> 0, true);
    ports.write(0, io);
    const data = new Uint8Array(width);
    for (let i = 0; i < width; i++) data[i] = (value >>> (8 * i)) & 0xff;
    ports.write(4 + (reg & 3), data);
  };
  const barRead = (offset: number, width: number) => {
    const data = new Uint8Array(width);
    transport.read(offset, data);
    let v = 0;
    for (let i = width - 1; i >= 0; i--) v = v * 256 + data[i];
    return v;
  };
  const barWrite = (offset: number, value: number, width: number) => {
    const data = new Uint8Array(width);
    for (let i = 0; i < width; i++) data[i] = (value >>> (8 * i)) & 0xff;
    transport.write(offset, data);
  };
  return {
    front,
    state,
    routes,
    fired,
    sent,
    ram,
    transport,
    ports,
    cfgRead,
    cfgWrite,
    barRead,
    barWrite,
  };
}

Deno.test("virtio-pci: configuration mechanism #1 finds the host bridge and the device, nothing else", () => {
  const t = setup();
  // The address register reads back (Linux's type 1 probe), a byte write to 0xcfb is ignored.
  t.ports.write(3, new Uint8Array([1]));
  const io = new Uint8Array(4);
  new DataView(io.buffer).setUint32(0, 0x8000_0000, true);
  t.ports.write(0, io);
  io.fill(0);
  t.ports.read(0, io);
  strictEqual(new DataView(io.buffer).getUint32(0, true), 0x8000_0000);
  // 00:00.0: a host bridge (class 06 00).
  strictEqual(t.cfgRead(0, 0x08) >>> 16, 0x0600);
  strictEqual(t.cfgRead(0, 0x0e, 1) & 0x7f, 0); // header type 0, single function
  // 00:01.0: virtio entropy, modern (0x1040 + 4), revision 1, subsystem vendor 0x1af4.
  strictEqual(t.cfgRead(1, 0x00), 0x1044_1af4);
  strictEqual(t.cfgRead(1, 0x02, 2), 0x1044);
  strictEqual(t.cfgRead(1, 0x08) & 0xff, 1);
  strictEqual(t.cfgRead(1, 0x2c) & 0xffff, 0x1af4);
  strictEqual(t.cfgRead(1, 0x3d, 1), 0, "no INTx pin");
  // Other devices, functions and buses read all ones; so does a disabled address.
  strictEqual(t.cfgRead(2, 0x00), 0xffff_ffff);
  strictEqual(t.cfgRead(31, 0x00), 0xffff_ffff);
  new DataView(io.buffer).setUint32(0, 0x8000_0100, true); // function 1
  t.ports.write(0, io);
  t.ports.read(4, io);
  strictEqual(new DataView(io.buffer).getUint32(0, true), 0xffff_ffff);
  new DataView(io.buffer).setUint32(0, 0x8001_0000, true); // bus 1
  t.ports.write(0, io);
  t.ports.read(4, io);
  strictEqual(new DataView(io.buffer).getUint32(0, true), 0xffff_ffff);
  new DataView(io.buffer).setUint32(0, 0x0000_0800, true); // enable bit clear
  t.ports.write(0, io);
  t.ports.read(4, io);
  strictEqual(new DataView(io.buffer).getUint32(0, true), 0xffff_ffff);
  // Read-only fields keep their value.
  t.cfgWrite(1, 0x00, 0x1234_5678);
  strictEqual(t.cfgRead(1, 0x00), 0x1044_1af4);
});

Deno.test("virtio-pci: BAR sizing writes and the command register", () => {
  const t = setup();
  strictEqual(t.cfgRead(1, 0x10), BAR, "BAR 0: 32-bit memory at the given address");
  t.cfgWrite(1, 0x10, 0xffff_ffff);
  strictEqual(t.cfgRead(1, 0x10), (~(VIRTIO_PCI_BAR_SIZE - 1)) >>> 0, "size read back");
  t.cfgWrite(1, 0x10, BAR);
  strictEqual(t.cfgRead(1, 0x10), BAR);
  for (let bar = 0x14; bar <= 0x24; bar += 4) {
    t.cfgWrite(1, bar, 0xffff_ffff);
    strictEqual(t.cfgRead(1, bar), 0, `BAR at ${bar.toString(16)} unimplemented`);
  }
  t.cfgWrite(1, 0x30, 0xffff_ffff);
  strictEqual(t.cfgRead(1, 0x30), 0, "no expansion ROM");
  t.cfgWrite(1, 0x04, 0xffff, 2);
  strictEqual(t.cfgRead(1, 0x04, 2), 0x0407, "I/O, memory, bus master, INTx disable");
  strictEqual(t.cfgRead(1, 0x06, 2) & 0x10, 0x10, "a capability list");
});

Deno.test("virtio-pci: the capability chain Linux's virtio_pci_modern looks for", () => {
  const t = setup();
  const found = new Map<number, { offset: number; length: number; at: number }>();
  let msix = 0;
  let at = t.cfgRead(1, 0x34, 1);
  for (let n = 0; at !== 0 && n < 48; n++) {
    const id = t.cfgRead(1, at, 1);
    if (id === 0x09) {
      strictEqual(t.cfgRead(1, at + 4, 1), 0, "in BAR 0");
      found.set(t.cfgRead(1, at + 3, 1), {
        offset: t.cfgRead(1, at + 8),
        length: t.cfgRead(1, at + 12),
        at,
      });
    } else if (id === 0x11) msix = at;
    at = t.cfgRead(1, at + 1, 1);
  }
  strictEqual(at, 0, "the chain ends");
  deepStrictEqual([...found.keys()].sort(), [1, 2, 3, 4, 5]);
  strictEqual(t.cfgRead(1, found.get(5)!.at + 2, 1), 20, "the PCI_CFG capability's length");
  deepStrictEqual(found.get(1), {
    offset: VirtioPciBar.COMMON,
    length: 0x38,
    at: found.get(1)!.at,
  });
  strictEqual(found.get(2)!.offset, VirtioPciBar.NOTIFY);
  strictEqual(t.cfgRead(1, found.get(2)!.at + 16), VIRTIO_PCI_NOTIFY_MULTIPLIER);
  strictEqual(t.cfgRead(1, found.get(2)!.at + 2, 1), 20, "the notify capability's length");
  strictEqual(found.get(3)!.offset, VirtioPciBar.ISR);
  strictEqual(found.get(4)!.offset, VirtioPciBar.DEVICE);
  ok(msix > 0, "an MSI-X capability");
  strictEqual(t.cfgRead(1, msix + 2, 2) & 0x7ff, 1, "table size 2");
  strictEqual(t.cfgRead(1, msix + 4), VirtioPciBar.MSIX_TABLE);
  strictEqual(t.cfgRead(1, msix + 8), VirtioPciBar.MSIX_PBA);
  for (const c of found.values()) ok(c.offset + c.length <= VIRTIO_PCI_BAR_SIZE);
});

Deno.test("virtio-pci: the PCI_CFG window reaches the BAR's registers through configuration space", () => {
  const t = setup();
  let cap = 0;
  for (let at = t.cfgRead(1, 0x34, 1); at !== 0; at = t.cfgRead(1, at + 1, 1)) {
    if (t.cfgRead(1, at, 1) === 0x09 && t.cfgRead(1, at + 3, 1) === 5) cap = at;
  }
  ok(cap > 0, "a VIRTIO_PCI_CAP_PCI_CFG capability");
  const select = (bar: number, offset: number, length: number) => {
    t.cfgWrite(1, cap + 4, bar, 1);
    t.cfgWrite(1, cap + 8, offset);
    t.cfgWrite(1, cap + 12, length);
  };
  const data = cap + 16;
  // A read: the device feature word (select 0 by default: the low 32 bits).
  select(0, 0x04, 4);
  strictEqual(t.cfgRead(1, data), Number(t.front.features & 0xffff_ffffn));
  // A byte write: the device status, seen through the BAR itself; and read back through the window.
  select(0, 0x14, 1);
  t.cfgWrite(1, data, Status.ACKNOWLEDGE, 1);
  strictEqual(t.barRead(0x14, 1), Status.ACKNOWLEDGE);
  t.barWrite(0x14, Status.ACKNOWLEDGE | Status.DRIVER, 1);
  strictEqual(t.cfgRead(1, data, 1), Status.ACKNOWLEDGE | Status.DRIVER);
  // A 2-byte register: num_queues.
  select(0, 0x12, 2);
  strictEqual(t.cfgRead(1, data, 2), t.front.queueMax.length);
  // Only an access covering the data's first byte reaches the register: the ISR (read-to-clear)
  // read a byte at a time is read once.
  select(0, 0x1000, 4);
  Atomics.store(t.state, Word.INTERRUPT, 1);
  strictEqual(t.cfgRead(1, data, 1), 1, "the ISR through the window");
  Atomics.store(t.state, Word.INTERRUPT, 1);
  strictEqual(t.cfgRead(1, data + 1, 1), 0, "a later byte: the data as last read");
  strictEqual(Atomics.load(t.state, Word.INTERRUPT), 1, "the ISR not read again");
  // Selections the spec does not allow access nothing: the data bytes keep what was written.
  for (
    const [bar, offset, length] of [
      [1, 0x14, 1],
      [0, 0x13, 2],
      [0, 0x14, 3],
      [0, 0x14, 0],
      [0, 0x8000, 4],
      [0, 0xffff_fffc, 4],
    ]
  ) {
    select(bar, offset, length);
    t.cfgWrite(1, data, 0x5a5a_5a5a);
    strictEqual(t.cfgRead(1, data), 0x5a5a_5a5a, `bar ${bar}, offset ${offset}, length ${length}`);
  }
  strictEqual(t.barRead(0x14, 1), Status.ACKNOWLEDGE | Status.DRIVER, "the status unchanged");
  // The capability's own header stays read-only.
  t.cfgWrite(1, cap, 0xffff_ffff);
  strictEqual(t.cfgRead(1, cap + 3, 1), 5);
});

/** The MSI-X capability's offset. */
function msixCap(t: ReturnType<typeof setup>): number {
  for (let at = t.cfgRead(1, 0x34, 1); at !== 0; at = t.cfgRead(1, at + 1, 1)) {
    if (t.cfgRead(1, at, 1) === 0x11) return at;
  }
  throw new Error("no MSI-X capability");
}

Deno.test("virtio-pci: MSI-X entries are routed when unmasked, pending bits go out on unmask", () => {
  const t = setup();
  const cap = msixCap(t);
  const T = VirtioPciBar.MSIX_TABLE;
  // Entries start masked; writing messages routes nothing yet.
  strictEqual(t.barRead(T + 12, 4), 1);
  t.barWrite(T + 0, 0xfee0_0000, 4);
  t.barWrite(T + 8, 0x41, 4);
  t.barWrite(T + 16, 0xfee0_1000, 4);
  t.barWrite(T + 24, 0x42, 4);
  strictEqual(t.routes.length, 0);
  // The driver's vectors: config 0, the queue 1 (a vector the table lacks reads NO_VECTOR).
  t.barWrite(0x10, 7, 2);
  strictEqual(t.barRead(0x10, 2), NO_VECTOR);
  t.barWrite(0x10, 0, 2);
  strictEqual(t.barRead(0x10, 2), 0);
  t.barWrite(0x16, 0, 2);
  t.barWrite(0x1a, 1, 2);
  strictEqual(t.barRead(0x1a, 2), 1);
  // MSI-X enabled but entries masked: an interrupt becomes a pending bit.
  t.cfgWrite(1, cap + 2, 0x8000 | 1, 2);
  ok(t.transport.msixEnabled);
  raiseMsix(t.state, INT_VRING, 1, (v) => t.sent.push(v));
  deepStrictEqual(t.sent, []);
  strictEqual(t.barRead(VirtioPciBar.MSIX_PBA, 4), 2, "PBA: vector 1 pending");
  // Unmask vector 1: routed with its message, then the pending interrupt fires once.
  t.barWrite(T + 28, 0, 4);
  deepStrictEqual(t.routes, [[1, { addressLo: 0xfee0_1000, addressHi: 0, data: 0x42 }]]);
  deepStrictEqual(t.fired, [1]);
  strictEqual(t.barRead(VirtioPciBar.MSIX_PBA, 4), 0);
  raiseMsix(t.state, INT_VRING, 1, (v) => t.sent.push(v));
  raiseMsix(t.state, INT_CONFIG, 0, (v) => t.sent.push(v)); // vector 0 still masked
  deepStrictEqual(t.sent, [1]);
  strictEqual(t.barRead(VirtioPciBar.MSIX_PBA, 4), 1);
  t.barWrite(T + 12, 0, 4);
  deepStrictEqual(t.fired, [1, 0]);
  strictEqual(t.routes.length, 2);
  // A changed message is routed again; the same one is not.
  t.barWrite(T + 24, 0x43, 4);
  strictEqual(t.routes.length, 3);
  deepStrictEqual(t.routes[2], [1, { addressLo: 0xfee0_1000, addressHi: 0, data: 0x43 }]);
  t.barWrite(T + 24, 0x43, 4);
  strictEqual(t.routes.length, 3);
  // The function mask holds every vector back.
  t.cfgWrite(1, cap + 2, 0xc000 | 1, 2);
  raiseMsix(t.state, INT_VRING, 1, (v) => t.sent.push(v));
  deepStrictEqual(t.sent, [1]);
  t.cfgWrite(1, cap + 2, 0x8000, 2);
  deepStrictEqual(t.fired, [1, 0, 1]);
  // Out-of-range table accesses are ignored and read 0.
  t.barWrite(T + 32, 0x1234, 4);
  strictEqual(t.barRead(T + 32, 4), 0);
  t.barWrite(T + 0xff0, 0x1234, 4);
  strictEqual(t.barRead(T + 0xff0, 4), 0);
  strictEqual(t.state[Word.INTERRUPT], 0, "no ISR bit with MSI-X");
});

Deno.test("virtio-pci: a driver's set-up through the common configuration, an entropy request, reset", () => {
  const t = setup();
  const cap = msixCap(t);
  const T = VirtioPciBar.MSIX_TABLE;
  t.barWrite(0x14, 0, 1); // reset
  t.barWrite(0x14, Status.ACKNOWLEDGE | Status.DRIVER, 1);
  t.barWrite(0x00, 1, 4);
  strictEqual(t.barRead(0x04, 4) & 1, 1, "VERSION_1 offered");
  t.barWrite(0x08, 1, 4);
  t.barWrite(0x0c, 1, 4);
  t.barWrite(0x14, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK, 1);
  ok(t.barRead(0x14, 1) & Status.FEATURES_OK, "VERSION_1 alone accepted");
  strictEqual(t.barRead(0x12, 2), 1, "one queue");
  t.cfgWrite(1, cap + 2, 0x8000 | 1, 2);
  t.barWrite(T + 16, 0xfee0_0000, 4);
  t.barWrite(T + 24, 0x51, 4);
  t.barWrite(T + 28, 0, 4);
  t.barWrite(0x16, 0, 2);
  strictEqual(t.barRead(0x18, 2), t.front.queueMax[0], "queue_size reads the maximum");
  strictEqual(t.barRead(0x1e, 2), 0, "queue_notify_off");
  t.barWrite(0x18, 8, 2);
  t.barWrite(0x1a, 1, 2);
  const desc = 0x10_0000, avail = 0x10_1000, used = 0x10_2000, buf = 0x10_3000;
  t.barWrite(0x20, desc, 4);
  t.barWrite(0x24, 0, 4);
  t.barWrite(0x28, avail, 4);
  t.barWrite(0x30, used, 4);
  t.barWrite(0x1c, 1, 2);
  strictEqual(t.barRead(0x1c, 2), 1);
  // A live queue's set-up is fixed.
  t.barWrite(0x20, 0x1234_0000, 4);
  strictEqual(t.barRead(0x20, 4), desc);
  t.barWrite(0x14, 0x0f, 1); // DRIVER_OK
  // One write-only descriptor of 16 bytes, made available, then the kick.
  const v = new DataView(t.ram.buffer);
  v.setBigUint64(desc - 0x10_0000, BigInt(buf), true);
  v.setUint32(desc - 0x10_0000 + 8, 16, true);
  v.setUint16(desc - 0x10_0000 + 12, 2, true); // WRITE
  v.setUint16(avail - 0x10_0000 + 4, 0, true); // ring[0] = descriptor 0
  v.setUint16(avail - 0x10_0000 + 2, 1, true); // idx
  t.barWrite(VirtioPciBar.NOTIFY, 0, 2);
  strictEqual(v.getUint16(used - 0x10_0000 + 2, true), 1, "the device used the chain");
  strictEqual(v.getUint32(used - 0x10_0000 + 8, true), 16, "16 bytes written");
  deepStrictEqual(t.sent, [1], "the used-buffer interrupt went out on vector 1");
  strictEqual(t.state[Word.INTERRUPT], 0);
  // A reset clears the queue and the vectors, keeps MSI-X enabled, and masks nothing new.
  t.barWrite(0x14, 0, 1);
  strictEqual(t.barRead(0x14, 1), 0);
  strictEqual(t.barRead(0x10, 2), NO_VECTOR);
  strictEqual(t.barRead(0x1a, 2), NO_VECTOR);
  strictEqual(t.barRead(0x1c, 2), 0);
  strictEqual(t.state[Word.MSI_X], 1);
  ok(t.transport.msixEnabled);
  strictEqual(t.state[Word.VECTOR_MASKED] & 2, 0, "vector 1 stays unmasked and routed");
  // Hostile selectors and widths: nothing breaks, nothing is written.
  t.barWrite(0x16, 0xffff, 2);
  strictEqual(t.barRead(0x18, 2), 0);
  t.barWrite(0x1a, 1, 2);
  strictEqual(t.barRead(0x1a, 2), NO_VECTOR);
  t.barWrite(0x20, 5, 4);
  t.barWrite(0x16, 0, 2);
  t.barWrite(0x18, 8, 4); // wrong width: ignored
  strictEqual(t.barRead(0x18, 2), t.front.queueMax[0]);
  strictEqual(t.barRead(0x18, 4), 0);
  t.barWrite(VIRTIO_PCI_BAR_SIZE - 4, 0xffff_ffff, 4);
});

Deno.test("virtio-pci: a vector per queue, shared where the driver shares, each sent once", () => {
  // A net-like front with three queues, built from the entropy front: four vectors.
  const t = setup();
  const front = { ...t.front, queueMax: [256, 256, 64] };
  strictEqual(virtioPciVectorCount(front), 4);
  const state = createDeviceState(3);
  const fired: number[] = [];
  const tr = new VirtioPciTransport(front, state, {
    notify() {},
    reset() {},
    route() {},
    fire: (v) => fired.push(v),
  }, BAR);
  strictEqual(tr.vectors, 4);
  const w = (o: number, v: number) => tr.write(o, new Uint8Array([v & 0xff, v >> 8]));
  const r = (o: number) => {
    const d = new Uint8Array(2);
    tr.read(o, d);
    return d[0] | d[1] << 8;
  };
  // The MSI-X capability says four entries (table size - 1).
  let cap = tr.config.bytes[0x34];
  while (tr.config.bytes[cap] !== 0x11) cap = tr.config.bytes[cap + 1];
  strictEqual(tr.config.get16(cap + 2) & 0x7ff, 3);
  w(0x16, 0);
  w(0x1a, 1);
  w(0x16, 1);
  w(0x1a, 2); // its own vector
  strictEqual(r(0x1a), 2);
  w(0x1a, 4); // a vector the table lacks: refused
  strictEqual(r(0x1a), NO_VECTOR);
  w(0x1a, 2);
  w(0x16, 2);
  w(0x1a, NO_VECTOR); // a queue without a callback (virtio-net's control queue)
  strictEqual(r(0x1a), NO_VECTOR);
  // Enabled, vectors 1 and 2 unmasked: each queue's interrupt on its own vector.
  tr.writeConfig(cap + 2, new Uint8Array([0, 0x80]));
  const zero = new Uint8Array(4);
  tr.write(VirtioPciBar.MSIX_TABLE + 16 * 1 + 12, zero);
  tr.write(VirtioPciBar.MSIX_TABLE + 16 * 2 + 12, zero);
  const sent: number[] = [];
  const send = (v: number) => sent.push(v);
  raiseMsix(state, INT_VRING, 0b001, send);
  raiseMsix(state, INT_VRING, 0b010, send);
  raiseMsix(state, INT_VRING, 0b111, send); // queue 2 has no vector
  deepStrictEqual(sent, [1, 2, 1, 2]);
  // Queues 0 and 1 on one vector: one message for both.
  w(0x16, 1);
  w(0x1a, 1);
  sent.length = 0;
  raiseMsix(state, INT_VRING, 0b011, send);
  deepStrictEqual(sent, [1]);
  // Vector 3 (masked) goes pending, and out once on its unmask.
  w(0x16, 2);
  w(0x1a, 3);
  raiseMsix(state, INT_VRING, 0b100, send);
  deepStrictEqual(sent, [1]);
  strictEqual(r(VirtioPciBar.MSIX_PBA), 0b1000);
  tr.write(VirtioPciBar.MSIX_TABLE + 16 * 3 + 12, zero);
  deepStrictEqual(fired, [3]);
  strictEqual(r(VirtioPciBar.MSIX_PBA), 0);
});

Deno.test("virtio-pci: the DSDT's PCI root bridge and the default GSI routes", () => {
  const dsdt = buildDsdt({ pci: { memoryBase: 0xd000_0000, memoryLength: 0x1000_0000 } });
  const text = [...dsdt].map((b) => String.fromCharCode(b)).join("");
  ok(text.includes("PCI0"));
  for (const n of ["_HID", "_SEG", "_BBN", "_UID", "_CRS"]) ok(text.includes(n), n);
  const hid = eisaId("PNP0A03");
  deepStrictEqual(hid, [0x0c, 0x41, 0xd0, 0x0a, 0x03]);
  ok(text.includes(String.fromCharCode(...hid)));
  // The _CRS: bus numbers, the config ports, the memory window.
  ok(text.includes(String.fromCharCode(0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8)));
  ok(text.includes(String.fromCharCode(0x88, 13, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0xff, 0)));
  ok(
    text.includes(String.fromCharCode(
      0x87,
      23,
      0,
      0,
      0x0c,
      1,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      0xd0,
      0xff,
      0xff,
      0xff,
      0xdf,
    )),
  );
  let sum = 0;
  for (const b of dsdt) sum = (sum + b) & 0xff;
  strictEqual(sum, 0, "checksum");
  const routes = defaultGsiRoutes();
  strictEqual(routes.length, 40, "24 IOAPIC pins and 16 PIC pins");
  deepStrictEqual(routes.filter((r) => r.gsi === 9).map((r) => r.kind === "irqchip" && r.irqchip), [
    2,
    1,
  ]);
});
