/**
 * virtio-rng (spec 5.4): one queue of device-writable buffers that the
 * device fills with random bytes from the host (`crypto.getRandomValues`,
 * the kernel's CSPRNG).
 *
 * @module
 */

import {
  DeviceId,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_INDIRECT_DESC,
} from "./constants.ts";
import type { VirtioBackend, VirtioFront } from "./device.ts";
import type { SplitQueue } from "./queue.ts";

/** Most bytes written per request: a larger buffer gets this many (the spec allows fewer). */
export const RNG_MAX_REQUEST = 65536;
const QUEUE_SIZE = 64;

/** The entropy device's front: no configuration space, one request queue. */
export function rngFront(): VirtioFront {
  return {
    deviceId: DeviceId.RNG,
    features: VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX,
    queueMax: [QUEUE_SIZE],
    config: new Uint8Array(0),
  };
}

/** Fills each request's writable buffers (up to {@linkcode RNG_MAX_REQUEST} bytes). */
export class RngBackend implements VirtioBackend {
  /** Serves the request queue. */
  process(_index: number, queue: SplitQueue): boolean {
    let used = false;
    while (queue.pop()) {
      const chain = queue.chain;
      let written = 0;
      for (let i = 0; i < chain.count && written < RNG_MAX_REQUEST; i++) {
        if (!chain.writable[i]) continue;
        const n = Math.min(chain.lengths[i], RNG_MAX_REQUEST - written);
        // getRandomValues refuses a view of external memory on some runtimes: fill a bounce buffer.
        fillRandom(chain.buffer(i).subarray(0, n));
        written += n;
      }
      queue.pushUsed(chain.head, written);
      used = true;
    }
    return used;
  }

  /** Nothing to forget. */
  reset(): void {}

  /** Nothing to release. */
  close(): void {}
}

const bounce = new Uint8Array(RNG_MAX_REQUEST);

function fillRandom(out: Uint8Array): void {
  const part = bounce.subarray(0, out.length);
  crypto.getRandomValues(part);
  out.set(part);
}
