// CoalescedRing.drain allocates nothing once warm (review finding: it made a
// `subarray` view per entry although its doc said it allocated nothing).
// Counted, not timed, as in tests/kvm/hot_path_alloc_test.ts: V8's used heap
// is sampled around chunks of drains; the median chunk (one without a garbage
// collection) grows by what it allocated. The ring is the kernel's page layout
// in a plain buffer, filled here as the kernel would; a control drain that
// allocates per entry shows the measurement can fail.

import { ok, strictEqual } from "node:assert/strict";
import { COALESCED_RING_ENTRIES, KvmCoalescedMmio } from "../../src/abi/coalesced.ts";
import { CoalescedRing, type CoalescedWrite } from "../../src/kvm/coalesced_ring.ts";

const HEADER = 8;
const ENTRY = KvmCoalescedMmio.size;
/** Writes queued per drain: most of the ring, crossing its end. */
const QUEUED = COALESCED_RING_ENTRIES - 2;
const DRAINS = 4;

const page = new Uint8Array(4096);
const view = new DataView(page.buffer);
const ring = new CoalescedRing(page);
let start = 0;

/** Queues QUEUED writes from the current `first`, lengths 1, 2, 4, 8 in turn (the kernel's job). */
function fill(): void {
  view.setUint32(0, start, true);
  for (let n = 0; n < QUEUED; n++) {
    const at = HEADER + ((start + n) % COALESCED_RING_ENTRIES) * ENTRY;
    view.setUint32(at, 0xd000_0000 + n * 4, true); // address (32-bit stores: no BigInt here)
    view.setUint32(at + 4, n & 1, true);
    view.setUint32(at + 8, 1 << (n % 4), true);
    view.setUint32(at + 12, 0, true);
    page[at + 16] = n & 0xff;
  }
  view.setUint32(4, (start + QUEUED) % COALESCED_RING_ENTRIES, true);
}

let sum = 0;
const sink: unknown[] = [null];
const visit = (w: CoalescedWrite) => {
  // Kept a small integer: a double in a module variable would be boxed on every update.
  sum = (sum + w.data[0] + w.data.length + (w.address & 0xff)) & 0xfffff;
};
const allocating = (w: CoalescedWrite) => {
  sink[0] = { data: w.data[0] }; // the control: one small object per write
};

/** The median heap growth per drained write over `chunks` chunks of DRAINS drains. */
function bytesPerWrite(handler: (w: CoalescedWrite) => void, chunks: number): number {
  const growth: number[] = [];
  for (let c = 0; c < chunks; c++) {
    const before = Deno.memoryUsage().heapUsed;
    for (let d = 0; d < DRAINS; d++) {
      fill();
      if (ring.drain(handler) !== QUEUED) throw new Error("drain missed writes");
      start = (start + 7) % COALESCED_RING_ENTRIES; // every slot and length gets used
    }
    growth.push(Deno.memoryUsage().heapUsed - before);
  }
  growth.sort((a, b) => a - b);
  return growth[growth.length >> 1] / (DRAINS * QUEUED);
}

Deno.test("CoalescedRing.drain allocates nothing per write once warm", () => {
  bytesPerWrite(allocating, 10);
  const control = bytesPerWrite(allocating, 40);
  ok(control >= 8, `the measurement missed an allocation per write: ${control} B/write`);
  bytesPerWrite(visit, 300); // warm-up: the JIT, and every slot's views made once
  const seen = bytesPerWrite(visit, 80);
  console.log(`control ${control.toFixed(2)} B/write, drain ${seen.toFixed(3)} B/write`);
  ok(seen < 1, `drain allocates ${seen} bytes per write`);
  ok(sum >= 0);
});

Deno.test("CoalescedRing.drain: each write's address, data length and bytes", () => {
  start = 0;
  fill();
  const seen: [number, number, number][] = [];
  ring.drain((w) => seen.push([w.data.length, w.data[0], w.address]));
  strictEqual(seen.length, QUEUED);
  seen.forEach(([length, first, address], n) => {
    strictEqual(address, (n & 1) * 2 ** 32 + 0xd000_0000 + n * 4);
    strictEqual(length, 1 << (n % 4));
    strictEqual(first, n & 0xff);
  });
});
