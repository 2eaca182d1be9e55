/**
 * virtio-net (spec 5.1) without offloads: a receive queue (0) the device
 * fills with frames from the host, a transmit queue (1) whose frames it
 * sends, each frame behind the 12-byte `virtio_net_hdr` of virtio 1.x (all
 * zero here: no checksum or segmentation offload, one buffer per frame).
 * The host side is a {@linkcode PacketPort} (a tap interface, see `tap.ts`).
 *
 * @module
 */

import { DeviceId, VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC } from "./constants.ts";
import type { VirtioBackend, VirtioFront } from "./device.ts";
import type { SplitQueue } from "./queue.ts";

/** Where frames come from and go to. */
export interface PacketPort {
  /** Reads one waiting frame into `buffer`; returns its length, 0 when none waits. */
  receive(buffer: Uint8Array): number;
  /** Sends one frame (dropped when the host cannot take it now). */
  send(frame: Uint8Array): void;
  /** Releases the port. */
  close(): void;
}

/** `VIRTIO_NET_F_MAC`: the configuration holds the MAC address. */
const F_MAC = 1n << 5n;
/** Bytes of `virtio_net_hdr` with `num_buffers` (always present in virtio 1.x). */
export const NET_HEADER_BYTES = 12;
/** The largest frame carried: 64 KiB (a tap's without offloads is at most its MTU plus 14). */
export const NET_MAX_FRAME = 65536;
const QUEUE_SIZE = 256;
const RX = 0;
const TX = 1;

/** The network card's front: its MAC address, one receive and one transmit queue. */
export function netFront(mac: Uint8Array): VirtioFront {
  const config = new Uint8Array(8); // mac[6], status (unused without VIRTIO_NET_F_STATUS)
  config.set(mac.subarray(0, 6));
  return {
    deviceId: DeviceId.NET,
    features: VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | F_MAC,
    queueMax: [QUEUE_SIZE, QUEUE_SIZE],
    config,
  };
}

/** A locally administered unicast MAC (52:54:00:xx:xx:xx as QEMU's) from a small number. */
export function defaultMac(index: number): Uint8Array {
  return new Uint8Array([0x52, 0x54, 0x00, 0x12, 0x34, 0x56 + (index & 0x3f)]);
}

/** Moves frames between a port and the queues. */
export class NetBackend implements VirtioBackend {
  #port: PacketPort;
  #frame = new Uint8Array(NET_HEADER_BYTES + NET_MAX_FRAME);
  /** Length of a received frame still waiting for a receive buffer (in #frame after the header). */
  #pending = 0;
  #tx = new Uint8Array(NET_HEADER_BYTES + NET_MAX_FRAME);
  /** Frames that did not fit their receive buffers, or transmit chains too large. */
  dropped = 0;

  /** Serves `port`. */
  constructor(port: PacketPort) {
    this.#port = port;
  }

  /** Transmits the transmit queue's frames, or fills receive buffers with waiting frames. */
  process(index: number, queue: SplitQueue): boolean {
    return index === TX ? this.#transmit(queue) : index === RX ? this.#receive(queue) : false;
  }

  #transmit(queue: SplitQueue): boolean {
    let used = false;
    while (queue.pop()) {
      const chain = queue.chain;
      if (chain.readableBytes > this.#tx.length || chain.readableBytes < NET_HEADER_BYTES) {
        this.dropped++;
      } else {
        const n = chain.readInto(this.#tx);
        this.#port.send(this.#tx.subarray(NET_HEADER_BYTES, n));
      }
      queue.pushUsed(chain.head, 0);
      used = true;
    }
    return used;
  }

  #receive(queue: SplitQueue): boolean {
    let used = false;
    for (;;) {
      if (this.#pending === 0) {
        this.#pending = this.#port.receive(this.#frame.subarray(NET_HEADER_BYTES));
        if (this.#pending === 0) return used;
      }
      if (!queue.pop()) return used; // the frame waits for the driver's next buffers
      const chain = queue.chain;
      // The header: no offloads; num_buffers (bytes 10-11) = 1.
      this.#frame.fill(0, 0, NET_HEADER_BYTES);
      this.#frame[10] = 1;
      const total = NET_HEADER_BYTES + this.#pending;
      let written = 0;
      for (let i = 0; i < chain.count && written < total; i++) {
        if (!chain.writable[i]) continue;
        const b = chain.buffers[i];
        const n = Math.min(b.length, total - written);
        b.set(this.#frame.subarray(written, written + n));
        written += n;
      }
      if (written < total) {
        this.dropped++; // too small a buffer: the driver sees no frame
        written = 0;
      }
      queue.pushUsed(chain.head, written);
      this.#pending = 0;
      used = true;
    }
  }

  /** Forgets a frame held for the old driver. */
  reset(): void {
    this.#pending = 0;
  }

  /** Closes the port. */
  close(): void {
    this.#port.close();
  }
}
