/**
 * Kicking a vCPU out of `KVM_RUN` from any thread. A module of its own, with
 * only the FFI layer below it, so that small Workers (a watchdog, an input
 * pump) can kick without loading the whole `Vcpu` class.
 *
 * @module
 */

import { unwrap } from "../errors.ts";
import { native } from "../ffi/library.ts";

/**
 * What another thread needs to kick a vCPU out of `KVM_RUN`: plain numbers,
 * so it can be posted to a Worker.
 */
export interface KickTarget {
  /** Kernel thread id of the thread that runs the vCPU. */
  threadId: number;
  /** Host address of the run area (its `immediate_exit` byte is at +1). */
  runAddress: bigint;
}

/**
 * Makes the vCPU's current or next `KVM_RUN` return `EINTR`: sets the run
 * area's `immediate_exit`, then signals the vCPU's thread. Thread-safe.
 */
export function kickVcpu(target: KickTarget): void {
  const immediateExit = Deno.UnsafePointer.create(target.runAddress + 1n);
  unwrap(native().kvm_kick(target.threadId, immediateExit), "tgkill (vCPU kick)");
}
