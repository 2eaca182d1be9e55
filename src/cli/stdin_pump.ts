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
  // The counters run free and wrap at 2^32 (Int32 storage): distances are
  // taken `| 0` and indices `>>> 0`, exact across the wrap for a ring whose
  // size is a power of two (ConsoleInput's rule).
  for await (const chunk of Deno.stdin.readable) {
    for (const b of chunk) {
      if (((Atomics.load(head, 0) - Atomics.load(head, 1)) | 0) >= bytes.length) {
        // Full. The run loop moves ring bytes to the UART only after a vCPU
        // exit, and an idle guest (HLT in the kernel's LAPIC) has none: kick
        // it, or a chunk larger than the ring waits here for ever. Kick again
        // every 50 ms while it stays full: a kick that lands while Vcpu.run()
        // clears immediate_exit after the previous one is lost.
        for (
          let waited = 0;
          ((Atomics.load(head, 0) - Atomics.load(head, 1)) | 0) >= bytes.length;
          waited++
        ) {
          if (waited % 10 === 0) kickVcpu(kick);
          await new Promise((r) => setTimeout(r, 5));
        }
      }
      const w = Atomics.load(head, 0);
      bytes[(w >>> 0) % bytes.length] = b;
      Atomics.store(head, 0, (w + 1) | 0);
    }
    // The chunk is in: kick, and again every 50 ms until the run loop took it
    // (the same lost kick would otherwise leave its tail in the ring).
    for (let waited = 0; Atomics.load(head, 0) !== Atomics.load(head, 1); waited++) {
      if (waited % 10 === 0) kickVcpu(kick);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
};
