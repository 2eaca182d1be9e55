/**
 * The Worker that bounds a {@linkcode LinuxMachine} run: after the delay it
 * raises a shared flag and kicks the bootstrap vCPU out of `KVM_RUN`, since
 * the main thread's event loop is busy running that vCPU. Not part of the
 * public API; it imports only the FFI layer so it starts quickly.
 *
 * @module
 */

import { type KickTarget, kickVcpu } from "../kvm/kick.ts";

/** Starts the watchdog. */
export interface WatchdogStartMessage {
  /** Delay in milliseconds. */
  ms: number;
  /** An Int32Array's buffer; element 0 becomes 1 when the time is up, element 1 once armed. */
  flag: SharedArrayBuffer;
  /** The thread to kick. */
  bsp: KickTarget;
}

(globalThis as unknown as { onmessage: (e: MessageEvent<WatchdogStartMessage>) => void })
  .onmessage = (event) => {
    const { ms, flag, bsp } = event.data;
    const words = new Int32Array(flag);
    Atomics.store(words, 1, 1);
    Atomics.notify(words, 1);
    // setTimeout fires at once past 2^31-1 ms: wait in steps.
    const deadline = Date.now() + ms;
    const arm = () => {
      const left = deadline - Date.now();
      if (left > 0) return void setTimeout(arm, Math.min(left, 2 ** 31 - 1));
      Atomics.store(words, 0, 1);
      try {
        kickVcpu(bsp);
      } catch {
        // The thread is already gone: nothing left to stop.
      }
    };
    arm();
  };
