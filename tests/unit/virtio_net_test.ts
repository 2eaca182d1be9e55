// virtio-net against a fake driver and an in-memory packet port: transmitted
// frames lose their 12-byte virtio header on the way out, received frames
// gain one (num_buffers 1) and wait for the driver's buffers, too-small
// buffers drop the frame, never write past them.

import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { MmioReg } from "../../src/devices/virtio/constants.ts";
import {
  defaultMac,
  NET_HEADER_BYTES,
  NetBackend,
  netFront,
  type PacketPort,
} from "../../src/devices/virtio/net.ts";
import { FakeDriver } from "./virtio_driver.ts";

class FakePort implements PacketPort {
  sent: number[][] = [];
  inbox: Uint8Array[] = [];
  receive(buffer: Uint8Array): number {
    const f = this.inbox.shift();
    if (!f) return 0;
    buffer.set(f);
    return f.length;
  }
  send(frame: Uint8Array): void {
    this.sent.push([...frame]);
  }
  close(): void {}
}

function setup() {
  const port = new FakePort();
  const backend = new NetBackend(port);
  const d = new FakeDriver(netFront(defaultMac(0)), backend);
  d.init({ queues: 2, size: 8 });
  return { d, port, backend };
}

Deno.test("virtio-net: the MAC address is in the configuration space", () => {
  const { d } = setup();
  const mac = new Uint8Array(6);
  d.transport.read(MmioReg.CONFIG, mac.subarray(0, 4));
  d.transport.read(MmioReg.CONFIG + 4, mac.subarray(4, 6));
  deepStrictEqual([...mac], [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
});

Deno.test("virtio-net: a transmitted frame goes out without its virtio header", () => {
  const { d, port } = setup();
  d.useQueue(1);
  const header = new Uint8Array(NET_HEADER_BYTES);
  d.submit([{ read: header }, { read: new Uint8Array([1, 2, 3]) }, { read: new Uint8Array([4]) }]);
  d.kick();
  deepStrictEqual(port.sent, [[1, 2, 3, 4]]);
  strictEqual(d.usedIdx, 1);
});

Deno.test("virtio-net: received frames wait for buffers, then arrive behind a header", () => {
  const { d, port, backend } = setup();
  port.inbox.push(new Uint8Array([9, 8, 7]), new Uint8Array(100).fill(5));
  d.runner.service(); // no receive buffers yet: the first frame is held
  strictEqual(d.usedIdx, 0);
  const a = d.submit([{ write: 64 }]);
  const b = d.submit([{ write: 20 }]); // too small for 12 + 100
  d.kick();
  strictEqual(d.usedIdx, 2);
  deepStrictEqual(d.usedElem(0), { id: a.head, len: NET_HEADER_BYTES + 3 });
  const got = d.bytes(a.addrs[0], NET_HEADER_BYTES + 3);
  strictEqual(got[10], 1, "num_buffers = 1");
  deepStrictEqual([...got.subarray(NET_HEADER_BYTES)], [9, 8, 7]);
  deepStrictEqual(d.usedElem(1), { id: b.head, len: 0 });
  strictEqual(backend.dropped, 1);
});
