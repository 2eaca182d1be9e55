// The virtio-mmio transport and the split virtqueue, driven by a fake driver
// over a plain Uint8Array guest RAM: registers as the spec lays them out,
// feature negotiation, and every malformed queue or chain ending in
// DEVICE_NEEDS_RESET (never an exception, a hang or a write outside RAM).

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import {
  INT_CONFIG,
  INT_VRING,
  MmioReg,
  Status,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_INDIRECT_DESC,
} from "../../src/devices/virtio/constants.ts";
import type { VirtioBackend } from "../../src/devices/virtio/device.ts";
import { VirtioMemory } from "../../src/devices/virtio/memory.ts";
import {
  DescriptorChain,
  needEvent,
  SplitQueue,
  VirtioError,
} from "../../src/devices/virtio/queue.ts";
import { rngFront } from "../../src/devices/virtio/rng.ts";
import { FakeDriver, RAM_BASE, RAM_SIZE } from "./virtio_driver.ts";

/** A backend that records each chain (buffer lengths and directions) and uses it with 0 bytes. */
class Recorder implements VirtioBackend {
  chains: { head: number; bufs: [number, boolean][] }[] = [];
  resets = 0;
  process(_index: number, queue: SplitQueue): boolean {
    let any = false;
    while (queue.pop()) {
      const c = queue.chain;
      const bufs: [number, boolean][] = [];
      for (let i = 0; i < c.count; i++) bufs.push([c.lengths[i], c.writable[i] === 1]);
      this.chains.push({ head: c.head, bufs });
      queue.pushUsed(c.head, c.writableBytes);
      any = true;
    }
    return any;
  }
  reset() {
    this.resets++;
  }
  close() {}
}

function driver(): { d: FakeDriver; rec: Recorder } {
  const rec = new Recorder();
  return { d: new FakeDriver(rngFront(), rec), rec };
}

const NEEDS_RESET = Status.DEVICE_NEEDS_RESET;

Deno.test("virtio-mmio: identification registers (magic 'virt', version 2, device id, vendor)", () => {
  const { d } = driver();
  strictEqual(d.read32(MmioReg.MAGIC), 0x74726976);
  strictEqual(d.read32(MmioReg.VERSION), 2);
  strictEqual(d.read32(MmioReg.DEVICE_ID), 4);
  strictEqual(d.read32(MmioReg.QUEUE_NUM_MAX), 64);
  d.write32(MmioReg.QUEUE_SEL, 1); // no second queue
  strictEqual(d.read32(MmioReg.QUEUE_NUM_MAX), 0);
  // A 2-byte register read is not a register access: it reads 0.
  const two = new Uint8Array(2);
  d.transport.read(MmioReg.MAGIC, two);
  deepStrictEqual([...two], [0, 0]);
});

Deno.test("virtio-mmio: FEATURES_OK stays only for a subset of the offer with VERSION_1", () => {
  const { d } = driver();
  const offered = d.deviceFeatures();
  strictEqual(offered & VIRTIO_F_VERSION_1, VIRTIO_F_VERSION_1);
  // Legacy driver (no VERSION_1): refused.
  strictEqual(d.init({ features: 0n }) & Status.FEATURES_OK, 0);
  // A feature the device did not offer: refused.
  strictEqual(d.init({ features: offered | 1n << 40n }) & Status.FEATURES_OK, 0);
  // The offer itself: accepted, the device runs.
  const status = d.init();
  strictEqual(
    status & (Status.FEATURES_OK | Status.DRIVER_OK),
    Status.FEATURES_OK | Status.DRIVER_OK,
  );
});

Deno.test("virtqueue: direct chains are read in order with their directions and returned on the used ring", () => {
  const { d, rec } = driver();
  d.init();
  const a = d.submit([{ read: new Uint8Array(16) }, { write: 512 }, { write: 1 }]);
  const b = d.submit([{ write: 8 }]);
  d.kick();
  deepStrictEqual(rec.chains, [
    { head: a.head, bufs: [[16, false], [512, true], [1, true]] },
    { head: b.head, bufs: [[8, true]] },
  ]);
  strictEqual(d.usedIdx, 2);
  deepStrictEqual(d.usedElem(0), { id: a.head, len: 513 });
  deepStrictEqual(d.usedElem(1), { id: b.head, len: 8 });
  strictEqual(d.read32(MmioReg.INTERRUPT_STATUS), INT_VRING);
  strictEqual(d.interrupts, 1);
  d.write32(MmioReg.INTERRUPT_ACK, INT_VRING);
  strictEqual(d.read32(MmioReg.INTERRUPT_STATUS), 0);
});

Deno.test("virtio-mmio: InterruptStatus is read-to-clear; a late InterruptACK cannot drop a newer bit", () => {
  const { d } = driver();
  d.init();
  d.submit([{ write: 8 }]);
  d.kick();
  strictEqual(d.read32(MmioReg.INTERRUPT_STATUS), INT_VRING, "the first interrupt's status");
  strictEqual(d.read32(MmioReg.INTERRUPT_STATUS), 0, "the driver's read took it");
  // The device uses another buffer before the driver acknowledged the first interrupt: the ACK,
  // written for what the driver read before, must not clear the bit of the second.
  d.usedEvent = 1; // (EVENT_IDX) the driver wants an interrupt for the next used buffer too
  d.submit([{ write: 8 }]);
  d.kick();
  d.write32(MmioReg.INTERRUPT_ACK, INT_VRING);
  strictEqual(d.read32(MmioReg.INTERRUPT_STATUS), INT_VRING, "the second interrupt's status");
  strictEqual(d.interrupts, 2);
});

Deno.test("virtqueue: an indirect table is followed when negotiated", () => {
  const { d, rec } = driver();
  d.init();
  d.submit([{ read: new Uint8Array(16) }, { write: 100 }, { write: 1 }], { indirect: true });
  d.kick();
  deepStrictEqual(rec.chains[0].bufs, [[16, false], [100, true], [1, true]]);
  strictEqual(d.status & NEEDS_RESET, 0);
});

Deno.test("virtqueue: the available ring wraps past 2^16 entries", () => {
  const { d, rec } = driver();
  d.init({ size: 4 });
  for (let i = 0; i < 70000; i++) {
    d.submit([{ write: 4 }]);
    if (i % 4 === 3) d.kick();
  }
  d.kick();
  strictEqual(rec.chains.length, 70000);
  strictEqual(d.usedIdx, 70000 & 0xffff);
  strictEqual(d.status & NEEDS_RESET, 0);
});

/** Sets the driver up, lets `corrupt` break something, kicks, and checks the device gave up cleanly. */
function expectNeedsReset(
  name: string,
  corrupt: (d: FakeDriver) => void,
  options: { size?: number; features?: bigint } = {},
): void {
  Deno.test(`virtqueue: ${name} → DEVICE_NEEDS_RESET, config interrupt, reset recovers`, () => {
    const { d, rec } = driver();
    d.init(options);
    corrupt(d);
    d.kick();
    strictEqual(d.status & NEEDS_RESET, NEEDS_RESET, "NEEDS_RESET set");
    strictEqual(d.read32(MmioReg.INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);
    strictEqual(d.errors.length, 1, d.errors.join("; "));
    // Nothing more is served until a reset, even a valid chain.
    const before = rec.chains.length;
    d.kick();
    strictEqual(rec.chains.length, before);
    // The driver's status writes cannot clear NEEDS_RESET; a reset does, and the device works again.
    d.write32(MmioReg.STATUS, Status.ACKNOWLEDGE);
    strictEqual(d.status & NEEDS_RESET, NEEDS_RESET);
    d.avail = RAM_BASE + 0x4000;
    d.used = RAM_BASE + 0x5000;
    d.desc = RAM_BASE;
    const { d: fresh } = { d };
    fresh.view.setUint16(fresh.avail - RAM_BASE + 2, 0, true);
    fresh.view.setUint16(fresh.used - RAM_BASE + 2, 0, true);
    const status = fresh.init({ size: 8 });
    strictEqual(status & NEEDS_RESET, 0);
    fresh.setAvailIdx(0);
    fresh.submit([{ write: 4 }]);
    fresh.kick();
    strictEqual(fresh.usedIdx, 1);
    strictEqual(fresh.status & NEEDS_RESET, 0);
  });
}

expectNeedsReset("a queue size that is not a power of two", (d) => {
  d.write32(MmioReg.STATUS, 0);
  d.init({ size: 12 });
}, { size: 8 });
expectNeedsReset("a queue size above the maximum", (d) => {
  d.write32(MmioReg.STATUS, 0);
  d.init({ size: 128 });
});
expectNeedsReset("a used ring past the end of RAM", (d) => {
  d.write32(MmioReg.STATUS, 0);
  d.used = RAM_BASE + RAM_SIZE - 8;
  d.init();
});
expectNeedsReset("a descriptor table at 2^64 - 16 (address wrap)", (d) => {
  d.write32(MmioReg.STATUS, 0);
  d.init({ size: 1 });
  // Rewrite while disabled: QUEUE_READY 0, new address, ready again.
  d.write32(MmioReg.QUEUE_READY, 0);
  d.write32(MmioReg.QUEUE_DESC_LOW, 0xfffffff0);
  d.write32(MmioReg.QUEUE_DESC_HIGH, 0xffffffff);
  d.write32(MmioReg.QUEUE_READY, 1);
});
expectNeedsReset("a misaligned used ring", (d) => {
  d.write32(MmioReg.STATUS, 0);
  d.used = RAM_BASE + 0x5002;
  d.init();
});
expectNeedsReset("an available index more than a queue ahead", (d) => d.setAvailIdx(17));
expectNeedsReset("a head index past the table", (d) => d.offer(16));
expectNeedsReset("a descriptor loop (next pointing back)", (d) => {
  d.setDesc(0, RAM_BASE + 0x8000, 4, 1, 1);
  d.setDesc(1, RAM_BASE + 0x8000, 4, 1, 0);
  d.offer(0);
});
expectNeedsReset("a self-loop in an indirect table", (d) => {
  const table = d.alloc(32);
  d.setDesc(0, RAM_BASE + 0x8000, 4, 1, 0, table);
  d.setDesc(0, table, 32, 4, 0);
  d.offer(0);
});
expectNeedsReset("a buffer outside guest RAM", (d) => {
  d.setDesc(0, RAM_BASE + RAM_SIZE - 4, 8, 2, 0);
  d.offer(0);
});
expectNeedsReset("a buffer at a 64-bit address past 2^53", (d) => {
  d.setDesc(0, 0, 8, 2, 0);
  d.view.setBigUint64(d.desc - RAM_BASE, 0xffff_ffff_ffff_f000n, true);
  d.offer(0);
});
expectNeedsReset("a 4 GiB - 1 buffer", (d) => {
  d.setDesc(0, RAM_BASE, 0xffffffff, 2, 0);
  d.offer(0);
});
expectNeedsReset("an indirect descriptor not negotiated", (d) => {
  d.submit([{ write: 4 }], { indirect: true });
}, { features: VIRTIO_F_VERSION_1 });
expectNeedsReset("an indirect descriptor with NEXT", (d) => {
  const table = d.alloc(16);
  d.setDesc(0, RAM_BASE + 0x8000, 4, 2, 0, table);
  d.setDesc(0, table, 16, 4 | 1, 1);
  d.offer(0);
});
expectNeedsReset("an indirect table inside an indirect table", (d) => {
  const inner = d.alloc(16);
  d.setDesc(0, RAM_BASE + 0x8000, 4, 2, 0, inner);
  const outer = d.alloc(16);
  d.setDesc(0, inner, 16, 4, 0, outer);
  d.setDesc(0, outer, 16, 4, 0);
  d.offer(0);
});
expectNeedsReset("an indirect table whose length is not a multiple of 16", (d) => {
  d.setDesc(0, RAM_BASE + 0x8000, 24, 4, 0);
  d.offer(0);
});
expectNeedsReset("an indirect table of 2^16 entries", (d) => {
  d.setDesc(0, RAM_BASE, 16 * 65536, 4, 0);
  d.offer(0);
});

Deno.test("virtio-mmio: a reset clears status, features, queues and interrupts, and tells the backend", () => {
  const { d, rec } = driver();
  d.init();
  d.submit([{ write: 4 }]);
  d.kick();
  const resets = rec.resets;
  d.write32(MmioReg.STATUS, 0);
  strictEqual(d.status, 0);
  strictEqual(d.read32(MmioReg.INTERRUPT_STATUS), 0);
  strictEqual(d.read32(MmioReg.QUEUE_READY), 0);
  strictEqual(rec.resets, resets + 1);
});

Deno.test("virtio-mmio: a live queue's addresses cannot be changed under the device", () => {
  const { d, rec } = driver();
  d.init();
  d.write32(MmioReg.QUEUE_DESC_LOW, 0x1234_0000); // ignored: the queue is ready
  d.submit([{ write: 4 }]);
  d.kick();
  strictEqual(rec.chains.length, 1);
});

Deno.test("VirtioMemory: ranges must lie whole inside one region, with no wrap", () => {
  const mem = new VirtioMemory([
    { gpa: 0, bytes: new Uint8Array(0x1000) },
    { gpa: 0x1000, bytes: new Uint8Array(0x1000) },
  ]);
  strictEqual(mem.slice(0xff0, 16)?.length, 16);
  strictEqual(mem.slice(0xff0, 32), null); // spans two regions
  strictEqual(mem.slice(-1, 1), null);
  strictEqual(mem.slice(Number.MAX_SAFE_INTEGER, 2), null);
  strictEqual(mem.slice(0x2001, 0), null);
  strictEqual(mem.word16(0x1001), null);
});

Deno.test("DescriptorChain.readInto gathers readable bytes across buffers, skipping writable ones", () => {
  const low = new Uint8Array(0x100);
  const high = new Uint8Array(0x200);
  const mem = new VirtioMemory([{ gpa: 0, bytes: low }, { gpa: 0x1000, bytes: high }]);
  low.set([1, 2, 3], 0x10);
  low.set([9, 9], 0x20);
  high.set([4, 5, 6], 0x180);
  const big = Uint8Array.from({ length: 200 }, (_, i) => i + 10);
  high.set(big, 0x40);
  const c = new DescriptorChain(4, mem);
  c.clear(7);
  ok(c.add(0x10, 3, false));
  ok(c.add(0x20, 2, true));
  ok(c.add(0x1180, 3, false));
  strictEqual(c.add(0xf0, 0x20, false), false, "past the end of a region: not RAM");
  strictEqual(c.add(0x1000 + 0x1f0, 0x20, false), false);
  deepStrictEqual([c.count, c.readableBytes, c.writableBytes, c.head], [3, 6, 2, 7]);
  const out = new Uint8Array(4);
  strictEqual(c.readInto(out, 1), 4);
  deepStrictEqual([...out], [2, 3, 4, 5]);
  deepStrictEqual([...c.buffer(2)], [4, 5, 6]);
  strictEqual(c.bytesOf(2), high);
  strictEqual(c.offsets[2], 0x180);
  // writeFrom fills the writable buffers only; a long copy goes through the other path.
  strictEqual(c.writeFrom(new Uint8Array([7, 8, 6]), 0), 2);
  deepStrictEqual([...low.subarray(0x20, 0x22)], [7, 8]);
  ok(c.add(0x1040, 200, false));
  const all = new Uint8Array(300);
  strictEqual(c.readInto(all, 6), 200);
  deepStrictEqual([...all.subarray(0, 200)], [...big]);
  throws(() => c.add(0x1000, 1, true), VirtioError, "a full chain");
});

Deno.test("virtio features: rng offers VERSION_1, indirect descriptors and event indices", () => {
  strictEqual(
    rngFront().features,
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX,
  );
});

Deno.test("needEvent: an event index in [old, now) modulo 2^16, across the wrap", () => {
  strictEqual(needEvent(4, 5, 4), true);
  strictEqual(needEvent(5, 5, 4), false, "entry 5 not used yet");
  strictEqual(needEvent(3, 5, 4), false, "passed before the last check");
  strictEqual(needEvent(0xffff, 1, 0xfffe), true);
  strictEqual(needEvent(0, 1, 0xfffe), true);
  strictEqual(needEvent(1, 1, 0xfffe), false);
  strictEqual(needEvent(0xfffd, 1, 0xfffe), false);
  strictEqual(needEvent(7, 7, 7), false, "nothing used");
});

const EVENT_IDX_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX;

Deno.test("EVENT_IDX: the device interrupts only when the used index passes used_event, and ignores NO_INTERRUPT", () => {
  const { d } = driver();
  d.init({ size: 8, features: EVENT_IDX_FEATURES });
  d.submit([{ write: 4 }]);
  d.kick();
  strictEqual(d.interrupts, 1, "the first batch interrupts");
  d.usedEvent = 3; // an interrupt once entry 3 is used (the fourth)
  for (let i = 0; i < 2; i++) {
    d.submit([{ write: 4 }]);
    d.kick();
  }
  strictEqual(d.usedIdx, 3);
  strictEqual(d.interrupts, 1, "entries 1 and 2: before used_event");
  d.availFlags = 1; // NO_INTERRUPT: to be ignored with EVENT_IDX
  d.submit([{ write: 4 }]);
  d.kick();
  strictEqual(d.interrupts, 2, "entry 3 used: interrupt");
  d.submit([{ write: 4 }]);
  d.kick();
  strictEqual(d.interrupts, 2, "used_event left behind: no more");
  // Without EVENT_IDX, NO_INTERRUPT is honoured and used_event means nothing.
  d.init({ size: 8, features: VIRTIO_F_VERSION_1 });
  d.availFlags = 1;
  const before = d.interrupts;
  d.submit([{ write: 4 }]);
  d.kick();
  strictEqual(d.interrupts, before);
  d.availFlags = 0;
  d.usedEvent = 100;
  d.submit([{ write: 4 }]);
  d.kick();
  strictEqual(d.interrupts, before + 1);
});

Deno.test("EVENT_IDX: avail_event asks for the next kick, and chains added while the device was busy are served without one", () => {
  let added = false;
  const served: number[] = [];
  const backend: VirtioBackend = {
    process(_index: number, queue: SplitQueue): boolean {
      while (queue.pop()) {
        served.push(queue.chain.head);
        if (!added) {
          // The driver adds a chain while the device serves the queue: it reads the old
          // avail_event (0, already passed) and does not kick.
          added = true;
          d.submit([{ write: 4 }]);
        }
        queue.pushUsed(queue.chain.head, 0);
      }
      return true;
    },
    reset() {},
    close() {},
  };
  const d = new FakeDriver(rngFront(), backend); // `process` runs only after this
  d.init({ size: 8, features: EVENT_IDX_FEATURES });
  strictEqual(d.availEvent, 0);
  d.submit([{ write: 4 }]);
  d.kick();
  strictEqual(served.length, 2, "the unkicked chain was served in the same pass");
  strictEqual(d.usedIdx, 2);
  strictEqual(d.availEvent, 2, "a kick wanted when entry 2 is made available");
  strictEqual(d.interrupts, 1, "one interrupt for both");
  // The driver's rule (vring_need_event on avail_event): the next chain kicks.
  strictEqual(needEvent(d.availEvent, 3, 2), true);
});

Deno.test("EVENT_IDX: interrupts follow used_event across the 16-bit wrap of the indices", () => {
  const { d } = driver();
  d.init({ size: 4, features: EVENT_IDX_FEATURES });
  let expected = 0;
  for (let i = 0; i < 0x10000 + 40; i++) {
    // Near the wrap: alternately ask for this entry's interrupt, or for the one after it.
    const wantNow = i < 20 || i > 0xffe0 || i % 512 === 0 ? i % 2 === 0 : true;
    d.usedEvent = wantNow ? i & 0xffff : (i + 1) & 0xffff;
    d.submit([{ write: 4 }]);
    const before = d.interrupts;
    d.kick();
    if (wantNow || i === 0) expected++;
    strictEqual(d.interrupts - before, wantNow || i === 0 ? 1 : 0, `entry ${i}`);
  }
  strictEqual(d.usedIdx, (0x10000 + 40) & 0xffff);
  strictEqual(d.interrupts, expected);
});

Deno.test("SplitQueue: an indirect table flush against the end of a RAM region is read, one byte further is refused", () => {
  // Two regions, the second right after a hole: descriptors, rings and tables in the first.
  const low = new Uint8Array(0x4000);
  const mem = new VirtioMemory([{ gpa: 0, bytes: low }, {
    gpa: 0x8000,
    bytes: new Uint8Array(0x1000),
  }]);
  const v = new DataView(low.buffer);
  const queue = SplitQueue.create(mem, { size: 4, desc: 0, avail: 0x1000, used: 0x2000 }, 4, true);
  const offer = (table: number) => {
    // Descriptor 0: an indirect table of two entries (32 bytes) at `table`.
    v.setBigUint64(0, BigInt(table), true);
    v.setUint32(8, 32, true);
    v.setUint16(12, 4, true); // INDIRECT
    const idx = v.getUint16(0x1002, true);
    v.setUint16(0x1004 + 2 * (idx % 4), 0, true);
    v.setUint16(0x1002, idx + 1, true);
  };
  // The table's two entries: 8 readable bytes at 0x3000, then 4 writable at 0x8ffc (the second
  // region's last bytes).
  const table = 0x4000 - 32;
  v.setBigUint64(table, 0x3000n, true);
  v.setUint32(table + 8, 8, true);
  v.setUint16(table + 12, 1, true); // NEXT
  v.setUint16(table + 14, 1, true);
  v.setBigUint64(table + 16, 0x8ffcn, true);
  v.setUint32(table + 24, 4, true);
  v.setUint16(table + 28, 2, true); // WRITE
  offer(table);
  ok(queue.pop());
  deepStrictEqual(
    [queue.chain.count, queue.chain.readableBytes, queue.chain.writableBytes],
    [2, 8, 4],
  );
  strictEqual(queue.chain.offsets[1], 0xffc, "the second buffer's place in its region");
  queue.pushUsed(queue.chain.head, 0);
  // The same table one byte later ends one byte past the region: refused, nothing read.
  offer(table + 1);
  throws(() => queue.pop(), /indirect table .* outside guest RAM/);
});
