// virtio-console (hvc0) against a fake driver: the guest's transmit buffers
// reach the host through the output ring (one kick per batch), host input
// fills the receive queue's buffers, and a full output ring holds the guest
// back instead of dropping or buffering without bound.

import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { ByteRing } from "../../src/devices/virtio/byte_ring.ts";
import {
  CONSOLE_RING_BYTES,
  ConsoleBackend,
  consoleFront,
  ConsoleHost,
  createConsoleRings,
} from "../../src/devices/virtio/console.ts";
import { FakeDriver } from "./virtio_driver.ts";

const text = (b: Uint8Array) => new TextDecoder().decode(b);
const bytes = (s: string) => new TextEncoder().encode(s);

function setup() {
  const rings = createConsoleRings();
  let kicks = 0;
  let stopping = false;
  const backend = new ConsoleBackend(rings, () => kicks++, () => stopping);
  const d = new FakeDriver(consoleFront(), backend);
  d.init({ queues: 2, size: 8 });
  let woken = 0;
  const host = new ConsoleHost(rings, () => woken++);
  return {
    d,
    host,
    kicks: () => kicks,
    woken: () => woken,
    stop: () => (stopping = true),
  };
}

Deno.test("virtio-console: transmit buffers reach the host in order, one kick per batch", () => {
  const { d, host, kicks } = setup();
  d.useQueue(1);
  d.submit([{ read: bytes("hello ") }]);
  d.submit([{ read: bytes("hv") }, { read: bytes("c0\n") }]);
  d.kick();
  strictEqual(d.usedIdx, 2);
  strictEqual(kicks(), 1, "the second buffer found output waiting: no second kick");
  let out = "";
  host.drain((b) => (out += text(b)));
  strictEqual(out, "hello hvc0\n");
});

Deno.test("virtio-console: host input fills the receive queue's posted buffers", () => {
  const { d, host, woken } = setup();
  const { addrs } = d.submit([{ write: 4 }]);
  const second = d.submit([{ write: 16 }]);
  d.kick(); // buffers posted, no input yet: nothing used
  strictEqual(d.usedIdx, 0);
  strictEqual(host.input(bytes("ls -l\n")), 6);
  strictEqual(woken(), 1);
  d.runner.service(); // what the device thread does when woken
  strictEqual(d.usedIdx, 2);
  deepStrictEqual(d.usedElem(0), { id: 0, len: 4 });
  strictEqual(text(d.bytes(addrs[0], 4)), "ls -");
  deepStrictEqual(d.usedElem(1).len, 2);
  strictEqual(text(d.bytes(second.addrs[0], 2)), "l\n");
});

Deno.test("virtio-console: a full output ring back-pressures the guest and loses nothing", () => {
  const { d, host, stop } = setup();
  d.useQueue(1);
  // More than the ring holds in one buffer: the device writes what fits, then waits; with
  // stopping set it gives up without returning the buffer (nothing is dropped silently).
  stop();
  const big = new Uint8Array(CONSOLE_RING_BYTES + 100).fill(0x41);
  d.submit([{ read: big }]);
  d.kick();
  strictEqual(d.usedIdx, 0, "the buffer is not returned while its bytes do not fit");
  let n = 0;
  host.drain((b) => (n += b.length));
  strictEqual(n, CONSOLE_RING_BYTES);
});

Deno.test("ByteRing: indices wrap at 2^32 without losing bytes", () => {
  const ring = new ByteRing(16);
  const other = new ByteRing(ring.buffer);
  const index = new Int32Array(ring.buffer, 0, 2);
  index[0] = index[1] = -5; // just below 2^32
  const out = new Uint8Array(16);
  for (let round = 0; round < 4; round++) {
    strictEqual(ring.write(bytes("abcdefghij")), 10);
    strictEqual(other.read(out), 10);
    strictEqual(text(out.subarray(0, 10)), "abcdefghij");
  }
  strictEqual(ring.write(new Uint8Array(20)), 16);
  strictEqual(ring.free, 0);
});
