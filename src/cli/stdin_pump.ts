/**
 * The boot CLI's stdin pump, run as a Worker: reads stdin into a shared ring
 * and kicks the bootstrap vCPU so the run loop's `poll` drains it. A full ring
 * makes the pump wait (backpressure from the guest's UART up to the terminal):
 * nothing here grows.
 *
 * Message: `{ ring: SharedArrayBuffer, kick: KickTarget }`; the ring is two
 * Int32 counters (write, read; free-running) then the bytes.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { type KickTarget, kickVcpu } from "../kvm/kick.ts";

self.onmessage = async (e: MessageEvent<{ ring: SharedArrayBuffer; kick: KickTarget }>) => {
  const { ring, kick } = e.data;
  const head = new Int32Array(ring, 0, 2); // [0] write index, [1] read index
  const bytes = new Uint8Array(ring, 8);
  for await (const chunk of Deno.stdin.readable) {
    for (const b of chunk) {
      // Full: the guest has not read what it got; its next UART access turns the run loop.
      while (Atomics.load(head, 0) - Atomics.load(head, 1) >= bytes.length) {
        await new Promise((r) => setTimeout(r, 5));
      }
      const w = Atomics.load(head, 0);
      bytes[w % bytes.length] = b;
      Atomics.store(head, 0, w + 1);
    }
    kickVcpu(kick);
  }
};
